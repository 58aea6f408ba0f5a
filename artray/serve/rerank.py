"""Second-stage re-ranking for the search API: LACLIP (any dual encoder) and BLIP's ITM head.

A request with ``"rerank": "laclip"`` or ``"itm"`` first takes the index's top
``candidates`` by cosine, then re-scores them with the query and returns the best ``k``:

- ``laclip`` (CulTi's training-free local alignment, ``artray.evaluate.laclip``): the
  gallery images (text→image) or the query image (image→text) are cut into crops and
  scored crop by crop; options in the model's ``rerank.laclip`` section of the Serve config.
- ``itm`` (BLIP retrieval checkpoints only): the ITM head's match probability of each
  (image, text) pair — BLIP's own protocol re-ranks the ITC top-k this way.

Gallery images are read from the corpus the index was built from, only the candidates'
rows, and kept in a per-replica LRU cache.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pds
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from artray import families, storage
from artray.corpus import ARTWORKS
from artray.evaluate.laclip import LaclipOptions, laclip_rerank
from artray.images import to_rgb

Method = Literal["laclip", "itm"]


class RerankConfig(BaseModel):
    """How a model re-ranks when a request asks for it (``models[].rerank`` in the Serve config)."""

    model_config = ConfigDict(extra="forbid")

    candidates: int = Field(50, ge=1, le=1000, description="top-N by cosine that get re-scored (at least k)")
    laclip: LaclipOptions = Field(default_factory=LaclipOptions, description="crops, weighting, global mix")
    image_cache: int = Field(2048, ge=0, description="gallery images kept decoded per encoder replica")


def unsupported(method: str, family: str) -> str | None:
    """Why `method` cannot re-rank a `family` gallery (its ``rerankers``, :mod:`artray.families`), or None."""
    supported = families.get(family).rerankers
    if method in supported:
        return None
    if method == "itm":
        return (f"rerank 'itm' needs a BLIP retrieval model (its ITM head); {family} models support "
                + ", ".join(f"'{m}'" for m in sorted(supported)))
    return f"rerank {method!r} is not supported by {family} models; they support {sorted(supported)}"


class CorpusImages:
    """Decoded RGB images of a corpus's artworks by id, read on demand and LRU-cached."""

    def __init__(self, corpus_uri: str, options: storage.StorageOptions, max_pixels: int, capacity: int):
        self.uri, self.options, self.max_pixels, self.capacity = corpus_uri, options, max_pixels, capacity
        self.cache: OrderedDict[str, Image.Image] = OrderedDict()

    def get(self, ids: list[str]) -> list[Image.Image]:
        """The images of `ids`, in order; an id the corpus lacks raises ``KeyError`` naming it."""
        missing = [i for i in dict.fromkeys(ids) if i not in self.cache]
        if missing:
            found = self._read(missing)
            absent = [i for i in missing if i not in found]
            if absent:
                raise KeyError(f"artworks {absent[:5]} are not in the corpus {self.uri}; rebuild the index from it")
            for id_, image in found.items():
                self.cache[id_] = image
        out = []
        for id_ in ids:
            self.cache.move_to_end(id_)
            out.append(self.cache[id_])
        while len(self.cache) > max(self.capacity, len(ids)):
            self.cache.popitem(last=False)
        return out

    def _read(self, ids: list[str]) -> dict[str, Image.Image]:
        shards = storage.list_files(storage.join(self.uri, ARTWORKS), ".parquet", self.options)
        fs, _ = storage.filesystem(self.uri, self.options)
        paths = [storage.filesystem(u, self.options)[1] for u in shards]
        table = pds.dataset(paths, format="parquet", filesystem=fs).to_table(
            columns=["artwork_id", "image"], filter=pc.field("artwork_id").isin(ids))
        return {row["artwork_id"]: to_rgb(row["image"], self.max_pixels)
                for row in table.to_pylist() if row["image"] is not None}


def rerank_scores(encoder, method: Method, opts: RerankConfig, target: str, query_vector: np.ndarray,
                  hits: list[dict], *, query_text: str | None = None, query_image: Image.Image | None = None,
                  gallery_images: list[Image.Image] | None = None,
                  hit_vectors: np.ndarray | None = None) -> np.ndarray:
    """Re-ranking score of each hit (higher is better).

    target "image": the query is `query_text`, the hits are `gallery_images` (with their index
    vectors `hit_vectors`); target "text": the query is `query_image`, the hits' texts come from
    `hits` and their vectors from `hit_vectors`."""
    laclip = opts.laclip
    if target == "image":
        if method == "itm":
            return _match_probability(encoder.itm_logits(gallery_images, [query_text] * len(gallery_images)))
        keys = [h["artwork_id"] or h["id"] for h in hits]
        return laclip_rerank(encoder, gallery_images, query_vector, laclip, image_emb=hit_vectors, keys=keys)[:, 0]
    if method == "itm":
        return _match_probability(encoder.itm_logits([query_image], [h["text"] or "" for h in hits], [0] * len(hits)))
    return laclip_rerank(encoder, [query_image], hit_vectors, laclip, image_emb=query_vector[None, :])[0]


def _match_probability(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return np.exp(z[:, 1]) / np.exp(z).sum(axis=1)


def apply_scores(hits: list[dict], scores: np.ndarray, method: Method, k: int) -> list[dict]:
    """The `k` best hits by `scores`, re-numbered; the cosine stays as ``retrieval_score``."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:k]
    out = []
    for rank, i in enumerate(order, start=1):
        hit = dict(hits[i])
        hit.update(rank=rank, retrieval_score=hit["score"], score=round(float(scores[i]), 6), reranked_by=method)
        out.append(hit)
    return out
