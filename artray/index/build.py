"""`artray index build`: embedding rows (from `artray embed`) → FAISS galleries + metadata at a URI.

One gallery per kind present in the embeddings (images for text→image, texts for
image→text), each a FAISS index whose row i is row i of its metadata table, joined
from the corpus the embeddings came from (title, caption, image URI, split, source).
The manifest records the encoder identity of the embed output, which is what versions
the index: `load_index` refuses to serve it next to any other encoder. A build is
deterministic and cheap next to embedding, so re-running replaces the output: the
manifest is deleted first and written last, after every gallery is committed.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from artray import corpus, storage
from artray.config import JobConfig
from artray.corpus import MANIFEST
from artray.index import faiss_types
from artray.index.faiss_types import FaissParams, IndexBuildError
from artray.index.retrieval import KINDS, META_SCHEMA
from artray.manifest import build_manifest
from artray.lease import Lease
from artray.outputs import read_embeddings

STAGE = "index"


class IndexConfig(JobConfig):
    """Builds FAISS galleries and their metadata from `artray embed` output (`artray index build`)."""

    embeddings: str = Field(description="URI of a finished `artray embed` output")
    output: str = Field(description="index URI to write (replaced if it exists)")
    corpus: str | None = Field(None, description="corpus for metadata (default: the one the embeddings came from)")
    splits: list[str] | None = Field(None, description="only these splits go into the galleries (default: all)")
    index: FaissParams = Field(default_factory=FaissParams, description="FAISS type and parameters")


def _vectors(table: pa.Table, dim: int, what: str) -> np.ndarray:
    lengths = pc.list_value_length(table["vector"])
    if table.num_rows and (pc.min(lengths).as_py() != dim or pc.max(lengths).as_py() != dim):
        raise IndexBuildError(f"{what} has vectors whose length is not the encoder's dim {dim}; re-run `artray embed`")
    flat = pc.list_flatten(table["vector"]).to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(table.num_rows, dim)


def _metadata(kind: str, ids: list[str], corpus_uri: str, opts: storage.StorageOptions) -> tuple[pa.Table, int]:
    """Metadata rows for `ids` in that order, and how many ids the corpus no longer has."""
    if kind == "image":
        arts = corpus.read_artworks(corpus_uri, opts, columns=[
            "artwork_id", "split", "image_uri", "img_url", "captions", "language", "source", "title"])
        by_id = {r["artwork_id"]: r for r in arts.to_pylist()}
        rows = [{"id": i, "kind": kind, "artwork_id": i, "artwork_ids": [i], "title": r.get("title"),
                 "text": (r.get("captions") or [None])[0], "image_uri": r.get("image_uri"), "img_url": r.get("img_url"),
                 "split": r.get("split"), "source": r.get("source"), "language": r.get("language")}
                for i in ids for r in [by_id.get(i, {})]]
    else:
        texts = corpus.read_texts(corpus_uri, opts)
        by_id = {r["text_id"]: r for r in texts.to_pylist()}
        rows = [{"id": i, "kind": kind, "artwork_id": (r.get("artwork_ids") or [None])[0],
                 "artwork_ids": r.get("artwork_ids") or [], "title": None, "text": r.get("text"), "image_uri": None,
                 "img_url": None, "split": r.get("split"), "source": r.get("source"), "language": r.get("language")}
                for i in ids for r in [by_id.get(i, {})]]
    return pa.Table.from_pylist(rows, schema=META_SCHEMA), sum(1 for i in ids if i not in by_id)


def build_index(cfg: IndexConfig) -> dict:
    """Build every gallery of `cfg.embeddings` into `cfg.output`; returns the manifest."""
    started = time.time()
    opts = cfg.storage_options()
    source = corpus.read_manifest(cfg.embeddings, opts)
    if source is None or source.get("stage") != "embed":
        raise IndexBuildError(f"{cfg.embeddings} is not a finished embed output (no embed {MANIFEST}); "
                          "run `artray embed` to the end first")
    encoder = source.get("encoder")
    if not encoder:
        raise IndexBuildError(f"{cfg.embeddings} has no encoder record: it embedded nothing; check its corpus")
    corpus_uri = cfg.corpus or source["input"]
    with Lease(cfg.output, "index build", opts):  # one build at a time per index output
        return _build(cfg, opts, started, encoder, corpus_uri)


def _build(cfg: IndexConfig, opts, started: float, encoder: dict, corpus_uri: str) -> dict:
    """`build_index` once the output's lease is held."""
    table = read_embeddings(cfg.embeddings, opts)  # one row per embedding_id, also from a duplicate-holding output
    pairs = set(zip(table["model"].to_pylist(), table["checkpoint"].to_pylist()))
    if pairs - {(encoder["family"], encoder["checkpoint"])}:
        raise IndexBuildError(f"{cfg.embeddings} mixes encoders {sorted(pairs)}; embed into a fresh output")
    if cfg.splits:
        table = table.filter(pc.is_in(table["split"], pa.array(cfg.splits, pa.string())))

    storage.delete(storage.join(cfg.output, MANIFEST), opts)
    counts, kinds, used = {}, [], {}
    for kind in KINDS:
        part = table.filter(pc.equal(table["kind"], kind)).sort_by("id")
        if not part.num_rows:
            continue
        index, used[kind] = faiss_types.build(_vectors(part, encoder["dim"], cfg.embeddings), cfg.index)
        meta, missing = _metadata(kind, part["id"].to_pylist(), corpus_uri, opts)
        storage.write_bytes_atomic(storage.join(cfg.output, f"{kind}.faiss"), faiss_types.to_bytes(index), opts)
        storage.write_parquet_atomic(meta, storage.join(cfg.output, f"{kind}.parquet"), opts)
        counts[kind] = {"vectors": part.num_rows, "missing_metadata": missing}
        kinds.append(kind)
    if not kinds:
        raise IndexBuildError(f"no embeddings to index in {cfg.embeddings}" + (f" for splits {cfg.splits}" if cfg.splits else ""))
    for kind in set(KINDS) - set(kinds):  # a gallery left from an earlier build must not linger
        for ext in ("faiss", "parquet"):
            storage.delete(storage.join(cfg.output, f"{kind}.{ext}"), opts)
    manifest = build_manifest(STAGE, cfg.model_dump(mode="json"), counts, started, embeddings=cfg.embeddings,
                              corpus=corpus_uri, output=cfg.output, encoder=encoder, faiss=used, kinds=kinds)
    storage.write_json_atomic(storage.join(cfg.output, MANIFEST), manifest, opts)
    print(summary_line(manifest))
    return manifest


def summary_line(manifest: dict) -> str:
    enc, c = manifest["encoder"], manifest["counts"]
    galleries = ", ".join(f"{v['vectors']} {k}s ({manifest['faiss'][k]['type']})" for k, v in c.items())
    missing = sum(v["missing_metadata"] for v in c.values())
    return (f"[index] {manifest['output']}: {galleries}, dim {enc['dim']}, "
            f"from {enc['family']}:{enc['checkpoint']}" + (f"; {missing} ids not in the corpus" if missing else "")
            + f"; {manifest['wall_s']:.1f}s")
