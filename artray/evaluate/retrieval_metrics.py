"""Retrieval metrics of a full query × gallery similarity matrix, vectorised in numpy.

A query may have several relevant gallery items (ArtCap: five captions per image, so an
image query has five relevant texts; CulTi: many-to-many). The conventional definitions
are used, as Flickr/COCO/CulTi evaluations report them: a query's *rank* is the rank of
its best-placed relevant item, and

- ``R@K``  fraction of queries with a relevant item in the top K (ranx's ``hit_rate@K``;
  ranx's ``recall@K`` divides by the number of relevant items, which is not this),
- ``MRR``  mean of 1 / rank (ranx's ``mrr`` on a run holding the whole gallery),
- ``P@1``  fraction whose top item is relevant (= R@1 under this convention),
- ``median_rank`` the median of the ranks (1 is best),
- ``MR``   mean of the six recalls R@1/5/10 of both directions (CulTi's "MR").

Ties are broken by gallery order (a stable sort of the scores, highest first). Metrics
are fractions in [0, 1]; the report prints percentages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECALL_KS = (1, 5, 10)
QUERY_BLOCK = 1024  # queries ranked at a time: bounds memory at QUERY_BLOCK × gallery indices
# Our metric name → the ranx metric that computes the same number (tests check they agree).
RANX_EQUIVALENTS = {**{f"R@{k}": f"hit_rate@{k}" for k in RECALL_KS}, "MRR": "mrr", "P@1": "precision@1"}


class RetrievalInputError(ValueError):
    """A similarity matrix or ground truth that cannot be evaluated; the message says what is wrong."""


def first_relevant_ranks(sim: np.ndarray, relevant: Sequence[Sequence[int]]) -> np.ndarray:
    """Per query (row of `sim`), the 1-based rank of its best-placed relevant gallery column.

    `relevant[q]` lists the gallery indices relevant to query q; every query needs one.
    """
    sim = np.asarray(sim)
    if sim.ndim != 2:
        raise RetrievalInputError(f"the similarity matrix must be 2-D (queries × gallery), got shape {sim.shape}")
    n_q, n_g = sim.shape
    if len(relevant) != n_q:
        raise RetrievalInputError(f"{len(relevant)} ground-truth lists for {n_q} queries")
    if not np.isfinite(sim).all():
        raise RetrievalInputError("the similarity matrix holds NaN or infinite scores: an embedding is corrupt")
    rel = np.zeros((n_q, n_g), dtype=bool)
    for q, items in enumerate(relevant):
        items = list(items)
        if not items:
            raise RetrievalInputError(f"query {q} has no relevant gallery item")
        if min(items) < 0 or max(items) >= n_g:
            raise RetrievalInputError(f"query {q} points at gallery index outside 0..{n_g - 1}")
        rel[q, items] = True
    ranks = np.empty(n_q, dtype=np.int64)
    for start in range(0, n_q, QUERY_BLOCK):
        block = slice(start, start + QUERY_BLOCK)
        order = np.argsort(-sim[block], axis=1, kind="stable")
        hits = np.take_along_axis(rel[block], order, axis=1)
        ranks[block] = hits.argmax(axis=1) + 1
    return ranks


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """R@K for each K, MRR, P@1, median and mean rank, and the query count."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise RetrievalInputError("no queries to evaluate")
    out = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    out.update({"MRR": float(np.mean(1.0 / ranks)), "P@1": float(np.mean(ranks == 1)),
                "median_rank": float(np.median(ranks)), "mean_rank": float(np.mean(ranks)), "queries": int(ranks.size)})
    return out


def retrieval_metrics(sim: np.ndarray, relevant: Sequence[Sequence[int]], ks: Sequence[int] = RECALL_KS) -> dict:
    """`metrics_from_ranks` of `first_relevant_ranks`."""
    return metrics_from_ranks(first_relevant_ranks(sim, relevant), ks)


def mean_recall(t2i: dict, i2t: dict, ks: Sequence[int] = RECALL_KS) -> float:
    """CulTi's MR: the mean of R@K over `ks` in both directions."""
    return float(np.mean([d[f"R@{k}"] for d in (t2i, i2t) for k in ks]))


def run_dict(sim: np.ndarray, query_ids: Sequence[str], gallery_ids: Sequence[str], depth: int) -> dict:
    """{query_id: {gallery_id: score}} of each query's top `depth` items (0: the whole gallery)."""
    sim = np.asarray(sim, dtype=np.float64)
    depth = sim.shape[1] if depth <= 0 else min(depth, sim.shape[1])
    out = {}
    for start in range(0, sim.shape[0], QUERY_BLOCK):
        block = sim[start:start + QUERY_BLOCK]
        order = np.argsort(-block, axis=1, kind="stable")[:, :depth]
        for row, idx in enumerate(order):
            out[query_ids[start + row]] = {gallery_ids[j]: float(block[row, j]) for j in idx}
    return out


def qrels_dict(query_ids: Sequence[str], gallery_ids: Sequence[str], relevant: Sequence[Sequence[int]]) -> dict:
    """{query_id: {gallery_id: 1}} — ranx/TREC qrels of the ground truth."""
    return {q: {gallery_ids[j]: 1 for j in items} for q, items in zip(query_ids, relevant)}
