"""URL ingest benchmark: artray's `run_ingest` vs img2dataset vs a bare thread-pool loop.

    .venv/bin/python bench/ingest.py [--images 1000] [--rounds 2] [--img2dataset PATH] [--quick]

One run, side by side, same URLs, same server, same resize target:

1. generates N deterministic "photographic-ish" JPEGs (640-1600 px per side, smooth
   multi-scale colour fields + shapes + grain, quality 90; about 100-500 KB each, ~250 KB
   on average, i.e. ~1.6 bits/pixel like real photos) into a temp folder;
2. serves them with ``python -m http.server --bind 127.0.0.1`` in a separate process;
3. runs, each as a fresh process (start-up included, like a user running the tool), in an
   order that rotates every round:
   * **artray**: ``run_ingest`` with its defaults except ``max_long_side=576``, on a new
     local Ray (``artray.runtime.init_ray()`` inside the timed process, as ``artray ingest``
     does), input corpus written with
     ``ShardWriter`` + ``artwork_row`` (``img_url`` set), output in a temp dir;
   * **img2dataset** (if found): ``--resize_mode keep_ratio_largest
     --resize_only_if_bigger True --image_size 576 --output_format parquet
     --processes_count 2 --thread_count 32`` (``keep_ratio`` would fit the *short* side to
     576; ``keep_ratio_largest`` is the long-side resize artray does);
   * **bare**: one process, ``requests`` + ``ThreadPoolExecutor`` + ``artray.images.fit_long_side``,
     results written to one Parquet file;
   * **artray-join** (with ``--join CLUSTER_DIR``): artray as above, but joining the running
     cluster/start-local.sh head of that folder instead of starting Ray (what ``artray corpus ingest`` does
     by default when such a head is running); the CPU that head's processes use during the run counts;
4. checks every output (successes, long side exactly 576 since all sources are larger)
   and prints images/s and ratios.

Two speeds per tool: **cold** = successful images / wall time from process spawn to exit
(the headline; start-up included for every tool: Python imports, Ray start-up and
shutdown for artray, the process pool for img2dataset); **work** = images / the tool's
own processing time (artray: ``run_ingest`` wall with Ray already up; img2dataset: first
shard start to last shard end from its ``*_stats.json``; bare: the download loop plus
the Parquet write). A third figure, **img/CPU-s**, divides by the CPU seconds of the
tool's whole process tree (sampled from /proc by session id, so Ray's daemons, workers and
actors count too): it is the figure least moved by other people's load on a shared
machine. Ratios > 1 mean artray is better.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    SessionCPU,
    Timer,
    cluster_session,
    load_average,
    machine_line,
    median,
    ratio,
    table,
)

from artray.runtime import free_port

TARGET = 576
SEED = 20240611
DEFAULT_I2D = "/tmp/i2d/bin/img2dataset"
CONTACT = "mailto:bench@artray.invalid"
TOOLS = ("artray", "artray-join", "img2dataset", "bare")  # artray-join: with --join only


# --------------------------------------------------------------------------- images


def make_jpeg(index: int, seed: int = SEED) -> tuple[bytes, int, int]:
    """Image `index` of the deterministic set: (JPEG bytes, width, height)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, index])
    w, h = (int(x) for x in rng.integers(640, 1601, size=2))
    long = max(w, h)
    field = np.zeros((h, w, 3), np.float32)
    amp = 70.0
    for cells in (3, 8, 20, 50, 130):  # octaves of smooth noise: sky/cloud/foliage-like fields
        gh, gw = max(2, cells * h // long), max(2, cells * w // long)
        small = rng.normal(0, 1, size=(gh, gw, 3)).astype(np.float32)
        small[..., 1:] = small[..., :1] * 0.8 + small[..., 1:] * 0.2  # mostly luminance, some colour
        up = Image.fromarray((small * 32 + 128).clip(0, 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        field += (np.asarray(up, np.float32) - 128) * (amp / 32)
        amp *= 0.5
    base = rng.integers(60, 200, size=3).astype(np.float32)
    im = Image.fromarray((field + base).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 9))):  # a few objects with hard edges
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(20, w // 3)), y0 + int(rng.integers(20, h // 3))
        colour = tuple(int(c) for c in (base + rng.normal(0, 50, 3)).clip(0, 255))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    grain = rng.integers(-6, 7, size=(h, w, 1), dtype=np.int16)  # sensor-like noise
    im = Image.fromarray((np.asarray(im, np.int16) + grain).clip(0, 255).astype(np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue(), w, h


def image_name(index: int, seed: int) -> str:
    return f"img{index:05d}-s{seed}.jpg"  # the seed in the name: a reused --image-dir never mixes sets


def _write_image(args: tuple[int, str, int]) -> int:
    index, folder, seed = args
    path = Path(folder) / image_name(index, seed)
    if not path.exists():
        data, _, _ = make_jpeg(index, seed)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.rename(path)
    return path.stat().st_size


def generate_images(folder: Path, n: int, seed: int) -> list[str]:
    """Write img00000-s<seed>.jpg... (reusing files already there) and return their names."""
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        sizes = list(pool.map(_write_image, [(i, str(folder), seed) for i in range(n)], chunksize=8))
    print(f"[bench] {n} JPEGs in {folder}: {sum(sizes) / 1e6:.1f} MB, mean {sum(sizes) / n / 1e3:.0f} KB, "
          f"min {min(sizes) / 1e3:.0f} KB, max {max(sizes) / 1e3:.0f} KB", flush=True)
    return [image_name(i, seed) for i in range(n)]


# --------------------------------------------------------------------------- server


class Server:
    """`python -m http.server` on 127.0.0.1 in its own process (its CPU use is shared by every tool)."""

    def __init__(self, folder: Path, probe_name: str):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1", "--directory", str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/{probe_name}", timeout=2) as resp:
                    resp.read()
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("the benchmark's http.server did not start")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# --------------------------------------------------------------------------- inputs


def write_artray_input(uri: str, urls: list[str]) -> None:
    """A finished input corpus, as `artray corpus import` would leave it: artworks with img_url, one text each."""
    from artray import corpus, storage
    from artray.schema import ARTWORK_SCHEMA, TEXT_SCHEMA, artwork_row

    arts = corpus.ShardWriter(storage.join(uri, corpus.ARTWORKS), ARTWORK_SCHEMA, 1000)
    texts = corpus.ShardWriter(storage.join(uri, corpus.TEXTS), TEXT_SCHEMA, 1000)
    for i, url in enumerate(urls):
        aid = f"a{i:05d}"
        arts.add(artwork_row(artwork_id=aid, split="train", img_url=url, captions=[f"artwork {i}"],
                             text_ids=[f"t{i:05d}"], language="en", source="bench"))
        texts.add({"text_id": f"t{i:05d}", "split": "train", "text": f"artwork {i}", "artwork_ids": [aid],
                   "language": "en", "source": "bench"})
    arts.flush()
    texts.flush()
    corpus.write_manifest(uri, {"stage": "import", "note": "bench/ingest.py input"})


# --------------------------------------------------------------------------- workers (child processes)


def worker_artray(input_uri: str, output_uri: str, extra: dict) -> dict:
    t0 = time.perf_counter()
    import ray

    from artray.runtime import init_ray
    from artray.stages.ingest import IngestConfig, run_ingest

    t_import = time.perf_counter()
    init_ray()  # what `artray ingest` does: a new local cluster, or the one RAY_ADDRESS names
    t_ray = time.perf_counter()
    manifest = run_ingest(IngestConfig(input=input_uri, output=output_uri, max_long_side=TARGET, contact=CONTACT, **extra))
    t_done = time.perf_counter()
    ray.shutdown()
    return {"work_s": t_done - t_ray, "import_s": t_import - t0, "ray_init_s": t_ray - t_import,
            "fetch_wall_s": manifest.get("fetch_wall_s"), "actors": manifest.get("actors"),
            "fetched": manifest["counts"]["fetched"]}


def worker_bare(url_file: str, output_dir: str, threads: int) -> dict:
    t0 = time.perf_counter()
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.parquet as pq
    import requests
    from requests.adapters import HTTPAdapter

    from artray.images import fit_long_side

    urls = Path(url_file).read_text().split()
    session = requests.Session()
    session.mount("http://", HTTPAdapter(pool_maxsize=threads, max_retries=0))
    t_import = time.perf_counter()

    def one(url: str) -> dict:
        try:
            resp = session.get(url, timeout=(10, 30))
            resp.raise_for_status()
            data, info = fit_long_side(resp.content, TARGET)
            return {"url": url, "image": data, "width": info.width, "height": info.height, "error": None}
        except Exception as exc:  # noqa: BLE001 - a benchmark counts failures, it does not stop on them
            return {"url": url, "image": None, "width": None, "height": None, "error": repr(exc)}

    with ThreadPoolExecutor(max_workers=threads) as pool:
        rows = list(pool.map(one, urls))
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), str(Path(output_dir) / "part-00000.parquet"))
    return {"work_s": time.perf_counter() - t_import, "import_s": t_import - t0}


# --------------------------------------------------------------------------- runs and checks


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _kill_session(sid: int) -> None:
    """Kill what is left of a timed-out tool: the processes of the session this benchmark started."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                raw = Path(f"/proc/{name}/stat").read_text(errors="replace")
                if int(raw[raw.rfind(")") + 2:].split()[3]) == sid:
                    os.kill(int(name), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass


def _run(cmd: list[str], log: Path, env: dict, timeout: float,
         cluster_sid: int | None = None) -> tuple[float, int, float | None]:
    """Run `cmd` in its own session; (wall s from spawn to exit, exit code, CPU s of the whole process tree, plus
    the CPU the processes of session `cluster_sid` (a joined cluster) use meanwhile)."""
    with open(log, "wb") as fh, Timer() as t:
        cluster_cpu = SessionCPU(cluster_sid, since_now=True) if cluster_sid else None
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        cpu = SessionCPU(proc.pid)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_session(proc.pid)
            rc = proc.wait()
    own = cpu.stop()
    return t.s, rc, (own + (cluster_cpu.stop() or 0)) if cluster_cpu and own is not None else own


def _child_env() -> dict:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)  # a fresh local Ray, never someone else's cluster (run_artray: --address)
    env["ARTRAY_FRESH_RAY"] = "1"  # not even this user's cluster/start-local.sh cluster
    env.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"  # img2dataset's albumentations would try the network
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _worker_result(log: Path) -> dict:
    for line in reversed(_tail(log, 20000).splitlines()):
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    return {}


def _check_sizes(widths: list, heights: list) -> int:
    """How many outputs have exactly the expected long side (every source is longer than TARGET)."""
    return sum(1 for w, h in zip(widths, heights) if w is not None and h is not None and max(w, h) == TARGET)


def run_artray(work: Path, tag: str, input_uri: str, n: int, timeout: float, extra: dict,
               cluster_dir: str | None = None) -> dict:
    """artray in a fresh process: on a new private Ray, or joining the cluster/start-local.sh cluster of
    `cluster_dir` (then the CPU that cluster's processes use during the run counts too)."""
    from artray import corpus

    name = "artray-join" if cluster_dir else "artray"
    out = work / f"{name}-{tag}"
    log = work / f"{name}-{tag}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", "artray", "--_input", input_uri, "--_output", str(out),
           "--_extra", json.dumps(extra)]
    env, sid = _child_env(), None
    if cluster_dir:
        env["RAY_ADDRESS"], sid = cluster_session(cluster_dir)  # the driver matches the cluster's token mode itself
    wall, rc, cpu = _run(cmd, log, env, timeout, sid)
    res = {"tool": name, "wall_s": wall, "rc": rc, "cpu_s": cpu, "log": str(log), **_worker_result(log)}
    if rc == 0:
        arts = corpus.read_artworks(str(out), columns=["artwork_id", "width", "height"])
        res["ok"] = arts.num_rows
        res["size_ok"] = _check_sizes(arts["width"].to_pylist(), arts["height"].to_pylist())
    return res


def run_img2dataset(work: Path, tag: str, binary: str, url_file: Path, n: int, timeout: float) -> dict:
    import pyarrow.parquet as pq

    out = work / f"img2dataset-{tag}"
    log = work / f"img2dataset-{tag}.log"
    shard = max(1, math.ceil(n / 4))  # 4 shards: both processes busy (the default 10000 would give 1 process)
    cmd = [binary, "--url_list", str(url_file), "--input_format", "txt", "--output_folder", str(out),
           "--output_format", "parquet", "--resize_mode", "keep_ratio_largest", "--resize_only_if_bigger", "True",
           "--image_size", str(TARGET), "--processes_count", "2", "--thread_count", "32",
           "--number_sample_per_shard", str(shard), "--timeout", "30", "--enable_wandb", "False"]
    wall, rc, cpu = _run(cmd, log, _child_env(), timeout)
    res = {"tool": "img2dataset", "wall_s": wall, "rc": rc, "cpu_s": cpu, "log": str(log)}
    stats = [json.loads(Path(p).read_text()) for p in glob.glob(str(out / "*_stats.json"))]
    if stats:
        res["work_s"] = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)
    ok = size_ok = 0
    for part in glob.glob(str(out / "*.parquet")):
        t = pq.read_table(part, columns=["status", "width", "height"]).to_pydict()
        good = [i for i, s in enumerate(t["status"]) if s == "success"]
        ok += len(good)
        size_ok += _check_sizes([t["width"][i] for i in good], [t["height"][i] for i in good])
    res["ok"], res["size_ok"] = ok, size_ok
    return res


