"""`artray demo`: the whole chain on the bundled sample corpora and tiny checkpoints, on a local Ray.

sample corpora in their native formats → tiny checkpoints → import of every format → URL
ingest on Ray Data (Wikimedia stood in for by a local HTTP server) → diffusion augmentation
→ MLLM captions → Long-CLIP fine-tuning on Ray Train + DeepSpeed (real + synthetic images,
human + generated captions) → retrieval evaluation of the untrained and the fine-tuned
checkpoint (+ LACLIP, + fusion) → embed → FAISS index → the search API on Ray Serve, asked
one text and one image query over HTTP → the HTML report. Every stage prints its one-line
summary; each one resumes, so running the demo again redoes nothing.

Settings are the published recipes scaled down to tiny models (few sampler steps, small
images, a few epochs) so the chain runs in about ten minutes on two CPU cores.
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
    config is kept at `saved_config` (port 8000) for `serve run`."""
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


def run_demo(workdir: str = "demo_out") -> dict:
    """Run the demo chain in `workdir` (re-runnable: every step resumes or skips finished work)."""
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.scaffold.sample_corpora import make_samples
    from artray.evaluate.report import ReportConfig, run_report
    from artray.evaluate.retrieval import RetrievalEvalConfig, run_retrieval_eval
    from artray.index.build import IndexConfig, build_index
    from artray.scaffold.tiny import make_tiny
    from artray.runtime import init_ray
    from artray.stages.augment import AugmentConfig, run_augment
    from artray.stages.caption import run_caption
    from artray.stages.caption_config import CaptionConfig
    from artray.stages.embed import EmbedConfig, run_embed
    from artray.train.config import TrainConfig
    from artray.train.run import run_train

    t0 = time.time()
    root = Path(workdir).absolute()
    samples = make_samples(str(root / "samples"))
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
    artpedia, culti = str(corpora / "artpedia"), str(corpora / "culti")

    variants = str(root / "variants" / "artpedia")
    run_augment(AugmentConfig(input=artpedia, output=variants, model=models["sd-img2img"], variants=2, steps=4,
                              long_side=64, batch_size=4, filter_model=models["clip-77"], filter_threshold=0.0,
                              export_images=True))
    # Generated text for training comes from train artworks only (the trainer refuses anything else);
    # the test split's generated queries are a second query set for the evaluation.
    captions, queries = str(root / "captions" / "artpedia-train"), str(root / "captions" / "artpedia-test")
    for output, split in ((captions, "train"), (queries, "test")):
        run_caption(CaptionConfig(input=artpedia, output=output, model=models["llava"], captioner="tiny-llava",
                                  presets=["caption", "query"], splits=[split], max_new_tokens=24, batch_size=8,
                                  device="cpu"))

    trained = run_train(TrainConfig(
        family="longclip", model=models["longclip"], corpus=artpedia, output=str(root / "runs"), name="longclip-demo",
        variants=variants, alpha=0.5, captions=captions, captioner="tiny-llava", caption_source="both",
        loss="longclip", pca_dim=16, lr=3e-3, warmup_steps=0, batch_size=8, epochs=2, num_workers=2,
        timeout_s=300, keep_checkpoints=1))
    finetuned = trained["export"]

    evaluation = str(root / "evaluation" / "artpedia")
    run_retrieval_eval(RetrievalEvalConfig(
        corpus=artpedia, output=evaluation, split="test", device="cpu", batch_size=16, cpus_per_actor=0.5,
        models=[{"name": "untrained", "family": "longclip", "checkpoint": models["longclip"]},
                {"name": "finetuned", "family": "longclip", "checkpoint": finetuned}],
        query_sets=[{"name": "corpus"}, {"name": "llava-query", "source": queries, "preset": "query"}],
        laclip={"enabled": True, "crops": 4, "scale": 0.5},
        fusions=[{"name": "rrf", "runs": ["finetuned", "finetuned+laclip"]}]))

    indexes = {}
    for name, corpus_uri, family, checkpoint in (("longclip", artpedia, "longclip", finetuned),
                                                  ("cnclip", culti, "cnclip", models["cnclip"])):
        embeddings, index = str(root / "embeddings" / name), str(root / "indexes" / name)
        run_embed(EmbedConfig(input=corpus_uri, output=embeddings, family=family, checkpoint=checkpoint, device="cpu"))
        build_index(IndexConfig(embeddings=embeddings, output=index))
        indexes[name] = index

    first = corpus.read_artworks(artpedia, columns=["artwork_id", "split", "image", "captions"]).to_pylist()[0]
    url = _search_demo(indexes, first["captions"][0], first["image"], root / "serve.yaml")

    report = str(root / "report.html")
    run_report(ReportConfig(output=report, retrieval=[evaluation], corpus=artpedia, captions=[captions, queries],
                            augment=variants, title="artray demo"))

    summaries = {name: corpus.summarize(str(corpora / name)) for name in [*imports, "artpedia-ingested"]}
    print("[demo] corpus summary:")
    for name, s in summaries.items():
        print(f"  {name:<18} artworks {s['artworks']:>3} {s['artworks_per_split']}  texts {s['texts']:>3}  "
              f"with image {s['with_image']:>3}  failures {s['failures']}")
    print(f"[demo] report: {report}")
    print(f"[demo] the search API answered on {url} (stopped now); serve it again on "
          f"http://127.0.0.1:8000 with: serve run {root / 'serve.yaml'}")
    print(f"[demo] done in {time.time() - t0:.0f}s; outputs under {root}")
    return {"corpora": summaries, "report": report, "indexes": indexes, "evaluation": evaluation,
            "variants": variants, "captions": [captions, queries], "export": finetuned, "search_url": url}
