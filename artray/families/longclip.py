"""Long-CLIP (248-token CLIP in open_clip): a ``longclip-L.pt``-layout state dict file; a 77-token
OpenAI-layout one loads too. Loader: :mod:`artray.models.longclip`; training: :mod:`artray.train.longclip`."""

from __future__ import annotations

from pathlib import Path

from artray.encoders import Encoder
from artray.families.base import is_state_dict_file

PRESETS: dict[str, dict] = {
    # Long-CLIP's own fine-tuning (beichenzbc/Long-CLIP train.md): PCM loss, AdamW 1e-6, wd 1e-2,
    # 200 warm-up iterations then cosine, 6 epochs, 128 per GPU, logit scale reset to ln(100), no clipping.
    "longclip": {"loss": "longclip", "label_smoothing": 0.1, "pca_dim": 32, "optimizer": "adamw",
                 "lr": 1e-6, "weight_decay": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "schedule": "cosine",
                 "warmup_steps": 200, "epochs": 6, "batch_size": 128, "reset_logit_scale": True, "grad_clip": None,
                 "select_metric": "val_r1"},
    # SIGIR 2025 (jcgohr/artwork-caption-gen finetuner.py): plain symmetric InfoNCE, AdaBelief 5e-7,
    # eps 1e-16, betas (0.9, 0.995), wd 1e-3, one-cycle (10 % warm-up, linear), early stop on rising val loss.
    "infonce": {"loss": "infonce", "label_smoothing": 0.0, "optimizer": "adabelief", "lr": 5e-7,
                "weight_decay": 1e-3, "betas": (0.9, 0.995), "eps": 1e-16, "schedule": "onecycle", "pct_start": 0.1,
                "epochs": 6, "batch_size": 40, "early_stop": True, "grad_clip": None, "select_metric": "val_r1"},
}


class LongClipFamily:
    name = "longclip"
    kind = "retrieval"
    description = "Long-CLIP, 248 text tokens (open_clip; a longclip-L state dict file)"
    presets = PRESETS
    context_length = 248
    rerankers = frozenset({"laclip"})
    trainer = "artray.train.longclip:LongClipTrainer"
    tiny = {"longclip": "artray.scaffold.tiny.longclip:build"}

    def load(self, checkpoint, device="cpu", dtype=None, storage_options=None):
        from artray.models.longclip import load_longclip

        return load_longclip(checkpoint, device, dtype, storage_options)

    def load_encoder(self, checkpoint, device="cpu", dtype=None, storage_options=None) -> Encoder:
        from artray.families.open_clip import OpenClipEncoder

        return OpenClipEncoder(self.name, checkpoint, self.load(checkpoint, device, dtype, storage_options))

    def sniff(self, path: Path) -> bool:
        return is_state_dict_file(path)


LONGCLIP = LongClipFamily()
