"""BLIP captioner (``BlipForConditionalGeneration``). Loader: :mod:`artray.models.blip`; training (LM loss,
beam-search CIDEr validation): :mod:`artray.train.captioner`; its recipe is the ``captioner`` preset with
``family: blip-captioner``."""

from __future__ import annotations

from pathlib import Path

from artray.families.base import config_json, not_an_encoder


class BlipCaptionerFamily:
    name = "blip-captioner"
    kind = "captioner"
    description = "BLIP captioner (BlipForConditionalGeneration), LM loss, CIDEr validation"
    presets: dict[str, dict] = {}  # preset `captioner` (git-captioner's) with family: blip-captioner
    context_length = None
    rerankers: frozenset[str] = frozenset()
    trainer = "artray.train.captioner:BlipCaptionerTrainer"
    tiny = {"blip-captioner": "artray.scaffold.tiny.blip:build_captioner"}

    def load(self, checkpoint, device="cpu", dtype=None, storage_options=None):
        from artray.models.blip import load_blip_captioner

        return load_blip_captioner(checkpoint, device, dtype, storage_options)

    def load_encoder(self, checkpoint, device="cpu", dtype=None, storage_options=None):
        raise not_an_encoder(self)

    def sniff(self, path: Path) -> bool:
        cfg = config_json(path) or {}
        return cfg.get("model_type") == "blip" and "BlipForConditionalGeneration" in (cfg.get("architectures") or [])


BLIP_CAPTIONER = BlipCaptionerFamily()
