"""`artray evaluate runs`: ranx-format run files in, metrics out.

Known answers on hand-built runs (a relevant doc past the depth, ties, an empty result list, a
query missing from a run or from the qrels), agreement with ranx on the same cut runs (single and
RRF-fused), the CLI end to end with strict JSON (identical runs: null p-values), s3:// runs, and
bad files named in the error.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from artray import storage
from artray.cli import main
from artray.evaluate import fusion
from artray.evaluate.fusion import FusionSpec
from artray.evaluate.retrieval_metrics import RANX_EQUIVALENTS, RetrievalInputError, cut_run, run_metrics
from artray.evaluate.runs import RunsEvalConfig, evaluate_runs, read_run, run_runs_eval, self_qrels
from artray.jsonio import dumps_strict


def _strict_loads(text: str):
    """json.loads that refuses NaN/Infinity, as JavaScript's JSON.parse, jq or serde do."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


# Seed B's layout: query id = image id, each query's relevant doc is its own id.
HAND_RUN = {
    "1": {"1": 0.9, "2": 0.5, "3": 0.1},  # rank 1
    "2": {"1": 0.8, "3": 0.2},            # doc 2 not in the run: not retrieved, rank depth+1
    "3": {"1": 0.7, "3": 0.7, "2": 0.1},  # tie at the top: the run's own order puts doc 1 first → rank 2
    "4": {},                              # an empty result list
}


def test_hand_built_run_known_answers():
    m = run_metrics(HAND_RUN, self_qrels({"r": HAND_RUN}), depth=3, ks=(1, 2, 5))
    # ranks: 1, 4 (=depth+1), 2, 4
    assert m["P@1"] == m["R@1"] == pytest.approx(1 / 4)
    assert m["R@2"] == m["R@5"] == pytest.approx(2 / 4)  # rank depth+1 = 4 <= 5 is still not a hit
    assert m["MRR"] == pytest.approx((1 + 0 + 1 / 2 + 0) / 4)
    assert m["median_rank"] == 3.0 and m["mean_rank"] == pytest.approx((1 + 4 + 2 + 4) / 4)
    assert m["not_retrieved"] == 2 and m["depth"] == 3 and m["queries"] == 4
    # cut at depth 1: query 3's tie leaves doc 1, so it misses too; ranks 1, 2, 2, 2
    m1 = run_metrics(HAND_RUN, self_qrels({"r": HAND_RUN}), depth=1)
    assert m1["MRR"] == pytest.approx(1 / 4) and m1["median_rank"] == 2.0 and m1["not_retrieved"] == 3


def _ranx(qrels: dict, run: dict, metrics: list[str]) -> dict:
    from ranx import Qrels, Run, evaluate

    return evaluate(Qrels(qrels), Run(run), metrics, make_comparable=True)


def test_hand_built_run_agrees_with_ranx():
    qrels = self_qrels({"r": HAND_RUN})
    ours = run_metrics(HAND_RUN, qrels, depth=3)
    theirs = _ranx(qrels, HAND_RUN, list(RANX_EQUIVALENTS.values()))
    for name, ranx_name in RANX_EQUIVALENTS.items():
        assert ours[name] == pytest.approx(theirs[ranx_name], abs=1e-12), name


@pytest.fixture(scope="module")
def seed_b_like():
    """Two top-100 runs over a 300-image gallery, 60 queries, some relevant images past the depth,
    one query absent from run b, and qrels with two relevant images for some queries."""
    rng = np.random.default_rng(7)
    gallery = [f"img{j}" for j in range(300)]
    qrels = {f"q{n}": {f"img{n}": 1, **({f"img{n + 100}": 1} if n % 4 == 0 else {})} for n in range(60)}
    runs = {}
    for name, boost in (("a", 1.5), ("b", 0.5)):
        run = {}
        for n in range(60):
            s = rng.normal(size=300)
            s[n] += boost  # the relevant image scores higher, more so in run a
            top = np.argsort(-s, kind="stable")[:100]
            run[f"q{n}"] = {gallery[j]: float(s[j]) for j in top}
        runs[name] = run
    del runs["b"]["q5"]
    return runs, qrels


