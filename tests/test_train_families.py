"""Chinese-CLIP, BLIP retrieval and the captioners on 2 Ray Train workers (CPU, DeepSpeed ZeRO-2) with
their tiny checkpoints and the sample corpora: every run completes with validation metrics, the
captioners' losses fall, and each export loads through artray.models."""

from __future__ import annotations

import json
import os

import pytest
import torch

from artray.train.config import TrainConfig
from artray.train.run import run_train

COMMON = {"warmup_steps": 0, "timeout_s": 180, "max_failures": 0, "keep_checkpoints": 1}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    from artray.models.tiny import make_tiny

    return make_tiny(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> dict[str, str]:
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.corpora.sample import make_samples

    root = tmp_path_factory.mktemp("train-families")
    src = make_samples(str(root / "samples"), n=60)
    import_corpus(ImportConfig(format="cnclip", src=src["culti"], dest=str(root / "culti")))
    import_corpus(ImportConfig(format="artpedia", src=src["artpedia"], dest=str(root / "artpedia")))
    return {"culti": str(root / "culti"), "artpedia": str(root / "artpedia")}


def _history(out) -> list[dict]:
    """Epoch metrics up to the best checkpoint (its first entry is always epoch 1)."""
    with open(os.path.join(out["best_checkpoint"], "train_state.json"), encoding="utf-8") as f:
        return json.load(f)["history"]


@pytest.mark.slow
def test_cnclip_long_context_trains_and_exports(ray_local, tiny, corpora, tmp_path):
    from artray.models.cnclip import cnclip_text_embeds, load_cnclip

    cfg = TrainConfig(**COMMON, preset="cnclip", model=tiny["cnclip"], corpus=corpora["culti"],
                      output=str(tmp_path / "runs"), context_length=96, lr=3e-4, epochs=5, batch_size=8)
    out = run_train(cfg)
    final = out["metrics"]
    # The tiny Chinese-CLIP does not yet learn this corpus reliably in 5 short epochs (it drifts towards
    # constant embeddings at lr ≥ 3e-4): this test covers the mechanics, not a recall gain.
    assert final["epoch"] == 5 and 0 <= final["val_r1"] <= 1 and final["text_truncated_frac"] == 0.0
    bundle = load_cnclip(out["export"])
    ids = bundle.processor.tokenizer(["窠内一飞鸟" * 20], truncation=True, max_length=96, return_tensors="pt")
    assert ids["input_ids"].shape[1] == 96
    assert cnclip_text_embeds(bundle, ids["input_ids"], ids["attention_mask"]).shape == (1, 16)


@pytest.mark.slow
def test_blip_retrieval_itc_itm_reports_truncation(ray_local, tiny, corpora, tmp_path):
    from artray.models.blip import load_blip_retrieval

    cfg = TrainConfig(**COMMON, preset="blip", model=tiny["blip-retrieval"], corpus=corpora["artpedia"],
                      output=str(tmp_path / "runs"), lr=1e-4, epochs=5, batch_size=8, max_length=16)
    out = run_train(cfg)
    final = out["metrics"]
    assert 0 < final["text_truncated_frac"] <= 1  # Artpedia paragraphs are longer than 16 tokens
    assert final["epoch"] == 5 and 0 <= final["val_r1"] <= 1  # mechanics only: see the Chinese-CLIP note
    assert load_blip_retrieval(out["export"]).model.itm_head.out_features == 2


@pytest.mark.slow
@pytest.mark.parametrize("family", ["git-captioner", "blip-captioner"])
def test_captioner_lm_loss_falls_and_selects_by_cider(ray_local, tiny, corpora, tmp_path, family):
    from artray.models.blip import load_blip_captioner
    from artray.models.git import load_git_captioner

    cfg = TrainConfig(**COMMON, preset="captioner", family=family, model=tiny[family], corpus=corpora["artpedia"],
                      output=str(tmp_path / "runs"), lr=1e-3, epochs=2, batch_size=8, num_beams=2,
                      max_new_tokens=8)
    out = run_train(cfg)
    assert out["metrics"]["val_loss"] < out["metrics"]["initial_val_loss"]
    assert _history(out)[0]["train_loss"] > out["metrics"]["train_loss"]  # first epoch vs last
    assert "cider" in out["best_metrics"] and out["best_metrics"]["cider"] >= 0
    load = load_git_captioner if family == "git-captioner" else load_blip_captioner
    bundle = load(out["export"])
    pixel = torch.zeros(1, 3, 32, 32)
    assert bundle.model.generate(pixel_values=pixel, max_new_tokens=3).shape[0] == 1
