"""The four batch stages as the chaos tests run them: small inputs built from the sample corpora,
one config per stage (the same for the clean and the faulted run), and how to read each output.

Every input holds rows that must fail (a corrupt image, missing URLs, an empty text) so the
`_failures` table is part of what a faulted run has to reproduce.
"""

from __future__ import annotations

import functools
import http.server
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from chaoskit import LocalHTTPServer

from artray import corpus, storage
from artray.schema import ARTWORK_SCHEMA, TEXT_SCHEMA

N_ARTWORKS = 30  # sample corpus size: 22 train / 4 val / 4 test


@dataclass
class StageCase:
    """One stage: how to run it on an output URI, where its rows go and which UDF its actors run."""

    name: str
    table: str
    id_col: str
    udf: str  # the map_batches UDF class: its actor processes are titled ray::MapWorker(MapBatches(<udf>))
    run: Callable[[str], dict]
    made: str  # manifest count of rows this run produced
    skipped: str  # manifest count of rows skipped as already committed
    float_cols: tuple[str, ...] = ()


class SlowImageServer(LocalHTTPServer):
    """An HTTP server on 127.0.0.1 that serves a folder, `delay` seconds per request (so an ingest
    runs long enough to be hurt), 404 for `missing` names and 503 for `broken` ones."""

    def __init__(self, directory: str, missing: set[str], broken: set[str]):
        self.delay = 0.0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                time.sleep(server.delay)
                name = self.path.rsplit("/", 1)[-1]
                if name in broken:
                    self.send_error(503, "try later")
                    return
                if name in missing:
                    self.send_error(404)
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        super().__init__(functools.partial(Handler, directory=directory))


def make_inputs(root: Path) -> dict:
    """Sample Artpedia imported twice: with images (one truncated, one text blank) and with URLs only."""
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.scaffold.sample_corpora import make_samples

    src = make_samples(str(root / "samples"), n=N_ARTWORKS)["artpedia"]
    images = root / "artpedia"
    import_corpus(ImportConfig(format="artpedia", src=src, dest=str(images)))
    arts = corpus.read_artworks(str(images)).sort_by("artwork_id").to_pylist()
    corrupt = next(a for a in arts if a["split"] == "train")
    corrupt["image"] = corrupt["image"][: len(corrupt["image"]) // 3]
    texts = corpus.read_texts(str(images)).sort_by("text_id").to_pylist()
    texts[0]["text"] = "   "
    doctored = str(root / "doctored")
    storage.write_parquet_atomic(pa.Table.from_pylist(arts, schema=ARTWORK_SCHEMA),
                                 storage.join(doctored, "artworks", "part-00000.parquet"))
    storage.write_parquet_atomic(pa.Table.from_pylist(texts, schema=TEXT_SCHEMA),
                                 storage.join(doctored, "texts", "part-00000.parquet"))
    corpus.write_manifest(doctored, {"stage": "import", "note": "chaos input: one corrupt image, one blank text"})

    names = sorted(p.name for p in Path(src, "images").iterdir())
    missing, broken = set(names[:2]), {names[2]}
    server = SlowImageServer(src, missing, broken)
    data = json.loads(Path(src, "artpedia.json").read_text(encoding="utf-8"))
    for key, entry in data.items():
        entry["img_url"] = f"{server.url}/images/{key}.jpg"
    remote = root / "remote"
    remote.mkdir()
    (remote / "artpedia.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    import_corpus(ImportConfig(format="artpedia", src=str(remote), dest=str(root / "urls")))
    return {"corpus": doctored, "urls": str(root / "urls"), "server": server,
            "expected_failures": {"corrupt": corrupt["artwork_id"], "blank_text": texts[0]["text_id"]}}


def cases(inputs: dict, tiny: dict[str, str]) -> dict[str, StageCase]:
    """The four stages on `inputs` with the tiny checkpoints, in small batches and shards so commits
    are spread over the run (the killer needs commits to aim at; embed, the fastest, gets one row each)."""
    from artray.stages.augment import AugmentConfig, run_augment
    from artray.stages.caption import CaptionConfig, run_caption
    from artray.stages.embed import EmbedConfig, run_embed
    from artray.stages.ingest import IngestConfig, run_ingest

    src = inputs["corpus"]
    return {
        "ingest": StageCase("ingest", "artworks", "artwork_id", "_FetchBatch", lambda out: run_ingest(IngestConfig(
            input=inputs["urls"], output=out, contact="chaos@localhost", batch_size=2, shard_rows=2,
            per_host_concurrency=2, retries=1, backoff_s=0.05, max_backoff_s=0.1)), "fetched", "skipped_done"),
        "augment": StageCase("augment", "variants", "variant_id", "Generate", lambda out: run_augment(AugmentConfig(
            input=src, output=out, model=tiny["sd-img2img"], variants=2, steps=4, long_side=64, batch_size=2,
            shard_rows=2, cpus_per_actor=0.5)), "generated", "done"),
        "caption": StageCase("caption", "captions", "caption_id", "CaptionBatch", lambda out: run_caption(CaptionConfig(
            input=src, output=out, model=tiny["llava"], max_new_tokens=8, batch_size=2, shard_rows=2,
            actors=2, cpus_per_actor=0.5)), "captioned", "skipped_done"),
        "embed": StageCase("embed", "embeddings", "embedding_id", "EmbedBatch", lambda out: run_embed(EmbedConfig(
            input=src, output=out, family="longclip", checkpoint=tiny["longclip"], batch_size=1, shard_rows=1,
            device="cpu", cpus_per_actor=0.5)), "embedded", "skipped_done", float_cols=("vector",)),
    }
