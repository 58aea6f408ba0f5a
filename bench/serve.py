"""Search API overhead: `/search` over HTTP vs the same encoder + index called in-process.

    python bench/serve.py                              # tiny models, CPU, ~2-3 minutes
    python bench/serve.py --requests 2000 --duration-s 60 --concurrency 1 8

Builds the tiny demo indexes (sample corpus → embed → index, reused across runs), starts
`serve run serve_configs/retrieval-tiny.yaml` on a local Ray, then for each concurrency
level sends the same text queries (a) to ``POST /search`` on 127.0.0.1 and (b) straight
to ``encoder.encode_texts`` + ``index.search`` in this process. Each run stops at
``--requests`` requests or ``--duration-s`` seconds, whichever comes first. Prints QPS,
p50 and p99 side by side, the p50 overhead in ms (HTTP - direct) and the ratios (HTTP / direct),
the time spent inside the ingress (its answers' ``took_ms``), the floor of the path (``GET /healthz``
over HTTP, which reaches the ingress replica and no model) and the load average at the start and the
end. ``--layout`` picks the app's layout (colocated, the default, or split). Loopback only: the load
never leaves this machine.

``--ingress proxy direct`` (``--direct-ingress`` for short) measures the app through Serve's proxy (port
``--port``), then again started with Serve's direct ingress (`artray.serve.direct`: the same queries POSTed to
the ingress replica's own port, no proxy), each beside its own in-process run, in one invocation.
``--serve-env KEY=VALUE`` adds Serve settings to the controller's environment (the replicas and the proxy
inherit it), e.g. ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``.

``--full-size`` (meant for a GPU): the encoder is a random-weight Long-CLIP ViT-L/14 at 248 tokens
(the architecture of the published Long-CLIP-L, built offline like bench/train.py's), the index is its
embeddings of the sample corpus (``artray embed`` + ``artray index build`` on this Ray), and the encoder
replica gets one GPU (``--device cuda``, fp16), the direct side the same encoder on the same device.
``--json FILE`` writes the summary for bench/gpu_table.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import cycle
from pathlib import Path

import httpx
import ray

from artray import corpus
from artray.families import load_encoder
from artray.index.retrieval import load_index, read_index_manifest
from artray.scaffold.demo_indexes import demo_indexes
from artray.serve import direct as direct_ingress
from artray.serve.local import ServeProcess, serve_config


def run_load(call, queries: list[str], concurrency: int, max_requests: int, max_seconds: float) -> dict:
    """Call `call(query)` from `concurrency` threads until `max_requests` calls or `max_seconds` pass."""
    latencies: list[float] = []
    lock, source = threading.Lock(), cycle(queries)
    started = time.perf_counter()
    deadline = started + max_seconds

    def worker() -> None:
        while True:
            with lock:
                if len(latencies) >= max_requests or time.perf_counter() >= deadline:
                    return
                query = next(source)
                latencies.append(float("nan"))  # reserve the slot so the count bound holds
                slot = len(latencies) - 1
            t0 = time.perf_counter()
            call(query)
            latencies[slot] = time.perf_counter() - t0

    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - started
    done = sorted(x for x in latencies if not math.isnan(x))
    return {"requests": len(done), "wall_s": round(wall, 2), "qps": round(len(done) / wall, 1),
            "p50_ms": round(1000 * statistics.median(done), 2),
            "p99_ms": round(1000 * done[min(len(done) - 1, int(0.99 * len(done)))], 2)}


def full_size_index(workdir: str, n: int, device: str) -> str:
    """An index of the sample Artpedia corpus embedded by a random full-size Long-CLIP-L (built once)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train import _full_size_longclip  # the same random Long-CLIP-L the training bench builds

    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.scaffold.sample_corpora import make_samples
    from artray.index.build import IndexConfig, build_index
    from artray.stages.embed import EmbedConfig, run_embed

    root = Path(workdir).absolute() / "full-size"
    root.mkdir(parents=True, exist_ok=True)
    corpus_uri, emb, idx = (str(root / d) for d in ("corpus", "embeddings", "index"))
    if corpus.read_manifest(corpus_uri) is None:
        import_corpus(ImportConfig(format="artpedia", src=make_samples(str(root / "samples"), n=n)["artpedia"],
                                   dest=corpus_uri))
    weights = root / "longclip-L-random.safetensors"
    if not weights.exists():
        weights = Path(_full_size_longclip(str(root)))
    if corpus.read_manifest(emb) is None:
        run_embed(EmbedConfig(input=corpus_uri, output=emb, family="longclip", checkpoint=str(weights), device=device))
    if corpus.read_manifest(idx) is None:
        build_index(IndexConfig(embeddings=emb, output=idx))
    return idx


