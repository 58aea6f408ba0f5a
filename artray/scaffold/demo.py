"""`artray demo`: the whole chain on the bundled sample corpora and tiny checkpoints, on a local Ray.

sample corpora in their native formats → tiny checkpoints → import of every format → URL
ingest on Ray Data (Wikimedia stood in for by a local HTTP server) → then the `demo` recipe
(jobs/recipes/demo.yaml, run by `artray.recipes`): diffusion augmentation → MLLM captions and
queries → Long-CLIP fine-tuning on Ray Train + DeepSpeed (real + synthetic images, human +
generated captions) → retrieval evaluation of the untrained and the fine-tuned checkpoint on the
held-out test split (+ LACLIP, + fusion, significance tests) → embed → FAISS index → the HTML
report; then the search API on Ray Serve, asked one text and one image query over HTTP. Every
stage prints its one-line summary; each one resumes, so running the demo again redoes nothing.

The sample scenes are learnable (captions state colour, shape, size and position), and the
demo trains long enough on enough of them that the fine-tuned model beats the untrained one on
the test split with a significance mark, in about five minutes on two CPU cores.
"""
from __future__ import annotations

import functools
import http.server
import json
import threading
import time
from pathlib import Path

from artray import corpus


def _serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the demo's output readable
        pass


def _artpedia_with_local_urls(artpedia_dir: Path, base_url: str, dest: Path) -> Path:
    """A copy of `artpedia_dir`/artpedia.json whose img_urls point at the local HTTP server."""
    data = json.loads((artpedia_dir / "artpedia.json").read_text(encoding="utf-8"))
    for key, entry in data.items():
        entry["img_url"] = f"{base_url}/images/{key}.jpg"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "artpedia.json").write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return dest


def _ingest_demo(samples: dict, corpora: Path, root: Path) -> None:
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.stages.ingest import IngestConfig, run_ingest

    server, base_url = _serve(Path(samples["artpedia"]))
    try:
        remote = _artpedia_with_local_urls(Path(samples["artpedia"]), base_url, root / "samples" / "artpedia-remote")
        import_corpus(ImportConfig(format="artpedia", src=str(remote), dest=str(corpora / "artpedia-urls")))
        run_ingest(IngestConfig(input=str(corpora / "artpedia-urls"), output=str(corpora / "artpedia-ingested"),
                                contact="artray-demo@localhost"))
    finally:
        server.shutdown()


