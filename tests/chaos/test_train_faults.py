"""Training under faults: a worker failure injected at a chosen step, and a whole job that dies and is
started again with the same run name, both end with the weights of a run that was never interrupted.

2 Ray Train workers on CPU on a multi-node cluster (`ChaosCluster`: a head and 2 worker nodes), with
each strategy (plain DDP, the default for this size, and DeepSpeed ZeRO-2), the tiny Long-CLIP checkpoint and the sample Artpedia corpus (70 train artworks: 3
steps per epoch, 2 epochs), with variant (alpha) and caption draws on, so every source of randomness in
an epoch is exercised. A restore goes back to the last epoch checkpoint and re-runs the epoch; that
only reproduces the uninterrupted run if every draw of an epoch is seeded from (seed, epoch, rank)
alone — which is what these tests prove.
"""

from __future__ import annotations

import io
import json
import os
import time

import pytest
import torch
from chaoskit import ChaosCluster
from PIL import Image, ImageOps

from artray.corpus import ShardWriter, read_artworks
from artray.models.weights import load_state_dict
from artray.schema import VARIANT_SCHEMA
from artray.train.config import TrainConfig
from artray.train.export import consolidated_state_dict
from artray.train.run import run_train

pytestmark = pytest.mark.chaos

STEPS_PER_EPOCH = 3  # 70 train artworks / 2 workers = 35 each, batches of 16
EPOCHS = 2
FAIL_AT = 5  # inside epoch 2, after epoch 1's checkpoint (step 3)
BASE = {"family": "longclip", "loss": "infonce", "lr": 1e-3, "warmup_steps": 0, "batch_size": 16, "epochs": EPOCHS,
        "alpha": 0.5, "timeout_s": 180, "keep_checkpoints": 2, "export": False, "seed": 7, "cpus_per_worker": 0.5,
        # batches prepared ahead by two collate threads, as on GPU workers (CPU workers prepare them in the
        # training thread by default): a resumed epoch must step through them in the same order
        "prefetch_batches": 2}
ATOL = 1e-6  # fp32 on CPU, same ops in the same order: differences are rounding at most


@pytest.fixture(scope="module")
def corpus_and_variants(tmp_path_factory) -> tuple[str, str]:
    """The Artpedia sample (n=100) and one mirrored variant per train artwork."""
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.scaffold.sample_corpora import make_samples

    root = tmp_path_factory.mktemp("train-faults")
    src = make_samples(str(root / "samples"), n=100)["artpedia"]
    dest = str(root / "artpedia")
    import_corpus(ImportConfig(format="artpedia", src=src, dest=dest))
    variants = str(root / "augment")
    writer = ShardWriter(f"{variants}/variants", VARIANT_SCHEMA)
    for a in read_artworks(dest, columns=["artwork_id", "split", "image", "captions"]).to_pylist():
        if a["split"] != "train":
            continue
        buf = io.BytesIO()
        ImageOps.mirror(Image.open(io.BytesIO(a["image"])).convert("RGB")).save(buf, "PNG")
        writer.add({"variant_id": f"{a['artwork_id']}#0", "parent_id": a["artwork_id"], "variant": 0, "split": "train",
                    "image": buf.getvalue(), "width": 120, "height": 120, "seed": 0, "prompt": a["captions"][0],
                    "prompt_truncated": False, "model": "mirror", "strength": 0.0, "guidance": 0.0, "steps": 0,
                    "sampler": "none", "similarity": 1.0, "passed_filter": True})
    writer.flush()
    return dest, variants


@pytest.fixture(scope="module", params=["ddp", "deepspeed"])
def strategy(request) -> str:
    return request.param


def _config(tiny_models, data, tmp_path, name: str, strategy: str, **kw) -> TrainConfig:
    corpus, variants = data
    return TrainConfig(**{**BASE, **kw}, model=tiny_models["longclip"], corpus=corpus, variants=variants,
                       output=str(tmp_path / "runs"), name=name, strategy=strategy)


