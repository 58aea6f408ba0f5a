"""Runs as ranx sees them: TREC text, reciprocal rank fusion and paired significance tests.

A run is ``{query_id: {item_id: score}}`` and qrels ``{query_id: {item_id: 1}}``, the
dicts ranx's ``Run``/``Qrels`` are built from. Fusion and the tests are ranx's own
(``fuse(method="rrf")`` and ``compare``, as jcgohr/artwork-caption-gen uses them), so a
number here is the number ranx gives on the same runs.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

STAT_TESTS = ("student", "fisher", "tukey")
RUN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class FusionSpec(BaseModel):
    """One reciprocal-rank fusion of named runs (a config entry of `evaluate retrieval` / `evaluate runs`)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=RUN_NAME_PATTERN)
    runs: list[str] = Field(min_length=2, description="run names (a model name, or <model>+itm / +laclip)")
    k: int = Field(60, ge=1, description="RRF constant")


def to_trec(run: dict, name: str) -> str:
    """TREC run text: ``qid Q0 item rank score name`` per line, items by descending score."""
    lines = []
    for qid, items in run.items():
        ranked = sorted(items.items(), key=lambda kv: -kv[1])
        lines += [f"{qid} Q0 {doc} {rank} {score!r} {name}" for rank, (doc, score) in enumerate(ranked, 1)]
    return "\n".join(lines) + "\n"


def qrels_trec(qrels: dict) -> str:
    """TREC qrels text: ``qid 0 item relevance`` per line."""
    return "".join(f"{qid} 0 {doc} {rel}\n" for qid, docs in qrels.items() for doc, rel in docs.items())


def parse_trec(text: str) -> dict:
    """The run dict of TREC run text (the inverse of `to_trec`)."""
    run: dict = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 6:
            raise ValueError(f"line {n} of the run is not 'qid Q0 item rank score name': {line[:80]!r}")
        run.setdefault(parts[0], {})[parts[2]] = float(parts[4])
    return run


def parse_qrels_trec(text: str) -> dict:
    """The qrels dict of TREC qrels text (``qid 0 item relevance`` per line; the inverse of `qrels_trec`)."""
    qrels: dict = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise ValueError(f"line {n} of the qrels is not 'qid 0 item relevance': {line[:80]!r}")
        try:
            rel = int(parts[3])
        except ValueError:
            raise ValueError(f"line {n} of the qrels: relevance {parts[3]!r} is not an integer") from None
        qrels.setdefault(parts[0], {})[parts[2]] = rel
    return qrels


def _ranx_run(run: dict, name: str):
    from ranx import Run

    return Run(run, name=name)


def fuse_rrf(runs: dict[str, dict], name: str = "rrf", k: int = 60, norm: str | None = "min-max") -> dict:
    """Reciprocal rank fusion (ranx ``fuse(method="rrf")``): score = Σ 1 / (k + rank), over the
    runs holding the item. `norm` is ranx's (min-max, as jcgohr/artwork-caption-gen passes; it
    keeps each run's order, so RRF's ranks are the same). A query missing from a run counts as
    an empty result list of that run."""
    from ranx import fuse

    queries = list(dict.fromkeys(q for r in runs.values() for q in r))  # ranx fuses runs of the same queries only
    runs = {n: {q: r.get(q, {}) for q in queries} for n, r in runs.items()}
    fused = fuse([_ranx_run(r, n) for n, r in runs.items()], norm=norm, method="rrf", params={"k": k})
    return {q: dict(items) for q, items in fused.to_dict().items()}


def significance(qrels: dict, runs: dict[str, dict], metrics: list[str], stat_test: str = "student",
                 max_p: float = 0.05, seed: int = 42) -> dict:
    """ranx ``compare`` of every pair of runs on `metrics`: scores, p-values and, per run and
    metric, the runs it beats significantly (higher score and p < `max_p`).

    A p-value ranx cannot compute (NaN: the two runs score every query the same) is None
    (null in JSON) and beats nothing."""
    from ranx import Qrels, compare

    if len(runs) < 2:
        return {}
    report = compare(Qrels(qrels), [_ranx_run(r, n) for n, r in runs.items()], metrics=metrics,
                     max_p=max_p, stat_test=stat_test, random_seed=seed)
    data = report.to_dict()
    out = {"stat_test": stat_test, "max_p": max_p, "metrics": metrics, "runs": {}}
    for name in data["model_names"]:
        entry = data[name]
        p_values = {o: {m: _p_value(p) for m, p in ps.items()} for o, ps in entry["comparisons"].items()}
        beats = {m: sorted(o for o, ps in p_values.items()
                           if ps[m] is not None and ps[m] < max_p and entry["scores"][m] > data[o]["scores"][m])
                 for m in metrics}
        out["runs"][name] = {"scores": {m: float(v) for m, v in entry["scores"].items()},
                             "p_values": p_values, "beats": beats}
    return out


def _p_value(p) -> float | None:
    p = float(p)
    return p if p == p else None  # NaN (identical per-query scores): undefined