def run_bare(work: Path, tag: str, url_file: Path, n: int, timeout: float, threads: int) -> dict:
    import pyarrow.parquet as pq

    out = work / f"bare-{tag}"
    log = work / f"bare-{tag}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", "bare", "--_input", str(url_file), "--_output", str(out),
           "--_extra", json.dumps({"threads": threads})]
    wall, rc, cpu = _run(cmd, log, _child_env(), timeout)
    res = {"tool": "bare", "wall_s": wall, "rc": rc, "cpu_s": cpu, "log": str(log), **_worker_result(log)}
    if rc == 0:
        t = pq.read_table(str(out / "part-00000.parquet"), columns=["width", "height", "error"]).to_pydict()
        res["ok"] = sum(1 for e in t["error"] if e is None)
        res["size_ok"] = _check_sizes(t["width"], t["height"])
    return res


# --------------------------------------------------------------------------- report


# the three speeds: (label, seconds key in a run result)
SPEEDS = (("cold", "wall_s"), ("work", "work_s"), ("per CPU-s", "cpu_s"))


def _speed(runs: list[dict], key: str) -> float | None:
    """Successful images per second of `key` over `runs` (totals), or None if a run lacks it."""
    secs = [r.get(key) for r in runs]
    if not runs or any(not s for s in secs):
        return None
    return sum(r.get("ok", 0) for r in runs) / sum(secs)