def _final_weights(out: dict) -> dict[str, torch.Tensor]:
    """Consolidated fp32 weights of the run's last epoch checkpoint."""
    path = os.path.join(out["run_path"], f"checkpoint_epoch{EPOCHS:04d}")
    assert os.path.isdir(path), sorted(os.listdir(out["run_path"]))
    return consolidated_state_dict(path, BASE.get("zero_stage", 2))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def cluster():
    """A head + 2 one-CPU worker nodes for this module's runs (the train workers take half a CPU each)."""
    c = ChaosCluster(workers=2, worker_cpus=1)
    try:
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def clean(cluster, tiny_models, corpus_and_variants, tmp_path_factory, strategy) -> dict:
    """The uninterrupted run every faulted run (of the same strategy) is compared with."""
    started = time.time()
    out = run_train(_config(tiny_models, corpus_and_variants, tmp_path_factory.mktemp("clean"), "clean", strategy,
                            max_failures=0))
    out["wall_s"] = round(time.time() - started, 1)
    assert out["metrics"]["step"] == EPOCHS * STEPS_PER_EPOCH and out["metrics"]["restored"] == 0
    assert out["metrics"]["variants_seen"] > 0  # alpha draws happened
    out["weights"] = _final_weights(out)
    initial = load_state_dict(tiny_models["longclip"])
    assert (out["weights"]["text_projection"] - initial["text_projection"]).abs().max().item() > 1e-3  # it trained
    return out


def test_worker_failure_at_a_step_resumes_and_matches_the_uninterrupted_run(clean, tiny_models, corpus_and_variants,
                                                                           tmp_path, chaos_report, strategy):
    started = time.time()
    out = run_train(_config(tiny_models, corpus_and_variants, tmp_path, "fault", strategy, fail_at_step=FAIL_AT,
                            max_failures=1))
    wall = round(time.time() - started, 1)
    m = out["metrics"]
    assert m["restored"] == 1  # the worker group restarted once, from epoch 1's checkpoint
    assert (m["epoch"], m["step"]) == (clean["metrics"]["epoch"], clean["metrics"]["step"])
    last = os.path.join(out["run_path"], f"checkpoint_epoch{EPOCHS:04d}")
    with open(os.path.join(last, "train_state.json"), encoding="utf-8") as f:
        history = json.load(f)["history"]
    assert [h["step"] for h in history] == [STEPS_PER_EPOCH, EPOCHS * STEPS_PER_EPOCH]
    diff = _max_diff(_final_weights(out), clean["weights"])
    chaos_report({"suite": "train", "strategy": strategy,
             "fault": f"worker exception at step {FAIL_AT} of {EPOCHS * STEPS_PER_EPOCH}",
             "recovery": "FailureConfig(max_failures=1): restart from the last epoch checkpoint",
             "steps_expected": clean["metrics"]["step"], "steps_done": m["step"], "restores": m["restored"],
             "max_abs_weight_diff": diff, "wall_s": wall, "clean_wall_s": clean["wall_s"]})
    assert diff <= ATOL, f"resumed weights differ from the uninterrupted run's by {diff}"
    assert m["val_loss"] == pytest.approx(clean["metrics"]["val_loss"], abs=1e-5)


def test_whole_job_rerun_with_the_same_name_resumes_and_matches(clean, tiny_models, corpus_and_variants, tmp_path,
                                                                chaos_report, strategy):
    cfg = _config(tiny_models, corpus_and_variants, tmp_path, "rerun", strategy, fail_at_step=FAIL_AT, max_failures=0)
    started = time.time()
    with pytest.raises(Exception, match=f"fail_at_step={FAIL_AT}"):  # no restarts left: the job itself fails
        run_train(cfg)
    assert os.path.isdir(os.path.join(str(tmp_path / "runs"), "rerun", "checkpoint_epoch0001"))
    out = run_train(cfg)  # the same command again: resumes from the run folder (the hook fires only once)
    wall = round(time.time() - started, 1)
    m = out["metrics"]
    assert m["restored"] == 1 and (m["epoch"], m["step"]) == (EPOCHS, EPOCHS * STEPS_PER_EPOCH)
    assert m["initial_val_r1"] == clean["metrics"]["initial_val_r1"]  # carried over, not re-measured from scratch
    diff = _max_diff(_final_weights(out), clean["weights"])
    chaos_report({"suite": "train", "strategy": strategy,
             "fault": f"whole job fails at step {FAIL_AT} of {EPOCHS * STEPS_PER_EPOCH}",
             "recovery": "rerun of the same config and run name", "steps_expected": clean["metrics"]["step"],
             "steps_done": m["step"], "restores": m["restored"], "max_abs_weight_diff": diff, "wall_s": wall,
             "clean_wall_s": clean["wall_s"]})
    assert diff <= ATOL, f"rerun weights differ from the uninterrupted run's by {diff}"
