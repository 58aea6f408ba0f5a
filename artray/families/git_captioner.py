"""GIT captioner (``microsoft/git-base``; ``GitForCausalLM``), the ICCV work's default captioner.
Loader: :mod:`artray.models.git`; training (LM loss, beam-search CIDEr validation): :mod:`artray.train.captioner`."""

from __future__ import annotations

from pathlib import Path

from artray.families.base import config_json, not_an_encoder

PRESETS: dict[str, dict] = {
    # ICCV 2023 workshop (ciodar/cultural-heritage-diffaug): LM loss, AdamW 5e-5, wd 0, cosine with
    # 500 warm-up steps, batch 8, 10 epochs, AutoAugment on train images, beams 4 with
    # length_penalty 0.6, keep the best CIDEr.
    # Set family: blip-captioner for BLIP.
    "captioner": {"loss": "lm", "optimizer": "adamw", "lr": 5e-5, "weight_decay": 0.0,
                  "schedule": "cosine", "warmup_steps": 500, "epochs": 10, "batch_size": 8, "auto_augment": True,
                  "num_beams": 4, "length_penalty": 0.6, "max_new_tokens": 100, "grad_clip": None,
                  "select_metric": "cider"},
}


class GitCaptionerFamily:
    name = "git-captioner"
    kind = "captioner"
    description = "GIT captioner (GitForCausalLM), LM loss, CIDEr validation"
    presets = PRESETS
    context_length = None
    rerankers: frozenset[str] = frozenset()
    trainer = "artray.train.captioner:GitCaptionerTrainer"
    tiny = {"git-captioner": "artray.scaffold.tiny.git:build"}

    def load(self, checkpoint, device="cpu", dtype=None, storage_options=None):
        from artray.models.git import load_git_captioner

        return load_git_captioner(checkpoint, device, dtype, storage_options)

    def load_encoder(self, checkpoint, device="cpu", dtype=None, storage_options=None):
        raise not_an_encoder(self)

    def sniff(self, path: Path) -> bool:
        return (config_json(path) or {}).get("model_type") == "git"


GIT_CAPTIONER = GitCaptionerFamily()
