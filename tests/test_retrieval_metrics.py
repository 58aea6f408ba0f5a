"""Retrieval metrics: known answers on a hand-built similarity matrix, agreement with ranx in both
directions with several captions per image, and fusion/significance equal to ranx's own."""

from __future__ import annotations

import numpy as np
import pytest

from artray.evaluate import fusion
from artray.evaluate.retrieval_metrics import (
    RANX_EQUIVALENTS,
    RetrievalInputError,
    cut_run,
    first_relevant_ranks,
    mean_recall,
    qrels_dict,
    retrieval_metrics,
    run_dict,
    run_metrics,
)

# 3 images, 5 texts; texts 0,1 describe image 0, texts 2,3 image 1, text 4 image 2.
TEXT_OF_IMAGE = [0, 0, 1, 1, 2]
SIM = np.array([  # texts × images
    [0.9, 0.1, 0.2],  # t0 → img0 rank 1
    [0.3, 0.5, 0.4],  # t1 → img0 rank 3
    [0.2, 0.6, 0.1],  # t2 → img1 rank 1
    [0.7, 0.4, 0.8],  # t3 → img1 rank 3
    [0.1, 0.6, 0.5],  # t4 → img2 rank 2
])


def _t2i_i2t(sim: np.ndarray, text_of_image: list[int]):
    n_img = sim.shape[1]
    t2i = [[i] for i in text_of_image]
    i2t = [[t for t, i in enumerate(text_of_image) if i == img] for img in range(n_img)]
    return t2i, i2t


def test_hand_built_matrix_known_answers():
    t2i, i2t = _t2i_i2t(SIM, TEXT_OF_IMAGE)
    assert first_relevant_ranks(SIM, t2i).tolist() == [1, 3, 1, 3, 2]
    m = retrieval_metrics(SIM, t2i, ks=(1, 2))
    assert m["R@1"] == pytest.approx(2 / 5) and m["R@2"] == pytest.approx(3 / 5)
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 1 + 1 / 3 + 1 / 2) / 5)
    assert m["P@1"] == m["R@1"] and m["median_rank"] == 2 and m["queries"] == 5
    # image → text: img0 column [.9,.3,.2,.7,.1] best of t0,t1 is t0 rank 1;
    # img1 column [.1,.5,.6,.4,.6] (tie .6 t2/t4 → gallery order, t2 first) → rank 1;
    # img2 column [.2,.4,.1,.8,.5] → t4 at rank 2.
    assert first_relevant_ranks(SIM.T, i2t).tolist() == [1, 1, 2]
    i2t_m = retrieval_metrics(SIM.T, i2t)
    assert mean_recall(m | {"R@5": 1.0, "R@10": 1.0}, i2t_m) == pytest.approx((0.4 + 1 + 1 + 2 / 3 + 1 + 1) / 6)


def test_bad_inputs_are_named():
    with pytest.raises(RetrievalInputError, match="NaN"):
        retrieval_metrics(np.array([[np.nan, 1.0]]), [[0]])
    with pytest.raises(RetrievalInputError, match="no relevant"):
        retrieval_metrics(np.eye(2), [[0], []])
    with pytest.raises(RetrievalInputError, match="outside"):
        retrieval_metrics(np.eye(2), [[0], [5]])


@pytest.fixture(scope="module")
def many_to_many():
    """40 images with 1–5 captions each, plus 10 texts relevant to two images (CulTi-like)."""
    rng = np.random.default_rng(0)
    text_images = [[i] for i in range(40) for _ in range(rng.integers(1, 6))]
    text_images += [sorted(rng.choice(40, 2, replace=False).tolist()) for _ in range(10)]
    sim = rng.normal(size=(len(text_images), 40))
    i2t = [[t for t, imgs in enumerate(text_images) if i in imgs] for i in range(40)]
    tids, iids = [f"t{j}" for j in range(len(text_images))], [f"i{j}" for j in range(40)]
    return sim, text_images, i2t, tids, iids