def test_runs_agree_with_ranx_single_and_fused(seed_b_like):
    runs, qrels = seed_b_like
    result = evaluate_runs(runs, qrels, fusions=[FusionSpec(name="rrf", runs=["a", "b"])], significance=False)
    assert result["depth"] == 100
    misses = {name: m["not_retrieved"] for name, m in result["metrics"].items()}
    assert misses["a"] > 0 and misses["b"] > 0  # the case the matrix API could not express
    fused = result["runs"]["rrf"]
    assert max(len(v) for v in fused.values()) == 100  # fused runs are cut to the same depth
    for name in ("a", "b", "rrf"):
        theirs = _ranx(qrels, result["runs"][name], list(RANX_EQUIVALENTS.values()))
        ours = result["metrics"][name]
        for metric, ranx_name in RANX_EQUIVALENTS.items():
            assert ours[metric] == pytest.approx(theirs[ranx_name], abs=1e-12), (name, metric)
        assert math.isfinite(ours["median_rank"]) and math.isfinite(ours["mean_rank"])
        assert 1 <= ours["median_rank"] <= 101 and ours["mean_rank"] <= 101
    # the fusion is ranx's RRF (min-max norm, as seed B) of the runs, cut to the depth
    from ranx import Run, fuse

    b = {q: runs["b"].get(q, {}) for q in runs["a"]}  # ranx fuses runs of the same queries: q5 empty in b
    expected = fuse([Run(runs["a"], name="a"), Run(b, name="b")], norm="min-max", method="rrf").to_dict()
    assert fused == cut_run({q: dict(v) for q, v in expected.items()}, 100)


def test_query_outside_the_qrels_and_qrels_without_relevant(seed_b_like):
    runs, qrels = seed_b_like
    extra = {"a": {**runs["a"], "stray": {"img1": 1.0}}}
    result = evaluate_runs(extra, {**qrels, "unjudged": {"img3": 0}}, significance=False)
    assert result["left_out"] == {"qrels_queries_without_relevant": 1, "run_queries_not_in_qrels": {"a": 1}}
    assert result["metrics"]["a"] == evaluate_runs({"a": runs["a"]}, qrels, significance=False)["metrics"]["a"]
    with pytest.raises(RetrievalInputError, match="none of its 1 query ids is in the qrels"):
        evaluate_runs({"x": {"other": {"img1": 1.0}}}, qrels)


def test_strict_json_helper(tmp_path):
    obj = {"p": float("nan"), "r": [float("inf"), -float("inf"), 1.5], "n": np.float32("nan"), "k": np.int64(3),
           "t": (np.float64(2.0),)}
    assert _strict_loads(dumps_strict(obj)) == {"p": None, "r": [None, None, 1.5], "n": None, "k": 3, "t": [2.0]}
    storage.write_json_atomic(str(tmp_path / "summary.json"), {"p_value": float("nan"), "rank": float("inf")})
    assert _strict_loads((tmp_path / "summary.json").read_text()) == {"p_value": None, "rank": None}


def _write(path, obj) -> str:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return str(path)


