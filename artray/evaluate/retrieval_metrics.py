"""Retrieval metrics of a full query × gallery similarity matrix, vectorised in numpy.

A query may have several relevant gallery items (ArtCap: five captions per image, so an
image query has five relevant texts; CulTi: many-to-many). The conventional definitions
are used, as Flickr/COCO/CulTi evaluations report them: a query's *rank* is the rank of
its best-placed relevant item, and

- ``R@K``  fraction of queries with a relevant item in the top K (ranx's ``hit_rate@K``;
  ranx's ``recall@K`` divides by the number of relevant items, which is not this),
- ``MRR``  mean of 1 / rank (ranx's ``mrr`` on a run holding the whole gallery),
- ``P@1``  fraction whose top item is relevant (= R@1 under this convention),
- ``median_rank`` / ``mean_rank`` the median / mean of the ranks (1 is best),
- ``MR``   mean of the six recalls R@1/5/10 of both directions (CulTi's "MR").

Ties are broken by gallery order (a stable sort of the scores, highest first). Metrics
are fractions in [0, 1]; the report prints percentages.

Runs (``{query_id: {item_id: score}}``, ranx's format) are scored by `run_metrics` at a
*depth* D: each query's top D items by score (ties: the run's own item order). A relevant
item that is not among them counts as not retrieved: reciprocal rank 0 (as ranx's ``mrr``),
no hit at any K, and rank D + 1 for the median/mean rank, which makes those a lower bound on
the true ranks (exact when no query misses; ``not_retrieved`` counts the misses). Single and
fused runs go through the same function at the same depth, so their numbers compare.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from artray.errors import UserError

RECALL_KS = (1, 5, 10)
QUERY_BLOCK = 1024  # queries ranked at a time: bounds memory at QUERY_BLOCK × gallery indices
# Our metric name → the ranx metric that computes the same number (tests check they agree).
RANX_EQUIVALENTS = {**{f"R@{k}": f"hit_rate@{k}" for k in RECALL_KS}, "MRR": "mrr", "P@1": "precision@1"}


class RetrievalInputError(UserError, ValueError):
    """A similarity matrix or ground truth that cannot be evaluated; the message says what is wrong."""


def check_finite(sim: np.ndarray) -> None:
    """Refuse a similarity matrix with NaN or infinite scores (a corrupt embedding upstream)."""
    if not np.isfinite(sim).all():
        raise RetrievalInputError("the similarity matrix holds NaN or infinite scores: an embedding is corrupt")


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
    check_finite(sim)
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


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = RECALL_KS, depth: int | None = None) -> dict:
    """R@K for each K, MRR, P@1, median and mean rank, and the query count.

    With `depth` D the ranks come from runs cut at D: a rank above D means "not retrieved"
    (reciprocal rank 0; it enters the median/mean as given, D + 1 by `run_ranks`), and the
    result adds ``depth`` and ``not_retrieved`` (queries with no relevant item in the top D)."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise RetrievalInputError("no queries to evaluate")
    missed = ranks > depth if depth is not None else np.zeros(ranks.shape, bool)
    out = {f"R@{k}": float(np.mean((ranks <= k) & ~missed)) for k in ks}
    out.update({"MRR": float(np.mean(np.where(missed, 0.0, 1.0 / ranks))), "P@1": float(np.mean(ranks == 1)),
                "median_rank": float(np.median(ranks)), "mean_rank": float(np.mean(ranks)), "queries": int(ranks.size)})
    if depth is not None:
        out.update({"depth": int(depth), "not_retrieved": int(missed.sum())})
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


def ranked_items(items: Mapping[str, float], depth: int) -> list[str]:
    """Item ids of one query's result list, best score first (ties: the list's own order), top `depth`."""
    return sorted(items, key=lambda doc: -items[doc])[:depth]  # sorted() is stable


def cut_run(run: Mapping[str, Mapping[str, float]], depth: int) -> dict:
    """The run with each query's top `depth` items only (best first)."""
    return {q: {doc: float(items[doc]) for doc in ranked_items(items, depth)} for q, items in run.items()}


def run_ranks(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, float]],
              depth: int) -> np.ndarray:
    """Per qrels query (in qrels order), the 1-based rank of its best-placed relevant item among the
    run's top `depth`, or depth + 1 when none is there (a query absent from the run retrieved nothing).

    An item is relevant when its qrels value is >= 1 (ranx's default ``rel_lvl``); the caller
    leaves out queries without one (see `relevant_qrels`)."""
    if depth < 1:
        raise RetrievalInputError(f"the evaluation depth must be >= 1, got {depth}")
    ranks = np.empty(len(qrels), dtype=np.int64)
    for n, (q, rel) in enumerate(qrels.items()):
        ordered = ranked_items(run.get(q) or {}, depth)
        ranks[n] = next((r for r, doc in enumerate(ordered, 1) if rel.get(doc, 0) >= 1), depth + 1)
    return ranks


def relevant_qrels(qrels: Mapping[str, Mapping[str, float]]) -> tuple[dict, list[str]]:
    """(qrels of the queries with a relevant item, i.e. a value >= 1; the ids of those without one)."""
    kept = {q: dict(rel) for q, rel in qrels.items() if any(v >= 1 for v in rel.values())}
    return kept, [q for q in qrels if q not in kept]


def run_metrics(run: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, float]], depth: int,
                ks: Sequence[int] = RECALL_KS) -> dict:
    """`metrics_from_ranks` of a run cut at `depth`, over the qrels queries (each needs a relevant item).

    Equals ranx's ``hit_rate@K``, ``mrr`` and ``precision@1`` on `cut_run(run, depth)` made
    comparable to the qrels (missing queries empty, queries outside the qrels dropped)."""
    return metrics_from_ranks(run_ranks(run, qrels, depth), ks, depth)
