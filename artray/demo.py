"""`artray demo`: the chain on the bundled sample corpora and tiny checkpoints, on a local Ray.

Today it covers the foundation: sample corpora in their native formats → tiny model
checkpoints → import of every format → URL ingest on Ray Data (Wikimedia stood in for
by a local HTTP server) → corpus summaries. Later stages extend it.
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


def run_demo(workdir: str = "demo_out") -> dict:
    """Run the demo chain in `workdir` (re-runnable: every step is idempotent)."""
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.corpora.sample import make_samples
    from artray.models.tiny import make_tiny
    from artray.runtime import init_ray
    from artray.stages.ingest import IngestConfig, run_ingest

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

    server, base_url = _serve(Path(samples["artpedia"]))
    try:
        remote = _artpedia_with_local_urls(Path(samples["artpedia"]), base_url, root / "samples" / "artpedia-remote")
        import_corpus(ImportConfig(format="artpedia", src=str(remote), dest=str(corpora / "artpedia-urls")))
        init_ray()
        run_ingest(IngestConfig(input=str(corpora / "artpedia-urls"), output=str(corpora / "artpedia-ingested"),
                                contact="artray-demo@localhost"))
    finally:
        server.shutdown()

    summaries = {name: corpus.summarize(str(corpora / name)) for name in [*imports, "artpedia-ingested"]}
    print("[demo] corpus summary:")
    for name, s in summaries.items():
        print(f"  {name:<18} artworks {s['artworks']:>3} {s['artworks_per_split']}  texts {s['texts']:>3}  "
              f"with image {s['with_image']:>3}  failures {s['failures']}")
    print(f"[demo] done in {time.time() - t0:.0f}s; outputs under {root}")
    return summaries
