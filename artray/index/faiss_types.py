"""The FAISS index types artray builds, by name, with their parameters.

All are inner-product indexes over L2-normalised vectors, so scores are cosines:

- ``flat``  exact search (``IndexFlatIP``): the right choice up to a few hundred
            thousand vectors, and the reference the approximate types are checked against.
- ``ivf``   inverted lists (``IVF<nlist>,Flat``): k-means cells, ``nprobe`` of them
            searched per query; needs training vectors (at least ``nlist``, ideally 39×).
- ``hnsw``  graph search (``HNSW<M>,Flat``): no training, more memory, ``ef_search``
            trades recall for speed.
"""

from __future__ import annotations

import math
from typing import Literal

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from artray.errors import UserError

IndexType = Literal["flat", "ivf", "hnsw"]


class FaissParams(BaseModel):
    """Index type and its parameters (the ``index`` section of an index config)."""

    model_config = ConfigDict(extra="forbid")

    type: IndexType = Field("flat", description="flat (exact), ivf or hnsw (approximate)")
    ivf_nlist: int | None = Field(None, ge=1, description="IVF cells (default: about 4·sqrt(n), at most n/39)")
    ivf_nprobe: int = Field(16, ge=1, description="IVF cells searched per query")
    hnsw_m: int = Field(32, ge=4, description="HNSW graph degree")
    hnsw_ef_construction: int = Field(200, ge=8, description="HNSW build-time candidate list")
    hnsw_ef_search: int = Field(128, ge=1, description="HNSW query-time candidate list (recall vs speed)")


class IndexBuildError(UserError, ValueError):
    """The index cannot be built from this input or with these parameters; the message says what to change."""


def default_nlist(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def build(vectors: np.ndarray, params: FaissParams) -> tuple[faiss.Index, dict]:
    """A FAISS index holding `vectors` (row i ↔ id i), and the parameters actually used."""
    n, dim = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if params.type == "flat":
        index, used = faiss.IndexFlatIP(dim), {"type": "flat"}
    elif params.type == "ivf":
        nlist = params.ivf_nlist or default_nlist(n)
        if nlist > n:
            raise IndexBuildError(f"ivf_nlist={nlist} but only {n} vectors to train on; lower ivf_nlist or use type flat")
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(params.ivf_nprobe, nlist)
        used = {"type": "ivf", "ivf_nlist": nlist, "ivf_nprobe": index.nprobe}
    else:
        index = faiss.index_factory(dim, f"HNSW{params.hnsw_m},Flat", faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.hnsw_ef_construction
        index.hnsw.efSearch = params.hnsw_ef_search
        used = {"type": "hnsw", "hnsw_m": params.hnsw_m, "hnsw_ef_construction": params.hnsw_ef_construction,
                "hnsw_ef_search": params.hnsw_ef_search}
    if n:
        index.add(vectors)
    return index, used


def to_bytes(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()


def from_bytes(data: bytes, used: dict) -> faiss.Index:
    """Deserialise an index and set its query-time parameters from `used`."""
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    if used.get("type") == "ivf":
        index.nprobe = used["ivf_nprobe"]
        index.make_direct_map()  # lets an artwork's own vector be read back for id queries
    elif used.get("type") == "hnsw":
        index.hnsw.efSearch = used["hnsw_ef_search"]
    return index