def summarize(results: list[dict], n: int, rounds: int) -> tuple[str, dict]:
    """Per-run table, per-tool totals, ratios; returns (text, summary dict)."""
    rows = [[r["round"], r["position"], r["tool"], f"{r.get('ok', 0)}/{n}", r["wall_s"], _speed([r], "wall_s"),
             r.get("work_s"), _speed([r], "work_s"), r.get("ray_init_s"), r.get("cpu_s"), _speed([r], "cpu_s"),
             r["load_before"]] for r in results]
    lines = [table(["round", "pos", "tool", "ok", "cold s", "cold img/s", "work s", "work img/s", "ray.init s",
                    "CPU s", "img/CPU-s", "load1 before"], rows)]
    summary: dict = {"images": n, "rounds": rounds, "tools": {}, "ratios": {}}
    for tool in TOOLS:
        mine = [r for r in results if r["tool"] == tool]
        if mine:
            summary["tools"][tool] = {
                "fraction_ok": sum(r.get("ok", 0) for r in mine) / (n * len(mine)),
                "size_ok": sum(r.get("size_ok", 0) for r in mine) / (n * len(mine)),
                "failed_runs": sum(1 for r in mine if r["rc"] != 0),
                **{f"{label} img/s": _speed(mine, key) for label, key in SPEEDS},
            }
    t = summary["tools"]
    ratio_rows = []
    for mine, other in (("artray", "img2dataset"), ("artray-join", "img2dataset"), ("artray", "bare"),
                        ("artray-join", "bare"), ("artray-join", "artray")):
        if mine not in t or other not in t:
            continue
        row = [f"{mine} / {other}"]
        for label, key in SPEEDS:
            total = ratio(t[mine][f"{label} img/s"], t[other][f"{label} img/s"])
            per_round = median([ratio(_speed([a], key), _speed([b], key))
                                for a in results if a["tool"] == mine
                                for b in results if b["tool"] == other and b["round"] == a["round"]])
            row += [total, per_round]
            summary["ratios"][f"{mine}/{other} {label}"] = total
        ratio_rows.append(row)
    lines += ["", table(["tool", "images ok", "long side 576", "cold img/s", "work img/s", "img/CPU-s"],
                        [[k, f"{v['fraction_ok']:.1%}", f"{v['size_ok']:.1%}", v["cold img/s"], v["work img/s"],
                          v["per CPU-s img/s"]] for k, v in t.items()])]
    if ratio_rows:
        lines += ["", table(["ratio (>1: artray better)", "cold", "cold, median/round", "work", "work, median/round",
                             "per CPU-s", "per CPU-s, median/round"], ratio_rows, digits=2)]
    return "\n".join(lines), summary


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=None, help="how many images (default 1000; 100 with --quick)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds, tool order rotated each round (default 2; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="100 images, 1 round: a smoke run (under a minute on a quiet machine)")
    ap.add_argument("--img2dataset", default=None,
                    help=f"img2dataset executable (default {DEFAULT_I2D} if present); 'none' skips it")
    ap.add_argument("--tools", default=None,
                    help="comma-separated subset of artray,artray-join,img2dataset,bare (default: all; artray-join "
                         "only with --join)")
    ap.add_argument("--bare-threads", type=int, default=16)
    ap.add_argument("--join", metavar="CLUSTER_DIR", default=None,
                    help="also run artray-join: artray joining the cluster/start-local.sh cluster of this folder "
                         "instead of starting Ray (the CPU that cluster uses during the run counts as artray's)")
    ap.add_argument("--artray-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra IngestConfig field for artray (JSON value), e.g. actors=2; repeatable")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--image-dir", default=None, help="keep/reuse the generated JPEGs here (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (outputs and logs)")
    ap.add_argument("--json", default=None, help="also write the summary as JSON to this file")
    ap.add_argument("--_worker", choices=("artray", "bare"), help=argparse.SUPPRESS)
    ap.add_argument("--_input", help=argparse.SUPPRESS)
    ap.add_argument("--_output", help=argparse.SUPPRESS)
    ap.add_argument("--_extra", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:
        extra = json.loads(args._extra)
        if args._worker == "artray":
            res = worker_artray(args._input, args._output, extra)
        else:
            res = worker_bare(args._input, args._output, extra["threads"])
        print("BENCH_RESULT " + json.dumps(res), flush=True)
        return 0

    n = args.images or (100 if args.quick else 1000)
    rounds = args.rounds or (1 if args.quick else 2)
    tools = [t for t in (args.tools or ",".join(TOOLS)).split(",") if t]
    if not args.join and "artray-join" in tools:
        if args.tools:
            ap.error("artray-join needs --join CLUSTER_DIR")
        tools.remove("artray-join")
    binary = args.img2dataset or (DEFAULT_I2D if Path(DEFAULT_I2D).exists() else None)
    if binary and binary.lower() == "none":
        binary = None
    if "img2dataset" in tools and not binary:
        print("[bench] img2dataset not found (give --img2dataset PATH); running without it", flush=True)
        tools.remove("img2dataset")
    extra = {}
    for kv in args.artray_set:
        key, _, value = kv.partition("=")
        extra[key] = json.loads(value)
    timeout = max(600.0, n * 1.0)  # per tool run; a loaded 2-core machine needs minutes for 1000

    work = Path(tempfile.mkdtemp(prefix="artray-bench-ingest-"))
    print(f"[bench] {machine_line()}", flush=True)
    print(f"[bench] {n} images, {rounds} round(s), tools {tools}, work dir {work}"
          + (f", artray-join joins the cluster of {args.join}" if args.join else ""), flush=True)
    server = None
    try:
        with Timer() as t_gen:
            names = generate_images(Path(args.image_dir) if args.image_dir else work / "images", n, args.seed)
        print(f"[bench] generated in {t_gen.s:.1f}s", flush=True)
        server = Server(Path(args.image_dir) if args.image_dir else work / "images", names[0])
        urls = [f"{server.url}/{name}" for name in names]
        url_file = work / "urls.txt"
        url_file.write_text("\n".join(urls) + "\n")
        input_uri = str(work / "input-corpus")
        write_artray_input(input_uri, urls)

        results = []
        for rnd in range(rounds):
            order = tools[rnd % len(tools):] + tools[: rnd % len(tools)]  # rotate: each tool leads once
            for pos, tool in enumerate(order):
                tag = f"r{rnd}"
                load = load_average()[0]
                print(f"[bench] round {rnd + 1}/{rounds}: {tool} ...", flush=True)
                if tool == "artray":
                    res = run_artray(work, tag, input_uri, n, timeout, extra)
                elif tool == "artray-join":
                    res = run_artray(work, tag, input_uri, n, timeout, extra, args.join)
                elif tool == "img2dataset":
                    res = run_img2dataset(work, tag, binary, url_file, n, timeout)
                else:
                    res = run_bare(work, tag, url_file, n, timeout, args.bare_threads)
                res.update(round=rnd + 1, position=pos + 1, load_before=load)
                ok = res.get("ok", 0)
                print(f"[bench]   {tool}: {ok}/{n} ok in {res['wall_s']:.1f}s cold = {ok / res['wall_s']:.1f} img/s"
                      + (f", work {res['work_s']:.1f}s = {ok / res['work_s']:.1f} img/s" if res.get("work_s") else "")
                      + (f", ray.init {res['ray_init_s']:.1f}s" if res.get("ray_init_s") else "")
                      + (f", {res['cpu_s']:.1f} CPU-s" if res.get("cpu_s") else ""), flush=True)
                if res["rc"] != 0:
                    print(f"[bench]   {tool} exited with {res['rc']}; log tail:\n{_tail(Path(res['log']))}", flush=True)
                results.append(res)

        text, summary = summarize(results, n, rounds)
        summary["machine"] = machine_line()
        summary["load_after"] = load_average()
        print()
        print(f"URL ingest, {n} JPEGs 640-1600 px from http.server on 127.0.0.1 -> long side {TARGET}; "
              "cold = start-up included (spawn to exit); work = the tool's own processing time; "
              "img/CPU-s = images per CPU-second of the tool's whole process tree (server excluded)")
        print(text)
        print(f"\n{machine_line()} (after)")
        if args.json:
            Path(args.json).write_text(json.dumps({"summary": summary, "runs": results}, indent=2, default=str))
        bad = [k for k, v in summary["tools"].items() if v["fraction_ok"] < 1 or v["failed_runs"]]
        if bad:
            print(f"[bench] WARNING: not every image succeeded for {bad}; see the logs in {work} (kept)")
            args.keep = True
        return 0
    finally:
        if server:
            server.stop()
        if args.keep:
            print(f"[bench] kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