def measure(url: str, args, texts: list[str], direct, results: list[dict], ingress: str) -> dict:
    """Load `url`'s ``POST /search`` and the in-process `direct` call side by side at each concurrency; append a
    row per concurrency to `results` and return the ``GET /healthz`` floor."""
    with httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=64)) as client:
        took_ms: list[float] = []  # the ingress's own time per request (its answer's took_ms)

        def http(query: str) -> list:
            response = client.post("/search", json={"text": query, "k": args.k, "model": args.model})
            response.raise_for_status()
            answer = response.json()
            took_ms.append(answer["took_ms"])
            return answer["results"]

        assert [h["id"] for h in http(texts[0])] == [h["id"] for h in direct(texts[0])], "HTTP and direct disagree"

        def healthz(query: str) -> None:
            client.get("/healthz").raise_for_status()

        for call in (http, direct):  # warm-up: first batches, connection pool, allocator
            run_load(call, texts, max(args.concurrency), 50, 10)
        floor = run_load(healthz, texts, 1, args.requests, args.duration_s)
        for c in args.concurrency:
            row = {"ingress": ingress, "concurrency": c, "load_1min": [round(os.getloadavg()[0], 2)]}
            for name, call in (("http", http), ("direct", direct)):
                took_ms.clear()
                row[name] = run_load(call, texts, c, args.requests, args.duration_s)
                if name == "http":
                    row[name]["in_app_p50_ms"] = round(statistics.median(took_ms), 2)
            row["overhead"] = {"p50_ms": round(row["http"]["p50_ms"] - row["direct"]["p50_ms"], 2),
                               "p50": round(row["http"]["p50_ms"] / row["direct"]["p50_ms"], 2),
                               "p99": round(row["http"]["p99_ms"] / row["direct"]["p99_ms"], 2),
                               "qps": round(row["direct"]["qps"] / row["http"]["qps"], 2)}
            row["load_1min"].append(round(os.getloadavg()[0], 2))
            results.append(row)
    return floor


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "artray-bench-serve"),
                        help="tiny models, corpora and indexes (reused across runs)")
    parser.add_argument("--model", default="longclip", choices=["longclip", "cnclip"])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--requests", type=int, default=600, help="at most this many requests per run")
    parser.add_argument("--duration-s", type=float, default=20.0, help="at most this long per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--port", type=int, default=8765, help="HTTP port on 127.0.0.1")
    parser.add_argument("--full-size", action="store_true",
                        help="random full-size Long-CLIP-L encoder (GPU), index of its sample-corpus embeddings")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="encoder device, both sides")
    parser.add_argument("--n", type=int, default=50, help="sample artworks in the index")
    parser.add_argument("--layout", choices=["colocated", "split"], default="colocated",
                        help="the app's layout (serve config args.layout)")
    parser.add_argument("--ingress", nargs="+", choices=["proxy", "direct"], default=["proxy"],
                        help="how HTTP reaches the ingress: Serve's proxy, or Serve's direct ingress (the replica's "
                             "own port); several are measured one after the other")
    parser.add_argument("--direct-ingress", action="store_true", help="short for --ingress proxy direct")
    parser.add_argument("--serve-env", nargs="*", default=[], metavar="KEY=VALUE",
                        help="environment of the Serve controller, proxy and replicas (controller_options)")
    parser.add_argument("--json", help="write the summary to this JSON file (bench/gpu.sh reads it)")
    args = parser.parse_args(argv)
    if args.direct_ingress:
        args.ingress = ["proxy", "direct"]
    if any("=" not in kv for kv in args.serve_env):
        parser.error("--serve-env takes KEY=VALUE pairs")
    if args.full_size and args.model != "longclip":
        parser.error("--full-size builds a Long-CLIP-L index: use --model longclip")
    if args.requests < 1 or args.duration_s <= 0 or min(args.concurrency) < 1:
        parser.error("--requests, --duration-s and --concurrency must be positive")

    load_start = [round(x, 2) for x in os.getloadavg()]
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    if args.full_size:
        uri = full_size_index(args.workdir, args.n, args.device)
        texts = corpus.read_texts(str(Path(args.workdir).absolute() / "full-size" / "corpus"))["text"].to_pylist()
    else:
        indexes = demo_indexes(args.workdir, n=args.n, names=(args.model,))
        uri = indexes[args.model]
        texts = corpus.read_texts(str(Path(args.workdir).absolute() / "corpora" / args.model))["text"].to_pylist()

    recorded = read_index_manifest(uri)["encoder"]
    encoder = load_encoder(recorded["family"], recorded["checkpoint"], device=args.device)
    index = load_index(uri, encoder=encoder.identity())

    def direct(query: str) -> list:
        return index.search(encoder.encode_texts([query]), args.k, "image")[0]

    results, floors = [], {}
    config = serve_config({args.model: uri}, args.port, layout=args.layout)
    config["controller_options"]["runtime_env"]["env_vars"].update(kv.split("=", 1) for kv in args.serve_env)
    if args.device == "cuda":  # the encoder replica on the GPU, as a GPU deployment would run it
        for m in config["applications"][0]["args"]["models"]:
            m["device"] = "cuda"
        for d in config["applications"][0]["deployments"]:
            if d["name"].startswith("model-") or args.layout == "colocated":  # whichever replica holds the encoder
                d["ray_actor_options"] = {"num_cpus": 1, "num_gpus": 1}
    for ingress in args.ingress:
        mode_config = direct_ingress.enable(config) if ingress == "direct" else config
        with ServeProcess(mode_config, ray.get_runtime_context().gcs_address) as app:
            url = app.direct_urls[0] if ingress == "direct" else app.url
            floors[ingress] = measure(url, args, texts, direct, results, ingress)

    size = "full-size Long-CLIP-L (random weights)" if args.full_size else "tiny"
    load_end = [round(x, 2) for x in os.getloadavg()]
    print(f"[bench serve] {args.model} {size} ({recorded['family']}, dim {recorded['dim']}), text → image, k={args.k}, "
          f"layout {args.layout}, ingress {'/'.join(args.ingress)}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
          f"load average (1/5/15 min) {load_start} at the start, {load_end} at the end")
    print(f"{'ingress':>7} {'conc':>4} | {'HTTP qps':>8} {'p50 ms':>8} {'p99 ms':>8} {'in app':>7} | {'direct qps':>10} "
          f"{'p50 ms':>8} {'p99 ms':>8} | {'p50 +ms':>7} {'p50 x':>6} {'p99 x':>6} {'qps x':>6} | load 1 min")
    for r in results:
        h, d, o = r["http"], r["direct"], r["overhead"]
        print(f"{r['ingress']:>7} {r['concurrency']:>4} | {h['qps']:>8} {h['p50_ms']:>8} {h['p99_ms']:>8} "
              f"{h['in_app_p50_ms']:>7} | {d['qps']:>10} {d['p50_ms']:>8} {d['p99_ms']:>8} | {o['p50_ms']:>7} {o['p50']:>6} "
              f"{o['p99']:>6} {o['qps']:>6} | {r['load_1min'][0]} → {r['load_1min'][1]}")
    print("overhead = HTTP - direct (p50 +ms); ratios = HTTP / direct for latency, direct / HTTP for QPS; in app = p50 "
          "of the answers' took_ms (time inside the ingress: parsing, the model call, batching)")
    for ingress, floor in floors.items():
        print(f"floor ({ingress}): GET /healthz over HTTP ({'proxy + ingress' if ingress == 'proxy' else 'the replica port'}"
              f", no model call) p50 {floor['p50_ms']} ms, p99 {floor['p99_ms']} ms, {floor['qps']} qps")
    summary = {"model": args.model, "k": args.k, "layout": args.layout, "cpus": os.cpu_count(), "load_start": load_start,
               "load_end": load_end, "floor_healthz": floors[args.ingress[0]], "floors_healthz": floors,
               "serve_env": args.serve_env, "results": results}
    print(json.dumps(summary))
    if args.json:
        import torch

        device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
        Path(args.json).write_text(json.dumps({"part": "serve", "full_size": args.full_size, "device": device,
                                               "encoder": f"{size} {recorded['family']}", **summary}, indent=1))
    return summary


if __name__ == "__main__":
    main()