def _ranx_scores(sim, relevant, qids, gids, metrics):
    from ranx import Qrels, Run, evaluate

    return evaluate(Qrels(qrels_dict(qids, gids, relevant)), Run(run_dict(sim, qids, gids, 0)), metrics)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_agrees_with_ranx_multi_relevant(many_to_many, direction):
    sim, t2i, i2t, tids, iids = many_to_many
    args = (sim, t2i, tids, iids) if direction == "t2i" else (sim.T, i2t, iids, tids)
    ours = retrieval_metrics(args[0], args[1])
    theirs = _ranx_scores(*args, list(RANX_EQUIVALENTS.values()))
    for name, ranx_name in RANX_EQUIVALENTS.items():
        assert ours[name] == pytest.approx(theirs[ranx_name], abs=1e-12), name
    if direction == "i2t":  # several relevant texts per image: ranx's recall@K is a different number
        assert _ranx_scores(*args, ["recall@1", "mrr"])["recall@1"] < ours["R@1"] or ours["R@1"] == 0


def test_run_depth_and_trec_round_trip(many_to_many):
    sim, _, _, tids, iids = many_to_many
    run = run_dict(sim, tids, iids, 5)
    assert all(len(v) == 5 for v in run.values())
    assert max(run["t0"], key=run["t0"].get) == iids[int(np.argmax(sim[0]))]
    assert fusion.parse_trec(fusion.to_trec(run, "m")) == run


def test_fusion_and_significance_match_ranx(many_to_many):
    from ranx import Qrels, Run, compare, fuse

    sim, t2i, _, tids, iids = many_to_many
    other = sim + np.random.default_rng(1).normal(scale=0.7, size=sim.shape)
    runs = {"a": run_dict(sim, tids, iids, 0), "b": run_dict(other, tids, iids, 0)}
    fused = fusion.fuse_rrf(runs)
    expected = fuse([Run(runs["a"], name="a"), Run(runs["b"], name="b")], method="rrf").to_dict()
    assert fused.keys() == expected.keys()
    for q in fused:
        assert fused[q] == pytest.approx(dict(expected[q]))
    qrels = qrels_dict(tids, iids, t2i)
    sig = fusion.significance(qrels, {**runs, "rrf": fused}, ["mrr", "hit_rate@1"], "student", 0.05)
    ref = compare(Qrels(qrels), [Run(runs["a"], name="a"), Run(runs["b"], name="b"), Run(fused, name="rrf")],
                  metrics=["mrr", "hit_rate@1"], max_p=0.05, stat_test="student").to_dict()
    for name in ("a", "b", "rrf"):
        assert sig["runs"][name]["scores"] == pytest.approx(ref[name]["scores"])
        for other_name, ps in ref[name]["comparisons"].items():
            assert sig["runs"][name]["p_values"][other_name] == pytest.approx(ps)
    for m in ("mrr", "hit_rate@1"):
        for name, entry in sig["runs"].items():
            for beaten in entry["beats"][m]:
                assert entry["p_values"][beaten][m] < 0.05
                assert entry["scores"][m] > sig["runs"][beaten]["scores"][m]


def test_depth_cut_single_and_fused_runs_score_alike(many_to_many):
    """`evaluate retrieval` with run_depth > 0: single and fused runs go through `run_metrics` at the same
    depth, so a relevant item past it is rank depth+1 (finite), never Infinity, for both."""
    sim, t2i, _, tids, iids = many_to_many
    qrels = qrels_dict(tids, iids, t2i)
    other = sim + np.random.default_rng(2).normal(scale=0.7, size=sim.shape)
    runs = {"a": run_dict(sim, tids, iids, 5), "b": run_dict(other, tids, iids, 5)}
    runs["rrf"] = cut_run(fusion.fuse_rrf(runs), 5)
    full = retrieval_metrics(sim, t2i)
    for name, run in runs.items():
        m = run_metrics(run, qrels, 5)
        assert np.isfinite(m["median_rank"]) and m["mean_rank"] <= 6 and m["not_retrieved"] > 0, name
    a = run_metrics(runs["a"], qrels, 5)
    assert a["R@1"] == full["R@1"] and a["R@5"] == full["R@5"] and a["P@1"] == full["P@1"]
    assert a["MRR"] <= full["MRR"] and a["R@10"] == a["R@5"]  # nothing past the depth counts
    assert run_metrics(run_dict(sim, tids, iids, 0), qrels, len(iids)) == {**full, "depth": 40, "not_retrieved": 0}