def _search_demo(indexes: dict[str, str], text: str, image: bytes, saved_config: Path) -> str:
    """Start the search API on the demo indexes, ask one text and one image query, stop it; the
    config is kept at `saved_config` (port 8000) for `artray serve run`."""
    import base64
    import urllib.request

    import ray

    from artray.runtime import free_port
    from artray.serve.local import ServeProcess, serve_config

    port = free_port()
    import yaml

    saved_config.write_text(yaml.safe_dump(serve_config(indexes, 8000), sort_keys=False), encoding="utf-8")
    config = serve_config(indexes, port)
    with ServeProcess(config, ray.get_runtime_context().gcs_address) as proc:
        def ask(body: dict) -> dict:
            request = urllib.request.Request(f"{proc.url}/search", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as response:
                return json.loads(response.read())

        for label, body in (("text → images", {"text": text, "k": 3, "model": "longclip"}),
                            ("image → texts", {"image": base64.b64encode(image).decode(), "k": 3, "model": "longclip",
                                               "rerank": "laclip"})):
            answer = ask(body)
            hits = "; ".join(f"{h['id']} ({h['score']:+.3f}) {(h.get('title') or h.get('text') or '')[:40]}"
                             for h in answer["results"])
            print(f"[search] POST {proc.url}/search {label}: {hits}")
        return proc.url


N_SAMPLES = 200  # artworks per sample corpus: 140 train / 30 val / 30 test (a held-out split a test can tell apart)


def headline(summary: dict, query_set: str = "corpus", direction: str = "t2i") -> str:
    """One line: the fine-tuned vs the untrained model on the held-out split, and whether the difference is
    significant (the evaluation's paired test on MRR: with 30 queries, R@1 alone moves in steps of 3.3 %)."""
    m = summary["metrics"][query_set]
    ft, un = m["finetuned"][direction], m["untrained"][direction]
    sig = summary["significance"][query_set][direction]["runs"]["finetuned"]
    p = (sig["p_values"].get("untrained") or {}).get("mrr")
    won = "untrained" in sig["beats"].get("mrr", [])
    shown = "undefined" if p is None else f"{p:.2g}"
    verdict = (f"significantly better (paired {summary['significance'][query_set][direction]['stat_test']} test on "
               f"MRR, p = {shown})" if won else f"not significantly better (MRR p = {shown})")
    return (f"[demo] held-out {summary['split']} split, {ft['queries']} text→image queries: fine-tuned R@1 "
            f"{100 * ft['R@1']:.1f} %, MRR {ft['MRR']:.2f} vs untrained R@1 {100 * un['R@1']:.1f} %, MRR "
            f"{un['MRR']:.2f}: {verdict}")


def run_demo(workdir: str = "demo_out") -> dict:
    """Run the demo chain in `workdir` (re-runnable: every step resumes or skips finished work)."""
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.evaluate.retrieval import load_summary
    from artray.recipes.config import load_recipe
    from artray.recipes.runner import run_recipe
    from artray.runtime import init_ray
    from artray.scaffold.sample_corpora import make_samples
    from artray.scaffold.tiny import make_tiny

    t0 = time.time()
    root = Path(workdir).absolute()
    samples = make_samples(str(root / "samples"), n=N_SAMPLES)
    print(f"[demo] sample corpora: {', '.join(samples)} in {root / 'samples'}")
    models = make_tiny(str(root / "models"))
    print(f"[demo] tiny checkpoints: {', '.join(models)} in {root / 'models'}")

    corpora = root / "corpora"
    imports = {
        "artpedia": ImportConfig(format="artpedia", src=samples["artpedia"], dest=str(corpora / "artpedia")),
        "artcap": ImportConfig(format="artcap", src=samples["artcap"], dest=str(corpora / "artcap")),
        "culti": ImportConfig(format="cnclip", src=samples["culti"], dest=str(corpora / "culti")),
        "folder": ImportConfig(format="folder", src=samples["folder"], dest=str(corpora / "folder")),
    }
    for name, cfg in imports.items():
        c = import_corpus(cfg)["counts"]
        print(f"[import] {name}: {c['artworks']} artworks {c['artworks_per_split']}, {c['texts']} texts, "
              f"{c['failed']} failures")

    init_ray()
    _ingest_demo(samples, corpora, root)
    artpedia = str(corpora / "artpedia")
    state = run_recipe(load_recipe("demo"), artpedia, str(root),
                       [f"tiny_models={root / 'models'}", f"culti_corpus={corpora / 'culti'}"])
    steps = {name: record["result"] for name, record in state["steps"].items()}
    evaluation, finetuned = steps["evaluate"]["output"], steps["train"]["export"]
    indexes = {"longclip": steps["index-longclip"]["output"], "cnclip": steps["index-cnclip"]["output"]}
    print(headline(load_summary(evaluation)))

    first = corpus.read_artworks(artpedia, columns=["artwork_id", "split", "image", "captions"]).to_pylist()[0]
    url = _search_demo(indexes, first["captions"][0], first["image"], root / "serve.yaml")

    report = steps["report"]["output"]
    summaries = {name: corpus.summarize(str(corpora / name)) for name in [*imports, "artpedia-ingested"]}
    print("[demo] corpus summary:")
    for name, s in summaries.items():
        print(f"  {name:<18} artworks {s['artworks']:>3} {s['artworks_per_split']}  texts {s['texts']:>3}  "
              f"with image {s['with_image']:>3}  failures {s['failures']}")
    print(f"[demo] report: {report}")
    print(f"[demo] the search API answered on {url} (stopped now); serve it again on "
          f"http://127.0.0.1:8000 with: artray serve run {root / 'serve.yaml'}")
    print(f"[demo] done in {time.time() - t0:.0f}s; outputs under {root}")
    return {"corpora": summaries, "report": report, "indexes": indexes, "evaluation": evaluation,
            "variants": steps["augment"]["output"], "captions": [steps["captions"]["output"],
                                                                 steps["queries"]["output"]],
            "export": finetuned, "search_url": url}
