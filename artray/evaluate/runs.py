"""`artray evaluate runs`: score retrieval runs that are already written (ranx's JSON format).

A run is ``{query_id: {doc_id: score}}`` — what ranx's ``Run.save(kind="json")`` writes and
what jcgohr/artwork-caption-gen publishes (the top 100 images per Artpedia query). Runs may be
local paths or ``s3://`` URIs; a ``.trec``/``.txt`` file is read as TREC run text instead
(``qid Q0 doc rank score name``, as `artray evaluate retrieval` writes its runs).

Relevance comes from ``qrels`` (ranx JSON ``{query_id: {doc_id: relevance}}``, or TREC qrels
``qid 0 doc relevance`` for ``.trec``/``.txt``; relevant = relevance >= 1) or from
``qrels_self``: each query's one relevant doc is the doc with the same id (seed B's runs:
query id = Artpedia id = image id), over every query id found in any of the runs.

Every run — given or fused — is cut to the same depth D (`depth`; default: the most items any
query has in any given run, 100 for seed B) and scored by `retrieval_metrics.run_metrics`:
P@1, MRR, R@1/5/10 (ranx's ``precision@1``, ``mrr``, ``hit_rate@K`` on the cut runs) and the
median/mean rank of each query's first relevant doc. A relevant doc not in a query's top D —
or a query the run does not hold, or holds with no results — counts as not retrieved:
reciprocal rank 0 and rank D + 1, so the median/mean ranks are lower bounds on the true ranks
(exact when ``not_retrieved`` is 0). Queries of the qrels without a relevant doc are left out
and counted; a run's queries that the qrels do not hold are ignored and counted per run.

`fuse` adds the RRF fusion (ranx ``fuse(method="rrf", norm="min-max")``, as seed B) of all runs,
`fusions` named fusions of some; `significance` compares every pair of runs with ranx
``compare`` (a p-value ranx cannot compute, e.g. of identical runs, is null). Output: the summary
as strict JSON (NaN/Infinity never written; see `artray.jsonio`) at ``<output>/summary.json``
with fused runs under ``<output>/runs/<name>.json`` and ``_manifest.json`` last, or on stdout
without `output`.
"""

from __future__ import annotations

import json
import math
import posixpath
import time
from typing import Literal

from pydantic import Field, field_validator, model_validator

from artray import storage
from artray.config import JobConfig
from artray.evaluate import fusion
from artray.evaluate import retrieval_metrics as rm
from artray.evaluate.fusion import FusionSpec
from artray.evaluate.retrieval_metrics import RetrievalInputError
from artray.jsonio import dumps_strict

STAGE = "evaluate-runs"
SIGNIFICANCE_METRICS = ["precision@1", "mrr", "hit_rate@1", "hit_rate@5", "hit_rate@10"]
TREC_SUFFIXES = (".trec", ".txt")


