"""Bad inputs and racing writers: nothing is lost, nothing is written twice.

On the chaos cluster (head + 2 one-CPU workers), each class of bad input a museum corpus or the open
web produces goes through the stage that meets it, and every input row must end either committed
once or as one `_failures` row with its own reason (never gone, never twice):

- embed, from a corpus holding a truncated JPEG, bytes that are no image, a row without image, a
  blank text, and odd but valid images (16-bit grayscale PNG, EXIF-rotated JPEG, RGBA and palette
  PNGs with transparency, CMYK JPEG);
- URL ingest from a local server answering 404, always 503, a Content-Length body dripped slower than
  the download deadline, HTML instead of an image, ``X-Robots-Tag: noai``, and a slow but timely image;
- a corpus whose metadata JSON is malformed: refused with the file named, nothing written;
- racing writers: a second embed run started on the same output while the first runs is refused
  naming the holder; the output holds one row per key;
- a killed driver: an embed driver process SIGKILLed mid-run; the rerun takes its lease over and ends
  with the clean run's output.

One report record per class (``bad_input``: rows, committed, failed by reason, lost, duplicated).
"""

from __future__ import annotations

import http.server
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from chaoskit import LocalHTTPServer, Snapshot, committed_rows
from PIL import Image

from artray import corpus, storage
from artray.schema import ARTWORK_SCHEMA, TEXT_SCHEMA, artwork_row

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
N = 8  # sample artworks besides the bad ones (URL ingest: one per URL class, plain images after)


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def odd_images() -> dict[str, tuple[str, bytes | None]]:
    """artwork id → (bad-input class, image bytes)."""
    ramp = np.tile(np.linspace(0, 65535, 48, dtype=np.uint16), (32, 1))
    exif = Image.Exif()
    exif[0x0112] = 6
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (10, 10, 30, 20))
    pal = Image.new("P", (40, 30), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (10, 10, 30, 20))
    good = _jpeg(Image.new("RGB", (40, 30), "green"))
    return {
        "bad-truncated": ("truncated JPEG", good[: len(good) // 3]),
        "bad-notimage": ("bytes that are not an image", b"%PDF-1.4 this is not an image"),
        "bad-noimage": ("row without an image", None),
        "odd-16bit": ("16-bit grayscale PNG (valid)", _png(Image.fromarray(ramp, mode="I;16"))),
        "odd-exif": ("EXIF-rotated JPEG (valid)", _jpeg(Image.new("RGB", (40, 30), "blue"), exif=exif)),
        "odd-rgba": ("RGBA PNG with transparency (valid)", _png(rgba)),
        "odd-palette": ("palette PNG with transparency (valid)", _png(pal, transparency=0)),
        "odd-cmyk": ("CMYK JPEG (valid)", _jpeg(Image.new("CMYK", (40, 30), (0, 255, 255, 0)))),
    }


class BadServer(LocalHTTPServer):
    """127.0.0.1 HTTP server: /img/<name> an image (/slow/… after 1 s), /404, /503 (always), /drip (a
    Content-Length body, one byte every 0.3 s), /html (a web page), /robots (X-Robots-Tag: noai)."""

    def __init__(self, image: bytes):
        class Handler(http.server.BaseHTTPRequestHandler):
            def _send(self, status: int, body: bytes, ctype: str = "image/jpeg", **headers):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k.replace("_", "-"), v)
                self.end_headers()
                return body

            def do_GET(self):
                kind = self.path.split("/")[1]
                try:
                    if kind == "img":
                        self.wfile.write(self._send(200, image))
                    elif kind == "slow":
                        time.sleep(1.0)
                        self.wfile.write(self._send(200, image))
                    elif kind == "404":
                        self.wfile.write(self._send(404, b"not found", "text/plain"))
                    elif kind == "503":
                        self.wfile.write(self._send(503, b"try later", "text/plain"))
                    elif kind == "html":
                        self.wfile.write(self._send(200, b"<html><body>a museum page</body></html>", "text/html"))
                    elif kind == "robots":
                        self.wfile.write(self._send(200, image, X_Robots_Tag="noai"))
                    elif kind == "drip":
                        self._send(200, image)
                        for i in range(len(image)):
                            self.wfile.write(image[i:i + 1])
                            self.wfile.flush()
                            time.sleep(0.3)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        super().__init__(Handler)


URL_CLASSES = {"404": "HTTP 404", "503": "HTTP 503, always", "drip": "Content-Length body dripped past the deadline",
               "html": "HTML page instead of an image", "robots": "X-Robots-Tag: noai",
               "slow": "slow but in time (valid)", "img": "plain image (valid)"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.scaffold.sample_corpora import make_samples

    root = tmp_path_factory.mktemp("bad-inputs")
    src = make_samples(str(root / "samples"), n=N)["artpedia"]
    images = str(root / "images")
    import_corpus(ImportConfig(format="artpedia", src=src, dest=images))
    classes = {}
    bad = corpus.ShardWriter(storage.join(images, corpus.ARTWORKS), ARTWORK_SCHEMA, run_id="bad")
    for aid, (cls, data) in odd_images().items():
        bad.add(artwork_row(artwork_id=aid, split="test", image=data, captions=["x"], text_ids=[], language="en",
                            source="chaos"))
        classes[f"image:{aid}"] = cls
    bad.flush()
    texts = corpus.ShardWriter(storage.join(images, corpus.TEXTS), TEXT_SCHEMA, run_id="bad")
    texts.add({"text_id": "blank", "split": "test", "text": "   ", "artwork_ids": ["odd-exif"], "language": "en",
               "source": "chaos"})
    texts.flush()
    classes["text:blank"] = "blank text"

    image = _jpeg(Image.new("RGB", (64, 48), "orange"))
    server = BadServer(image)
    data = json.loads(Path(src, "artpedia.json").read_text(encoding="utf-8"))
    url_classes = {}
    for (key, entry), kind in zip(sorted(data.items()), [*URL_CLASSES, *["img"] * len(data)]):
        entry["img_url"] = f"{server.url}/{kind}/{key}.jpg"
        url_classes[key] = URL_CLASSES[kind]
    remote = root / "remote"
    remote.mkdir()
    (remote / "artpedia.json").write_text(json.dumps(data), encoding="utf-8")
    urls = str(root / "urls")
    import_corpus(ImportConfig(format="artpedia", src=str(remote), dest=urls))
    broken = root / "broken"
    broken.mkdir()
    (broken / "artpedia.json").write_text(json.dumps(data)[:-40], encoding="utf-8")  # cut off mid-entry
    yield {"images": images, "classes": classes, "urls": urls, "url_classes": url_classes, "broken": str(broken),
           "root": root}
    server.close()


def _account(output: str, table: str, key: str, classes: dict[str, str]) -> dict[str, dict]:
    """Per class: rows, committed, failed (reason → n), lost (neither), duplicated (committed twice or more)."""
    rows = corpus.read_table(storage.join(output, table), pa.schema([pa.field(key, pa.string())]))[key].to_pylist()
    failures = {f["key"]: f["reason"] for f in corpus.read_failures(output).to_pylist()}
    out: dict[str, dict] = {}
    for k, cls in classes.items():
        r = out.setdefault(cls, {"rows": 0, "committed": 0, "failed": {}, "lost": 0, "duplicated": 0})
        r["rows"] += 1
        n = rows.count(k)
        r["committed"] += min(n, 1)
        r["duplicated"] += max(0, n - 1)
        if not n and k in failures:
            r["failed"][failures[k]] = r["failed"].get(failures[k], 0) + 1
        r["lost"] += int(not n and k not in failures)
    return out


def _record(chaos_report, stage: str, accounts: dict[str, dict], **extra) -> None:
    for cls, r in accounts.items():
        chaos_report({"suite": "bad-input", "stage": stage, "bad_input": cls, **r, **extra})


def _embed_cfg(tiny, images, out):
    from artray.stages.embed import EmbedConfig

    return EmbedConfig(input=images, output=out, family="longclip", checkpoint=tiny["longclip"], batch_size=1,
                       shard_rows=1, device="cpu", cpus_per_actor=0.5)


def test_bad_inputs_lose_nothing(inputs, tiny_models, chaos_cluster, chaos_report, tmp_path):
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.stages.embed import run_embed
    from artray.stages.ingest import IngestConfig, run_ingest

    # 1. embed over broken and odd images: every row committed once or failed with its reason
    clean_out = str(tmp_path / "emb-clean")
    run_embed(_embed_cfg(tiny_models, inputs["images"], clean_out))
    accounts = _account(clean_out, "embeddings", "embedding_id", inputs["classes"])
    _record(chaos_report, "embed", accounts)
    for cls, r in accounts.items():
        assert r["lost"] == 0 and r["duplicated"] == 0, (cls, r)
        assert r["committed"] == r["rows"] if "(valid)" in cls else r["failed"], (cls, r)
    chaos_cluster.wait_resources_free(120)

    # 2. URL ingest against a misbehaving server
    ingest_out = str(tmp_path / "ingest")
    started = time.time()
    run_ingest(IngestConfig(input=inputs["urls"], output=ingest_out, contact="chaos@localhost", batch_size=2,
                            shard_rows=2, retries=1, backoff_s=0.05, max_backoff_s=0.1, timeout_s=2,
                            download_timeout_s=3))
    ingest_wall = time.time() - started
    accounts = _account(ingest_out, "artworks", "artwork_id", inputs["url_classes"])
    _record(chaos_report, "ingest", accounts, wall_s=round(ingest_wall, 1))
    for cls, r in accounts.items():
        assert r["lost"] == 0 and r["duplicated"] == 0, (cls, r)
        assert r["committed"] == r["rows"] if "(valid)" in cls else r["failed"], (cls, r)
    assert ingest_wall < 60, "a dripping body must not hold its batch past the download deadline"
    chaos_cluster.wait_resources_free(120)

    # 3. malformed corpus metadata: refused, naming the file; nothing written
    dest = str(tmp_path / "broken-import")
    with pytest.raises(Exception) as refused:
        import_corpus(ImportConfig(format="artpedia", src=inputs["broken"], dest=dest))
    assert "artpedia.json" in str(refused.value), refused.value
    written = corpus.read_manifest(dest) is not None or committed_rows(storage.join(dest, corpus.ARTWORKS)) > 0
    chaos_report({"suite": "bad-input", "stage": "import", "bad_input": "malformed metadata JSON (cut off)",
                  "rows": 1, "committed": 0, "failed": {"refused": 1}, "lost": 0, "duplicated": 0,
                  "refused_with": str(refused.value).splitlines()[0][:200], "partial_output": written})
    assert not written


SECOND_WRITER = """import sys, time
from pathlib import Path
from artray.stages.embed import EmbedConfig, run_embed
cfg = EmbedConfig.model_validate_json(sys.argv[1])
print("READY", flush=True)
while not Path(cfg.output, "_lease.json").exists():
    time.sleep(0.02)
run_embed(cfg)
"""


def test_racing_writers_and_a_killed_driver_lose_nothing(inputs, tiny_models, chaos_cluster, chaos_report, tmp_path):
    from artray.stages.embed import run_embed

    clean_out = str(tmp_path / "emb-clean")
    run_embed(_embed_cfg(tiny_models, inputs["images"], clean_out))
    clean = Snapshot.read(clean_out, "embeddings", "embedding_id", ("vector",))
    chaos_cluster.wait_resources_free(120)
    # the chaos cluster runs without token auth: a driver process must not turn it on for itself because this
    # machine has a ~/.ray/auth_token (artray.runtime.prepare_client_env would; its peers could not call it)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": chaos_cluster.address,
           "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE") or "disabled"}

    # 4. racing writers: a second embed run, started while the first writes, is refused naming the holder
    race_out = str(tmp_path / "emb-race")
    cfg = _embed_cfg(tiny_models, inputs["images"], race_out)
    second = subprocess.Popen([sys.executable, "-c", SECOND_WRITER, cfg.model_dump_json()], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert second.stdout.readline().strip() == "READY"
    run_embed(cfg)
    second_out = second.stdout.read()
    second.wait(60)
    race = Snapshot.read(race_out, "embeddings", "embedding_id", ("vector",)).compare(clean)
    chaos_report({"suite": "bad-input", "stage": "embed", "bad_input": "racing writer (second run, same output)",
                  "rows": race["rows_expected"], "committed": race["rows_present"], "failed": {"refused": 1},
                  "lost": race["rows_lost"], "duplicated": race["rows_duplicated"],
                  "refused_with": second_out.strip().splitlines()[-1][:160] if second_out.strip() else None})
    assert second.returncode != 0 and f":{os.getpid()} [embed]" in second_out, second_out[-2000:]
    assert "is being written by another run" in second_out
    assert race["rows_lost"] == race["rows_duplicated"] == race["rows_differing"] == 0, race
    assert race["failures_consistent"]
    chaos_cluster.wait_resources_free(120)

    # 5. a driver SIGKILLed mid-run: its lease is taken over by the rerun, which ends with the clean output
    killed_out = str(tmp_path / "emb-killed")
    script = tmp_path / "driver.py"
    script.write_text("import sys\nfrom artray.stages.embed import EmbedConfig, run_embed\n"
                      "run_embed(EmbedConfig.model_validate_json(sys.argv[1]))\n", encoding="utf-8")
    cfg = _embed_cfg(tiny_models, inputs["images"], killed_out)
    log = tmp_path / "driver.log"
    with open(log, "wb") as out:
        driver = subprocess.Popen([sys.executable, str(script), cfg.model_dump_json()], env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while committed_rows(storage.join(killed_out, "embeddings")) < 2 and time.time() < deadline:
        assert driver.poll() is None, f"the driver ended before it could be killed:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    before = committed_rows(storage.join(killed_out, "embeddings"))
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    lease_left = Path(killed_out, "_lease.json").exists()
    chaos_cluster.wait_resources_free(120)
    started = time.time()
    run_embed(cfg)
    resumed = Snapshot.read(killed_out, "embeddings", "embedding_id", ("vector",)).compare(clean)
    chaos_report({"suite": "bad-input", "stage": "embed", "bad_input": "driver SIGKILLed mid-run, rerun",
                  "rows": resumed["rows_expected"], "committed": resumed["rows_present"], "failed": {},
                  "lost": resumed["rows_lost"], "duplicated": resumed["rows_duplicated"],
                  "rows_committed_before_kill": before, "lease_left_by_killed_driver": lease_left,
                  "recover_s": round(time.time() - started, 1)})
    assert lease_left  # a killed driver never releases its lease: the rerun had to take it over
    assert resumed["rows_lost"] == resumed["rows_duplicated"] == resumed["rows_differing"] == 0, resumed
    assert resumed["failures_consistent"] and not Path(killed_out, "_lease.json").exists()
