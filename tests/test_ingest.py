"""URL ingest against a real HTTP server on 127.0.0.1: good, broken, flaky and hostile images,
resume without re-downloading, failure consolidation, and S3 input/output."""

from __future__ import annotations

import io
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from artray import corpus, storage
from artray.corpora.fetch import FetchConfig, Fetcher, default_user_agent, robots_directive
from artray.runtime import free_port
from artray.schema import ARTWORK_SCHEMA, FAILURE_SCHEMA, TEXT_SCHEMA, artwork_row
from artray.stages.ingest import IngestConfig, IngestError, run_ingest
from artray.storage import StorageOptions

CONTACT = "mailto:heritage-lab@example.org"


def _encode(size, fmt, noise=False) -> bytes:
    if noise:
        rnd = random.Random(size[0])
        im = Image.frombytes("RGB", size, bytes(rnd.getrandbits(8) for _ in range(size[0] * size[1] * 3)))
    else:
        im = Image.linear_gradient("L").resize(size).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


GOOD_JPEG = _encode((320, 200), "JPEG")
GOOD_PNG = _encode((150, 250), "PNG")
BIG_JPEG = _encode((1200, 800), "JPEG")
TRUNCATED = _encode((200, 200), "JPEG", noise=True)
TRUNCATED = TRUNCATED[: len(TRUNCATED) // 2]
BOMB_PNG = _encode((2500, 2500), "PNG")  # 6.25 Mpx, over the 4 Mpx limit the tests set


class _Server:
    """A ThreadingHTTPServer whose routes are functions of how often the path was requested."""

    def __init__(self):
        self.routes: dict = {}
        self.log: list[tuple[str, str]] = []
        self.counts: Counter = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with server.lock:
                    server.counts[self.path] += 1
                    server.log.append((self.path, self.headers.get("User-Agent", "")))
                    n = server.counts[self.path]
                route = server.routes.get(self.path, lambda n: (404, {}, b""))
                status, headers, body = route(n)
                headers = dict(headers)
                drip = float(headers.pop("drip", 0))  # seconds between single bytes of a Content-Length body
                if headers.pop("cut", None):  # the connection drops after half the declared body
                    body, self.close_connection = body[: len(body) // 2], True
                    headers["Content-Length"] = str(len(body) * 2)
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        if k != "stream":
                            for value in v if isinstance(v, list) else [v]:  # a list: the header repeated
                                self.send_header(k, value)
                    if "stream" not in headers and "Content-Length" not in headers:
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if drip:
                        stop = time.monotonic() + 20  # never longer: a client that hangs fails its test, not CI
                        for i in range(len(body)):
                            if time.monotonic() > stop:
                                break
                            self.wfile.write(body[i:i + 1])
                            time.sleep(drip)
                        return
                    for i in range(0, len(body), 1 << 16):
                        self.wfile.write(body[i:i + (1 << 16)])
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def total(self) -> int:
        return sum(self.counts.values())


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _ok(body, **headers):
    return lambda n: (200, headers, body)


def _slow(n):
    time.sleep(1.5)
    return 200, {}, GOOD_JPEG


def _make_input(uri: str, items: dict[str, str | None], options=StorageOptions(), carried: bytes | None = None):
    """A finished input corpus: one artwork per (id → url) and one text per artwork."""
    arts = corpus.ShardWriter(storage.join(uri, "artworks"), ARTWORK_SCHEMA, 4, options=options)
    texts = corpus.ShardWriter(storage.join(uri, "texts"), TEXT_SCHEMA, 100, options=options)
    rows = [(aid, url, None) for aid, url in items.items()]
    if carried is not None:
        rows.append(("carried", None, carried))
    for aid, url, image in rows:
        arts.add(artwork_row(artwork_id=aid, split="train", img_url=url, image=image, captions=[f"about {aid}"],
                             text_ids=[f"t-{aid}"], language="en", source="test"))
        texts.add({"text_id": f"t-{aid}", "split": "train", "text": f"about {aid}", "artwork_ids": [aid],
                   "language": "en", "source": "test"})
    arts.flush()
    texts.flush()
    corpus.write_manifest(uri, {"stage": "import"}, options)


def _cfg(inp, out, **kw) -> IngestConfig:
    base = dict(input=inp, output=out, contact=CONTACT, actors=2, threads_per_actor=4, batch_size=2, shard_rows=2,
                retries=2, backoff_s=0.01, timeout_s=2, max_long_side=400, max_image_pixels=4_000_000,
                max_bytes=2_000_000)
    return IngestConfig(**{**base, **kw})


def _failures(out, options=StorageOptions()) -> dict:
    rows = corpus.read_failures(out, options).to_pylist()
    assert len(rows) == len({r["key"] for r in rows}), "one failure row per key"
    return {r["key"]: r for r in rows}


def _artworks(out, options=StorageOptions()) -> pa.Table:
    table = corpus.read_artworks(out, options)
    assert not corpus.has_duplicates(table, "artwork_id")
    return table.sort_by("artwork_id")


def test_ingest_fetches_records_failures_and_resumes(ray_local, server, tmp_path):
    s = server.routes
    s["/good1.jpg"], s["/good2.png"], s["/big.jpg"] = _ok(GOOD_JPEG), _ok(GOOD_PNG), _ok(BIG_JPEG)
    s["/flaky.jpg"] = lambda n: (500, {}, b"oops") if n == 1 else (200, {}, GOOD_JPEG)
    s["/gone.jpg"] = lambda n: (410, {}, b"")
    s["/truncated.jpg"], s["/empty.jpg"], s["/bomb.png"] = _ok(TRUNCATED), _ok(b""), _ok(BOMB_PNG)
    s["/huge.bin"] = _ok(os.urandom(3_000_000), stream="1")  # no Content-Length: cut while streaming
    names = ["good1.jpg", "good2.png", "big.jpg", "flaky.jpg", "missing.jpg", "gone.jpg", "truncated.jpg",
             "empty.jpg", "bomb.png", "huge.bin"]
    items = {n.split(".")[0]: f"{server.url}/{n}" for n in names} | {"nourl": None}
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    _make_input(inp, items, carried=GOOD_PNG)

    first = run_ingest(_cfg(inp, out))
    expected = {"missing": ("not_found", False), "gone": ("gone", False), "truncated": ("truncated_image", False),
                "empty": ("empty_image", False), "bomb": ("decompression_bomb", False),
                "huge": ("too_large", False), "nourl": ("bad_url", False)}
    fails = _failures(out)
    assert {k: (r["reason"], r["retryable"]) for k, r in fails.items()} == expected
    assert all(r["file"] == items[k] and r["stage"] == "ingest" and r["detail"] for k, r in fails.items())
    arts = _artworks(out)
    assert arts["artwork_id"].to_pylist() == ["big", "carried", "flaky", "good1", "good2"]
    for row in arts.to_pylist():
        im = Image.open(io.BytesIO(row["image"]))
        im.load()
        assert (im.width, im.height) == (row["width"], row["height"]) or row["artwork_id"] == "carried"
        assert max(im.size) <= 400
    by_id = {r["artwork_id"]: r for r in arts.to_pylist()}
    assert (by_id["big"]["width"], by_id["big"]["height"]) == (400, 267)
    assert by_id["good1"]["image"] == GOOD_JPEG and by_id["carried"]["image"] == GOOD_PNG
    assert server.counts["/flaky.jpg"] == 2
    assert {ua for _, ua in server.log} == {default_user_agent(CONTACT)}
    assert "artray/" in server.log[0][1] and CONTACT in server.log[0][1]
    texts = corpus.read_texts(out)
    assert sorted(t for ids in texts["artwork_ids"].to_pylist() for t in ids) == sorted(by_id)
    c = first["counts"]
    assert (c["fetched"], c["carried_over"], c["texts_dropped"], c["output_artworks"]) == (4, 1, 7, 5)
    assert sum(c["failed_this_run"].values()) == 7 and first["bytes_downloaded"] > 0
    assert corpus.read_manifest(out)["run_id"] == first["run_id"]

    # A second run downloads nothing and changes nothing.
    before = server.total()
    second = run_ingest(_cfg(inp, out))
    assert server.total() == before
    assert _artworks(out).equals(arts) and _failures(out) == fails
    assert (second["counts"]["skipped_done"], second["counts"]["skipped_failed"], second["counts"]["fetched"]) == (5, 7, 0)

    # Interrupted run: a fetched shard and the manifest are lost, stale failure rows linger.
    # A shard a fetch batch committed ("-b<digest>"), not the carried-over rows' shard.
    shard = next(u for u in storage.list_files(storage.join(out, "artworks"), ".parquet") if "-b" in u)
    lost = storage.read_parquet(shard)["artwork_id"].to_pylist()
    storage.delete(shard)
    storage.delete(storage.join(out, "_manifest.json"))
    stale = [dict(fails["missing"]), {**fails["missing"], "key": "good1", "reason": "timeout", "retryable": True}]
    storage.write_parquet_atomic(pa.Table.from_pylist(stale, schema=FAILURE_SCHEMA),
                                 storage.join(out, "_failures", "part-00000000-stale-00000.parquet"))
    server.log.clear()
    third = run_ingest(_cfg(inp, out))
    assert sorted(p.lstrip("/").split(".")[0] for p, _ in server.log) == sorted(lost)
    assert _artworks(out)["artwork_id"].to_pylist() == arts["artwork_id"].to_pylist()
    assert _failures(out) == fails
    assert len(storage.list_files(storage.join(out, "_failures"), ".parquet")) == 1
    assert third["counts"]["fetched"] == len(lost) and corpus.read_manifest(out) is not None


def test_transient_failures_are_retried_and_consolidated(ray_local, server, tmp_path):
    phase = {"healthy": False}
    server.routes["/slow.jpg"] = _slow
    server.routes["/down.jpg"] = lambda n: (503, {"Retry-After": "0"}, b"")
    server.routes["/later.jpg"] = lambda n: (200, {}, GOOD_JPEG) if phase["healthy"] else (429, {"Retry-After": "0"}, b"")
    items = {"slow": f"{server.url}/slow.jpg", "down": f"{server.url}/down.jpg", "later": f"{server.url}/later.jpg",
             "refused": f"http://127.0.0.1:{free_port()}/x.jpg"}
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    _make_input(inp, items)
    cfg = _cfg(inp, out, retries=1, timeout_s=0.5, connect_timeout_s=1)

    run_ingest(cfg)
    fails = _failures(out)
    assert {k: (r["reason"], r["retryable"]) for k, r in fails.items()} == {
        "slow": ("timeout", True), "down": ("server_error", True), "later": ("rate_limited", True),
        "refused": ("connection_error", True)}
    assert server.counts["/down.jpg"] == 2 and "re-run" in fails["down"]["detail"]

    phase["healthy"] = True
    second = run_ingest(cfg)
    assert server.counts["/down.jpg"] == 4 and server.counts["/later.jpg"] == 3
    assert set(_failures(out)) == {"slow", "down", "refused"}
    assert _artworks(out)["artwork_id"].to_pylist() == ["later"]
    assert second["counts"]["fetched"] == 1 and second["counts"]["failures_retryable"] == 3
    assert [t["text_id"] for t in corpus.read_texts(out).to_pylist()] == ["t-later"]


def test_ingest_s3_input_and_output(ray_local, server, s3_endpoint, s3_bucket):
    server.routes["/a.jpg"], server.routes["/b.png"] = _ok(BIG_JPEG), _ok(GOOD_PNG)
    opts = StorageOptions(endpoint_url=s3_endpoint)
    inp, out = f"{s3_bucket}/corpora/in", f"{s3_bucket}/corpora/out"
    _make_input(inp, {"a": f"{server.url}/a.jpg", "b": f"{server.url}/b.png", "c": f"{server.url}/c.jpg"}, opts)
    cfg = _cfg(inp, out, s3_endpoint=s3_endpoint)
    first = run_ingest(cfg)
    arts = _artworks(out, opts)
    assert arts["artwork_id"].to_pylist() == ["a", "b"] and max(arts["width"].to_pylist()) == 400
    assert {k: r["reason"] for k, r in _failures(out, opts).items()} == {"c": "not_found"}
    assert corpus.read_manifest(out, opts)["counts"] == first["counts"]
    before = server.total()
    run_ingest(cfg)
    assert server.total() == before and _artworks(out, opts).equals(arts)
    third = run_ingest(cfg.model_copy(update={"retry_failed": True}))  # permanent failures re-attempted too
    assert server.counts["/c.jpg"] == 2 and third["counts"]["to_fetch"] == 1
    assert len(corpus.read_failures(out, opts)) == 1
    with pytest.raises(IngestError, match="max_long_side"):  # a resume never mixes image sizes
        run_ingest(cfg.model_copy(update={"max_long_side": 300}))


def test_only_the_asked_splits_are_ingested_and_duplicates_across_shards_are_refused(ray_local, server, tmp_path):
    """The input is read one shard at a time (carried images are never all in memory): the split filter and
    the duplicate-id check still see the whole corpus, and a refused input leaves nothing in the output."""
    server.routes["/a.jpg"] = _ok(GOOD_JPEG)
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    arts = corpus.ShardWriter(storage.join(inp, "artworks"), ARTWORK_SCHEMA, 2)  # 2 rows per input shard
    rows = [("a", "train", f"{server.url}/a.jpg", None), ("b", "test", f"{server.url}/b.jpg", None),
            ("c", "train", None, GOOD_PNG), ("d", "val", None, GOOD_PNG), ("e", "train", None, GOOD_JPEG)]
    for aid, split, url, image in rows:
        arts.add(artwork_row(artwork_id=aid, split=split, img_url=url, image=image, captions=[aid], language="en",
                             source="test"))
    arts.flush()
    corpus.write_manifest(inp, {"stage": "import"})

    got = run_ingest(_cfg(inp, out, splits=["train"]))
    table = _artworks(out)
    assert table["artwork_id"].to_pylist() == ["a", "c", "e"] and set(table["split"].to_pylist()) == {"train"}
    assert table["image"].to_pylist()[1:] == [GOOD_PNG, GOOD_JPEG]  # carried over byte for byte
    c = got["counts"]
    assert (c["input_artworks"], c["carried_over"], c["fetched"]) == (3, 2, 1) and server.counts["/b.jpg"] == 0

    # A later shard repeats "c": refused before anything is written.
    dup = artwork_row(artwork_id="c", split="train", image=GOOD_PNG, captions=["c"], language="en", source="x")
    storage.write_parquet_atomic(pa.Table.from_pylist([dup], schema=ARTWORK_SCHEMA),
                                 storage.join(inp, "artworks", "part-99999.parquet"))
    again = str(tmp_path / "out2")
    with pytest.raises(IngestError, match="duplicate artwork_ids"):
        run_ingest(_cfg(inp, again))
    assert storage.list_files(storage.join(again, "artworks"), ".parquet") == []


def test_fetcher_honours_retry_after_and_limits(server):
    server.routes["/busy.jpg"] = lambda n: (429, {"Retry-After": "1"}, b"") if n == 1 else (200, {}, GOOD_JPEG)
    fetcher = Fetcher(FetchConfig(user_agent="museum-bot/2", contact=CONTACT, backoff_s=0.01, max_bytes=10_000))
    t0 = time.monotonic()
    res = fetcher.fetch(f"{server.url}/busy.jpg")
    assert res.ok and res.attempts == 2 and time.monotonic() - t0 >= 0.95
    assert server.log[0][1] == f"museum-bot/2 ({CONTACT})"
    server.routes["/big.jpg"] = _ok(BIG_JPEG)
    res = fetcher.fetch(f"{server.url}/big.jpg")  # Content-Length over max_bytes: refused before the body
    assert (res.ok, res.reason, res.retryable, res.bytes_downloaded) == (False, "too_large", False, 0)
    flight = {"now": 0, "max": 0}

    def _counted(n):
        with server.lock:
            flight["now"] += 1
            flight["max"] = max(flight["max"], flight["now"])
        time.sleep(0.2)
        with server.lock:
            flight["now"] -= 1
        return 200, {}, GOOD_JPEG

    server.routes["/counted.jpg"] = _counted
    limited = Fetcher(FetchConfig(per_host_limit=2))
    with ThreadPoolExecutor(8) as pool:
        assert all(r.ok for r in pool.map(lambda _: limited.fetch(f"{server.url}/counted.jpg"), range(8)))
    assert flight["max"] == 2  # the per-host semaphore, not the thread count, bounds requests in flight


def _in_thread(fn, timeout_s: float):
    """fn()'s value, or None if it has not returned after `timeout_s` (a daemon thread: a hang fails the test)."""
    done = {}
    worker = threading.Thread(target=lambda: done.update(value=fn()), daemon=True)
    worker.start()
    worker.join(timeout_s)
    return done.get("value")


def test_a_content_length_body_dripped_byte_by_byte_is_cut_off_at_the_download_deadline(server):
    """Was: the whole-download deadline was checked only between 64 KiB reads, so a server sending one byte
    every 0.2 s (each inside the read timeout) held the fetch (and its whole ingest batch) for hours."""
    server.routes["/drip.jpg"] = lambda n: (200, {"drip": "0.2"}, BIG_JPEG)
    fetcher = Fetcher(FetchConfig(download_timeout_s=2, timeout_s=5, retries=2, backoff_s=0.01))
    t0 = time.monotonic()
    res = _in_thread(lambda: fetcher.fetch(f"{server.url}/drip.jpg"), 15)
    assert res is not None, "the dripped download was never cut off"
    assert (res.ok, res.reason, res.retryable) == (False, "timeout", True) and "download_timeout_s=2" in res.detail
    assert time.monotonic() - t0 < 4 and 5 <= res.bytes_downloaded <= 15
    assert server.counts["/drip.jpg"] == 1  # a deadline is not retried in the same run (a re-run retries it)


def test_a_body_cut_mid_download_is_retried_under_the_same_retry_budget(server):
    server.routes["/once.jpg"] = lambda n: (200, {"cut": "1"} if n == 1 else {}, BIG_JPEG)
    server.routes["/always.jpg"] = lambda n: (200, {"cut": "1"}, BIG_JPEG)
    fetcher = Fetcher(FetchConfig(retries=2, backoff_s=0.01, max_long_side=None))
    res = fetcher.fetch(f"{server.url}/once.jpg")
    assert res.ok and res.image == BIG_JPEG and res.attempts == 2 and server.counts["/once.jpg"] == 2
    res = fetcher.fetch(f"{server.url}/always.jpg")
    assert (res.ok, res.reason, res.retryable) == (False, "incomplete_download", True)
    assert server.counts["/always.jpg"] == 3 and res.attempts == 3 and "gave up after 3 attempts" in res.detail


def test_x_robots_tag_opt_outs_are_skipped_unless_ignored(server):
    s = server.routes
    s["/noai.jpg"] = _ok(GOOD_JPEG, **{"X-Robots-Tag": "noai"})
    s["/listed.jpg"] = _ok(GOOD_JPEG, **{"X-Robots-Tag": "max-snippet: 20, noimageindex"})
    s["/ours.jpg"] = _ok(GOOD_JPEG, **{"X-Robots-Tag": ["otherbot: noindex", "artray: noimageai, nofollow"]})
    s["/other.jpg"] = _ok(GOOD_JPEG, **{"X-Robots-Tag": "otherbot: noai, noindex"})
    s["/fine.jpg"] = _ok(GOOD_JPEG, **{"X-Robots-Tag": "nofollow, noarchive"})
    fetcher = Fetcher(FetchConfig(retries=0))
    got = {name: fetcher.fetch(f"{server.url}/{name}.jpg") for name in ("noai", "listed", "ours", "other", "fine")}
    assert {n: (r.ok, r.reason, r.retryable) for n, r in got.items()} == {
        "noai": (False, "robots_disallowed", False), "listed": (False, "robots_disallowed", False),
        "ours": (False, "robots_disallowed", False), "other": (True, None, False), "fine": (True, None, False)}
    assert "'noai'" in got["noai"].detail and "ignore_robots" in got["noai"].detail
    assert got["noai"].bytes_downloaded == 0  # refused from the headers, before the body
    assert Fetcher(FetchConfig(ignore_robots=True)).fetch(f"{server.url}/noai.jpg").ok
    museum = Fetcher(FetchConfig(user_agent="MuseumBot/2.1 (+https://museum.example)"))
    assert not museum.fetch(f"{server.url}/ours.jpg").ok  # artray's own token is still us
    s["/museum.jpg"] = _ok(GOOD_JPEG, **{"X-Robots-Tag": "museumbot: noai"})
    assert museum.fetch(f"{server.url}/museum.jpg").reason == "robots_disallowed"
    assert robots_directive(["googlebot: noindex", "noimageai"], {"artray"}) == "noimageai"
    assert robots_directive(["unavailable_after: 25 Jun 2010 15:00:00 PST"], {"artray"}) is None


def _exif_rotated_jpeg() -> bytes:
    """800x400 as stored (top half red, bottom blue) with EXIF orientation 6: shown 400x800, red on the right."""
    im = Image.new("RGB", (800, 400), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 800, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def _scan16_png() -> bytes:
    """A 16-bit grayscale scan (mode I;16), 1000x500, a dark-to-light ramp: mean gray about 128 in 8 bits."""
    ramp = np.tile(np.linspace(0, 65535, 1000), (500, 1)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    return buf.getvalue()


def test_ingest_commits_the_batch_around_a_drip_honours_robots_and_stores_images_as_shown(ray_local, server, tmp_path):
    """One fetch batch holds a dripping URL, a noai image, an EXIF-rotated photo and a 16-bit scan: the drip
    fails at the deadline while the rest of its batch commits; the noai image is skipped (fetched with
    ignore_robots); the rotated photo is stored upright with its shown size; the scan is not stored white."""
    s = server.routes
    s["/drip.jpg"] = lambda n: (200, {"drip": "0.2"}, BIG_JPEG)
    s["/noai.jpg"] = _ok(GOOD_JPEG, **{"X-Robots-Tag": "noai, noimageai"})
    s["/rotated.jpg"], s["/scan16.png"] = _ok(_exif_rotated_jpeg()), _ok(_scan16_png())
    items = {n: f"{server.url}/{n}.{'png' if n == 'scan16' else 'jpg'}" for n in ("drip", "noai", "rotated", "scan16")}
    inp, out = str(tmp_path / "in"), str(tmp_path / "out")
    _make_input(inp, items)
    cfg = _cfg(inp, out, actors=1, batch_size=8, shard_rows=8, download_timeout_s=2, timeout_s=2)
    t0 = time.monotonic()
    run_ingest(cfg)
    assert time.monotonic() - t0 < 60
    fails = _failures(out)
    assert {k: (r["reason"], r["retryable"]) for k, r in fails.items()} == {
        "drip": ("timeout", True), "noai": ("robots_disallowed", False)}
    by_id = {r["artwork_id"]: r for r in _artworks(out).to_pylist()}
    assert sorted(by_id) == ["rotated", "scan16"]
    rotated = by_id["rotated"]
    with Image.open(io.BytesIO(rotated["image"])) as im:  # a plain open: no orientation tag left to apply
        assert (rotated["width"], rotated["height"]) == im.size == (200, 400)
        assert im.getpixel((190, 200))[0] > 200 and im.getpixel((10, 200))[2] > 200  # red right, blue left
    scan = by_id["scan16"]
    with Image.open(io.BytesIO(scan["image"])) as im:
        pixels = np.asarray(im.convert("L"))
    assert (scan["width"], scan["height"]) == (400, 200) and 110 < pixels.mean() < 145
    assert pixels.min() < 10 and pixels.max() > 245

    again = run_ingest(cfg.model_copy(update={"ignore_robots": True, "retry_failed": True, "download_timeout_s": 1}))
    assert "noai" in {r["artwork_id"] for r in _artworks(out).to_pylist()} and again["counts"]["fetched"] == 1
    assert set(_failures(out)) == {"drip"}


def test_wikimedia_images_without_a_contact_get_a_warning(caplog):
    """Wikimedia blocks anonymous bots: ingest says to set --contact before it fetches from there."""
    import logging

    from artray.stages.ingest import IngestConfig, warn_contact

    hosts = {"upload.wikimedia.org", "127.0.0.1:8000"}
    with caplog.at_level(logging.WARNING, logger="artray"):
        assert warn_contact(IngestConfig(input="a", output="b"), hosts)
    assert "upload.wikimedia.org require a contact" in caplog.text and "--contact" in caplog.text
    assert not warn_contact(IngestConfig(input="a", output="b", contact="me@museum.org"), hosts)
    assert not warn_contact(IngestConfig(input="a", output="b"), {"images.museum.org"})
