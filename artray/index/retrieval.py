"""A built index on storage, loaded for search: FAISS per gallery kind + its metadata table.

Layout at an index URI (written by `artray index build`)::

    <uri>/_manifest.json     written last: encoder identity (family, checkpoint, dim, fingerprint),
                             FAISS type and parameters per gallery, counts
    <uri>/image.faiss        artwork images, row i of the FAISS index ↔ row i of image.parquet
    <uri>/image.parquet      id, artwork_id, title, text (first caption), image_uri, split, source, ...
    <uri>/text.faiss         texts (for image→text search)
    <uri>/text.parquet       id (text_id), artwork_ids, text, split, source, ...

An index is versioned by the encoder that made its vectors: `load_index` with an
encoder identity refuses a different family, checkpoint, dim or fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from artray import storage
from artray.corpus import MANIFEST
from artray.encoders import check_same_encoder
from artray.errors import UserError
from artray.index import faiss_types

KINDS = ("image", "text")
META_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("artwork_id", pa.string()),  # the artwork itself, or a text's first artwork
    pa.field("artwork_ids", pa.list_(pa.string())),  # every artwork a text describes (images: itself)
    pa.field("title", pa.string()),
    pa.field("text", pa.string()),  # the text, or an image's first caption
    pa.field("image_uri", pa.string()),
    pa.field("img_url", pa.string()),
    pa.field("split", pa.string()),
    pa.field("source", pa.string()),
    pa.field("language", pa.string()),
])


class IndexNotFoundError(UserError, FileNotFoundError):
    """No finished index at the URI."""


@dataclass
class Gallery:
    """One kind's FAISS index, its metadata rows and an id → row map."""

    index: object
    meta: pa.Table
    rows: dict[str, int]

    def __len__(self) -> int:
        return self.meta.num_rows


class RetrievalIndex:
    """Search over the galleries of one index; scores are cosines (inner products of unit vectors)."""

    def __init__(self, uri: str, manifest: dict, galleries: dict[str, Gallery]):
        self.uri, self.manifest, self.galleries = uri, manifest, galleries
        self.encoder: dict = manifest["encoder"]

    @property
    def dim(self) -> int:
        return int(self.encoder["dim"])

    def check_encoder(self, identity: dict) -> None:
        """Raise `EncoderMismatchError` unless `identity` is the encoder these vectors came from."""
        check_same_encoder(self.encoder, identity, f"the index at {self.uri}")

    def size(self, kind: str) -> int:
        return len(self.galleries[kind]) if kind in self.galleries else 0

    def vector(self, kind: str, id_: str) -> np.ndarray | None:
        """The stored vector of gallery item `id_` (an artwork's image for kind "image"), or None."""
        gallery = self.galleries.get(kind)
        if gallery is None or id_ not in gallery.rows:
            return None
        return gallery.index.reconstruct(gallery.rows[id_])

    def search(self, queries: np.ndarray, k: int, kind: str) -> list[list[dict]]:
        """Top-`k` gallery items of `kind` per query row, best first: metadata + rank + score."""
        gallery = self.galleries.get(kind)
        if gallery is None or not len(gallery):
            return [[] for _ in range(len(queries))]
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, rows = gallery.index.search(queries, min(k, len(gallery)))
        out = []
        for score_row, id_row in zip(scores, rows):
            keep = id_row >= 0  # approximate indexes may find fewer than k
            meta = gallery.meta.take(pa.array(id_row[keep])).to_pylist()
            out.append([{"rank": r + 1, "score": round(float(s), 6), **m}
                        for r, (s, m) in enumerate(zip(score_row[keep], meta))])
        return out

    def info(self) -> dict:
        """What /models and people want to know: encoder, FAISS type, gallery sizes, when built."""
        enc = self.encoder
        return {"uri": self.uri, "family": enc["family"], "checkpoint": enc["checkpoint"], "dim": enc["dim"],
                "faiss": self.manifest["faiss"], "galleries": {k: len(g) for k, g in self.galleries.items()},
                "built": self.manifest.get("finished"), "embeddings": self.manifest.get("embeddings")}


def read_index_manifest(uri: str, options: storage.StorageOptions = storage.DEFAULT_OPTIONS) -> dict:
    """The manifest of the finished index at `uri`; raises `IndexNotFoundError` if there is none."""
    manifest = storage.read_json(storage.join(uri, MANIFEST), options)
    if manifest is None or manifest.get("stage") != "index":
        raise IndexNotFoundError(
            f"no finished index at {uri} (no index {MANIFEST}); build one with `artray index build`")
    return manifest


def load_index(uri: str, options: storage.StorageOptions = storage.DEFAULT_OPTIONS,
               encoder: dict | None = None) -> RetrievalIndex:
    """Load the index at `uri`; with `encoder` (an ``Encoder.identity()``), refuse a different encoder
    before reading the vectors."""
    manifest = read_index_manifest(uri, options)
    if encoder is not None:
        check_same_encoder(manifest["encoder"], encoder, f"the index at {uri}")
    galleries = {}
    for kind in manifest["kinds"]:
        index = faiss_types.from_bytes(storage.read_bytes(storage.join(uri, f"{kind}.faiss"), options),
                                       manifest["faiss"][kind])
        meta = storage.read_parquet(storage.join(uri, f"{kind}.parquet"), options).cast(META_SCHEMA)
        if index.ntotal != meta.num_rows:
            raise IndexNotFoundError(f"{uri}: {kind}.faiss has {index.ntotal} vectors but {kind}.parquet "
                                     f"{meta.num_rows} rows; rebuild it with `artray index build`")
        galleries[kind] = Gallery(index, meta, {i: n for n, i in enumerate(meta["id"].to_pylist())})
    return RetrievalIndex(uri, manifest, galleries)