class RunsEvalConfig(JobConfig):
    """Scores retrieval runs already written (`artray evaluate runs`): ranx-format run files (RUN.json [RUN2.json …]; comma-separated in one argument works too)
    scored against qrels or --qrels-self; one process, no Ray."""

    runs: list[str] = Field(min_length=1, description="run files (ranx JSON {query: {doc: score}}, or TREC "
                            ".trec/.txt), local or s3://; on the command line: one or more paths")
    names: list[str] | None = Field(None, description="run names, one per run (default: the file names without "
                                    "extension)")
    qrels: str | None = Field(None, description="qrels file (ranx JSON {query: {doc: relevance}}, or TREC "
                              ".trec/.txt), local or s3://")
    qrels_self: bool = Field(False, description="no qrels file: each query's relevant doc is the doc with the same "
                             "id (seed B: query id = Artpedia id = image id)")
    depth: int | None = Field(None, ge=1, description="items per query scored, in every run and fusion (default: "
                              "the most items any query has in the given runs)")
    fuse: bool = Field(False, description="add 'rrf', the reciprocal rank fusion of all the runs")
    rrf_k: int = Field(60, ge=1, description="RRF constant of --fuse")
    fusions: list[FusionSpec] = Field(default_factory=list, description="named fusions of some runs")
    significance: bool = Field(True, description="ranx paired test of every pair of runs (two or more runs)")
    significance_test: Literal["student", "fisher", "tukey"] = Field("student", description="ranx compare's test")
    max_p: float = Field(0.05, gt=0, lt=1, description="significance level")
    output: str | None = Field(None, description="folder for summary.json, fused runs and _manifest.json "
                               "(default: print the summary JSON)")

    @field_validator("runs", mode="before")
    @classmethod
    def _split_commas(cls, value):
        """The CLI's positionals: RUN1.json RUN2.json, or RUN1.json,RUN2.json in one argument."""
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(v, str) for v in items):
            return [part.strip() for v in items for part in v.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _one_qrels_source(self):
        if (self.qrels is None) == (not self.qrels_self):
            raise ValueError("give exactly one of qrels (a qrels file) and qrels_self (each query's relevant doc "
                             "has the query's id)")
        if self.names is not None and len(self.names) != len(self.runs):
            raise ValueError(f"{len(self.names)} names for {len(self.runs)} runs")
        return self


# --- reading ----------------------------------------------------------------------------------

def _text(uri: str, options: storage.StorageOptions) -> str:
    try:
        return storage.read_bytes(uri, options).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RetrievalInputError(f"{uri} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _json(uri: str, what: str, options: storage.StorageOptions) -> object:
    try:
        return json.loads(_text(uri, options))
    except json.JSONDecodeError as exc:
        raise RetrievalInputError(f"{uri} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                                  f"a ranx {what} file holds {{query_id: {{doc_id: number}}}}") from exc


def check_run(run: object, source: str, what: str = "run") -> dict:
    """`run` as {query: {doc: float}}, or an error naming `source`, the query and the doc."""
    value = "score" if what == "run" else "relevance"
    if not isinstance(run, dict):
        raise RetrievalInputError(f"{source}: a ranx {what} is a JSON object {{query_id: {{doc_id: {value}}}}}, "
                                  f"got a {type(run).__name__}")
    out = {}
    for q, items in run.items():
        if not isinstance(items, dict):
            raise RetrievalInputError(f"{source}: query {q!r} maps to a {type(items).__name__}, not "
                                      f"{{doc_id: {value}}}")
        for doc, score in items.items():
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise RetrievalInputError(f"{source}: query {q!r}, doc {doc!r}: {value} {score!r} is not a number")
            if not math.isfinite(score):
                raise RetrievalInputError(f"{source}: query {q!r}, doc {doc!r}: {value} {score} is not a finite "
                                          "number; fix the file that wrote it")
        out[str(q)] = {str(doc): float(score) for doc, score in items.items()}
    if not out:
        raise RetrievalInputError(f"{source} holds no queries")
    return out


def read_run(uri: str, options: storage.StorageOptions = storage.DEFAULT_OPTIONS) -> dict:
    """The run at `uri`: ranx JSON, or TREC run text for .trec/.txt; errors name the file."""
    if uri.lower().endswith(TREC_SUFFIXES):
        text = _text(uri, options)
        try:
            return check_run(fusion.parse_trec(text), uri)
        except RetrievalInputError:
            raise
        except ValueError as exc:  # a line that is not 'qid Q0 doc rank score name'
            raise RetrievalInputError(f"{uri}: {exc}") from exc
    return check_run(_json(uri, "run", options), uri)


def read_qrels(uri: str, options: storage.StorageOptions = storage.DEFAULT_OPTIONS) -> dict:
    """The qrels at `uri`: ranx JSON, or TREC qrels text for .trec/.txt; errors name the file."""
    if uri.lower().endswith(TREC_SUFFIXES):
        text = _text(uri, options)
        try:
            return check_run(fusion.parse_qrels_trec(text), uri, "qrels")
        except RetrievalInputError:
            raise
        except ValueError as exc:
            raise RetrievalInputError(f"{uri}: {exc}") from exc
    return check_run(_json(uri, "qrels", options), uri, "qrels")


def self_qrels(runs: dict[str, dict]) -> dict:
    """Qrels where each query's one relevant doc has the query's id, over the queries of all `runs`."""
    return {q: {q: 1} for run in runs.values() for q in run}


def run_name(uri: str) -> str:
    """A run's default name: its file name without extension."""
    base = posixpath.basename(uri.rstrip("/")) if storage.is_s3(uri) else uri.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


# --- scoring ----------------------------------------------------------------------------------

def evaluate_runs(runs: dict[str, dict], qrels: dict, depth: int | None = None, fusions: list[FusionSpec] = (),
                  significance: bool = True, stat_test: str = "student", max_p: float = 0.05) -> dict:
    """Metrics of each run and fusion at one depth, their significance, and what was left out.

    `runs` maps names to ``{query: {doc: score}}``; `qrels` is ``{query: {doc: relevance}}``
    (use `self_qrels` for seed B's id = id relevance). See the module docstring for the rules.
    """
    judged, no_relevant = rm.relevant_qrels(qrels)
    if not judged:
        raise RetrievalInputError("the qrels hold no query with a relevant doc (relevance >= 1)")
    if depth is None:
        depth = max((len(items) for run in runs.values() for items in run.values()), default=0)
        if depth == 0:
            raise RetrievalInputError("every query of every run is empty: nothing to score")
    not_in_qrels = {}
    for name, run in runs.items():
        outside = [q for q in run if q not in judged]
        if len(outside) == len(run):
            raise RetrievalInputError(f"run {name}: none of its {len(run)} query ids is in the qrels (e.g. run "
                                      f"{next(iter(run))!r}, qrels {next(iter(judged))!r}): are they the same ids?")
        not_in_qrels[name] = len(outside)
    cut = {name: rm.cut_run(run, depth) for name, run in runs.items()}
    for f in fusions:
        if missing := [r for r in f.runs if r not in cut]:
            raise RetrievalInputError(f"fusion {f.name}: unknown runs {missing}; runs are {sorted(cut)}")
        if f.name in cut:
            raise RetrievalInputError(f"fusion {f.name}: a run of that name exists; name the fusion otherwise")
        cut[f.name] = rm.cut_run(fusion.fuse_rrf({r: cut[r] for r in f.runs}, f.name, f.k), depth)
    metrics = {name: rm.run_metrics(run, judged, depth) for name, run in cut.items()}
    sig = {}
    if significance and len(cut) > 1:
        comparable = {name: {q: run.get(q, {}) for q in judged} for name, run in cut.items()}
        binary = {q: {doc: int(v >= 1) for doc, v in rel.items()} for q, rel in judged.items()}  # ranx: int levels
        sig = fusion.significance(binary, comparable, SIGNIFICANCE_METRICS, stat_test, max_p)
    return {"depth": depth, "metrics": metrics, "significance": sig,
            "fusions": [f.model_dump() for f in fusions],
            "left_out": {"qrels_queries_without_relevant": len(no_relevant), "run_queries_not_in_qrels": not_in_qrels},
            "rank_note": f"a relevant doc not in a query's top {depth} counts as not retrieved: reciprocal rank 0 "
                         f"and rank {depth + 1}; median_rank/mean_rank are then lower bounds on the true ranks",
            "runs": cut}


def run_runs_eval(cfg: RunsEvalConfig) -> dict:
    """Read the runs and qrels, score them (`evaluate_runs`), write or print the summary; return it."""
    started, opts = time.time(), cfg.storage_options()
    names = cfg.names or [run_name(u) for u in cfg.runs]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise RetrievalInputError(f"several runs are named {dupes} (from their file names): set names, one per run")
    runs = {name: read_run(uri, opts) for name, uri in zip(names, cfg.runs)}
    qrels = self_qrels(runs) if cfg.qrels_self else read_qrels(cfg.qrels, opts)
    fusions = list(cfg.fusions)
    if cfg.fuse:
        if len(runs) < 2:
            raise RetrievalInputError("fuse needs two or more runs")
        fusions.append(FusionSpec(name="rrf", runs=list(runs), k=cfg.rrf_k))
    result = evaluate_runs(runs, qrels, cfg.depth, fusions, cfg.significance, cfg.significance_test, cfg.max_p)
    fused_runs = {f.name: result["runs"][f.name] for f in fusions}
    summary = {"qrels": "self (query id = doc id)" if cfg.qrels_self else cfg.qrels,
               "inputs": {name: {"uri": uri, "queries": len(runs[name]),
                                 "max_items": max(len(v) for v in runs[name].values())}
                          for name, uri in zip(names, cfg.runs)},
               **{k: v for k, v in result.items() if k != "runs"}}
    if cfg.output is None:
        print(dumps_strict(summary, indent=2, ensure_ascii=False))
        return summary
    from artray import corpus
    from artray.manifest import build_manifest

    storage.delete(storage.join(cfg.output, corpus.MANIFEST), opts)
    for name, run in fused_runs.items():
        storage.write_json_atomic(storage.join(cfg.output, "runs", f"{name}.json"), run, opts)
    storage.write_json_atomic(storage.join(cfg.output, "summary.json"), summary, opts)
    corpus.write_manifest(cfg.output, build_manifest(STAGE, cfg.model_dump(mode="json"), {
        "runs": len(result["metrics"]), "queries": next(iter(result["metrics"].values()))["queries"]},
        started, output=cfg.output), opts)
    print(summary_lines(summary, cfg.output))
    return summary


def summary_lines(summary: dict, output: str) -> str:
    """One line per run: P@1, MRR, R@1/5/10, median/mean rank."""
    lines = [f"[evaluate runs] {name}: P@1 {m['P@1']:.3f} MRR {m['MRR']:.3f} "
             + " ".join(f"{k} {m[k]:.3f}" for k in m if k.startswith("R@"))
             + f" median rank {m['median_rank']:g} mean rank {m['mean_rank']:.1f} ({m['queries']} queries, "
             f"{m['not_retrieved']} not in the top {m['depth']})" for name, m in summary["metrics"].items()]
    return "\n".join(lines + [f"[evaluate runs] → {output}"])