def test_cli_end_to_end_fusion_significance_strict_json(tmp_path, capsys):
    a = _write(tmp_path / "longclip.json", HAND_RUN)
    b = _write(tmp_path / "blip.json", {"1": {"2": 0.9, "1": 0.5}, "2": {"2": 0.8, "1": 0.2}, "3": {"3": 0.6},
                                        "4": {"4": 1.0}})
    same = _write(tmp_path / "longclip-copy.json", HAND_RUN)
    out = tmp_path / "eval"
    assert main(["evaluate", "runs", a, f"{b},{same}", "--qrels-self", "--fuse", "--output", str(out)]) == 0
    summary = _strict_loads((out / "summary.json").read_text())
    assert set(summary["metrics"]) == {"longclip", "blip", "longclip-copy", "rrf"}
    assert summary["depth"] == 3 and summary["metrics"]["longclip"]["mean_rank"] == pytest.approx(11 / 4)
    # identical runs: ranx's p-value is NaN → null, and neither beats the other
    sig = summary["significance"]["runs"]
    assert sig["longclip"]["p_values"]["longclip-copy"]["mrr"] is None
    assert "longclip-copy" not in sig["longclip"]["beats"]["mrr"]
    assert _strict_loads((out / "runs" / "rrf.json").read_text()).keys() == {"1", "2", "3", "4"}
    assert (out / "_manifest.json").exists()
    assert "longclip: P@1 0.250 MRR 0.375" in capsys.readouterr().out
    # without --output the summary JSON goes to stdout, strict too
    assert main(["evaluate", "runs", a, "--qrels-self", "--depth", "1"]) == 0
    printed = _strict_loads(capsys.readouterr().out)
    assert printed["metrics"]["longclip"]["not_retrieved"] == 3 and printed["significance"] == {}


def test_explicit_qrels_trec_and_s3(tmp_path, s3_bucket, s3_endpoint):
    opts = storage.StorageOptions(endpoint_url=s3_endpoint)
    storage.write_json_atomic(f"{s3_bucket}/runs/a.json", HAND_RUN, opts)
    (tmp_path / "qrels.trec").write_text(fusion.qrels_trec({q: {q: 1} for q in HAND_RUN}))
    summary = run_runs_eval(RunsEvalConfig(runs=f"{s3_bucket}/runs/a.json", qrels=str(tmp_path / "qrels.trec"),
                                           s3_endpoint=s3_endpoint, output=f"{s3_bucket}/eval"))
    assert summary["metrics"]["a"]["MRR"] == pytest.approx(0.375)
    assert storage.read_json(f"{s3_bucket}/eval/summary.json", opts)["metrics"]["a"]["not_retrieved"] == 2
    # a TREC run (what `evaluate retrieval` writes) reads as the same run
    (tmp_path / "a.trec").write_text(fusion.to_trec(HAND_RUN, "a"))
    assert read_run(str(tmp_path / "a.trec")) == {q: v for q, v in HAND_RUN.items() if v}


@pytest.mark.parametrize("content, message", [
    ('{"1": {"1": 0.9,}', r"bad\.json is not valid JSON \(line 1, column 17"),
    ('[1, 2]', r"bad\.json: a ranx run is a JSON object"),
    ('{"1": [0.9]}', r"bad\.json: query '1' maps to a list"),
    ('{"1": {"1": "high"}}', r"bad\.json: query '1', doc '1': score 'high' is not a number"),
    ('{"1": {"1": NaN}}', r"bad\.json: query '1', doc '1': score nan is not a finite number"),
    ('{}', r"bad\.json holds no queries"),
])
def test_bad_run_files_are_named(tmp_path, capsys, content, message):
    (tmp_path / "bad.json").write_text(content)
    with pytest.raises(RetrievalInputError, match=message):
        read_run(str(tmp_path / "bad.json"))
    assert main(["evaluate", "runs", str(tmp_path / "bad.json"), "--qrels-self"]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_config_errors(tmp_path, capsys):
    a = _write(tmp_path / "a.json", HAND_RUN)
    assert main(["evaluate", "runs", a]) == 2
    assert "exactly one of qrels" in capsys.readouterr().err
    with pytest.raises(RetrievalInputError, match=r"several runs are named \['a'\]"):
        run_runs_eval(RunsEvalConfig(runs=[a, a], qrels_self=True))
    assert main(["evaluate", "runs", str(tmp_path / "missing.json"), "--qrels-self"]) == 2
    assert "missing.json does not exist" in capsys.readouterr().err
