"""Plain CLIP (``clip``): a 77-token CLIP fine-tuned as it is — the ICCV 2023 diffusion-augmentation recipe.

Two layouts: an OpenAI / open_clip-layout state dict file (loaded by :mod:`artray.models.longclip`, never
stretched) or a transformers ``CLIPModel`` (hub id, folder, s3://). Training: :mod:`artray.train.clip`.
"""

from __future__ import annotations

from pathlib import Path

from artray.encoders import Encoder
from artray.families.base import STATE_DICT_SUFFIXES, config_json, is_state_dict_file
from artray.families.hf_clip import HFClipEncoder

PRESETS: dict[str, dict] = {
    # Cioni et al., ICCV 2023 workshop (ciodar/cultural-heritage-diffaug), REFERENCE.md §1 (A): its only
    # published training config (configs/artpedia.yaml, artcap.yaml): AdamW 5e-5, wd 0, cosine with 500 warm-up
    # steps, batch 8, 10 epochs, 32-bit, seed 42, no gradient clipping; alpha 0.5 = the paper's share of
    # samples whose image is swapped for a diffusion variant. The repo has no CLIP code: loss (InfoNCE) and
    # selection (val R@1) are artray's (README "Presets").
    "cioni2023": {"loss": "infonce", "label_smoothing": 0.0, "optimizer": "adamw", "lr": 5e-5,
                  "weight_decay": 0.0, "betas": (0.9, 0.999), "eps": 1e-8, "schedule": "cosine",
                  "warmup_steps": 500, "epochs": 10, "batch_size": 8, "precision": "fp32", "grad_clip": None,
                  "alpha": 0.5, "seed": 42, "select_metric": "val_r1"},
}


def is_weights_file(checkpoint: str) -> bool:
    """An OpenAI-layout state dict file (local or s3://), not a transformers checkpoint."""
    return checkpoint.rstrip("/").endswith(STATE_DICT_SUFFIXES)


class ClipEncoder(HFClipEncoder):
    family = "clip"  # a transformers CLIPModel under the clip family


class ClipFamily:
    name = "clip"
    kind = "retrieval"
    description = ("plain CLIP, 77 text tokens, trained as it is (an OpenAI/open_clip-layout state dict file "
                   "or a transformers CLIPModel)")
    presets = PRESETS
    context_length = 77
    rerankers = frozenset({"laclip"})
    trainer = "artray.train.clip:ClipTrainer"
    tiny: dict[str, str] = {}  # the open_clip family's clip-77 and hf_clip's hf-clip are its tiny checkpoints

    def check_train_config(self, cfg) -> None:
        """Optional hook TrainConfig calls: plain CLIP trains with InfoNCE and keeps its positions."""
        if cfg.loss != "infonce":
            raise ValueError(f"family clip trains with loss: infonce (not {cfg.loss}); Long-CLIP's PCM loss is "
                             "family: longclip")
        if cfg.stretch:
            raise ValueError("family clip keeps the checkpoint's 77 text positions: stretch: true is for "
                             "family: longclip (Long-CLIP's knowledge-preserved stretching to 248)")

    def load(self, checkpoint, device="cpu", dtype=None, storage_options=None):
        if is_weights_file(checkpoint):
            from artray.models.longclip import load_longclip

            return load_longclip(checkpoint, device, dtype, storage_options)  # as it is: no stretching
        from artray.models.pretrained import load_pretrained

        return load_pretrained("CLIPModel", "CLIPProcessor", checkpoint, device, dtype, storage_options)

    def load_encoder(self, checkpoint, device="cpu", dtype=None, storage_options=None) -> Encoder:
        bundle = self.load(checkpoint, device, dtype, storage_options)
        if is_weights_file(checkpoint):
            from artray.families.open_clip import OpenClipEncoder

            return OpenClipEncoder(self.name, checkpoint, bundle)
        return ClipEncoder(checkpoint, bundle)

    def sniff(self, path: Path) -> bool:
        return is_state_dict_file(path) or (config_json(path) or {}).get("model_type") == "clip"


CLIP = ClipFamily()
