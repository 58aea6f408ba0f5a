"""Chinese-CLIP (transformers ``ChineseCLIPModel``), the backbone of CulTi retrieval. Loader:
:mod:`artray.models.cnclip`; training: :mod:`artray.train.cnclip`."""

from __future__ import annotations

from pathlib import Path

from artray.encoders import Encoder, PretrainedEncoder
from artray.families.base import config_json

PRESETS: dict[str, dict] = {
    # Chinese-CLIP fine-tuning scripts (OFA-Sys run_scripts/*_finetune_*.sh): lr 5e-5, wd 0.001,
    # warmup 100, 3 epochs, batch 128 per GPU, contrastive; context 52 there, longer allowed here.
    "cnclip": {"loss": "infonce", "optimizer": "adamw", "lr": 5e-5, "weight_decay": 1e-3,
               "schedule": "cosine", "warmup_steps": 100, "epochs": 3, "batch_size": 128, "context_length": 52,
               "grad_clip": None, "select_metric": "val_r1"},
}


class CNClipEncoder(PretrainedEncoder):
    family = "cnclip"
    default_text_length = 52  # a checkpoint artray did not train: Chinese-CLIP's fine-tuning context

    def _images(self, images):
        from artray.models.cnclip import cnclip_image_embeds

        return cnclip_image_embeds(self.bundle, self._pixels(images))

    def _texts(self, texts):
        from artray.models.cnclip import cnclip_text_embeds

        tok = self._tokens(texts)
        return cnclip_text_embeds(self.bundle, tok.input_ids, tok.attention_mask, tok.get("token_type_ids"))


class CNClipFamily:
    name = "cnclip"
    kind = "retrieval"
    description = "Chinese-CLIP (transformers; text context up to 512)"
    presets = PRESETS
    context_length = CNClipEncoder.default_text_length  # Chinese-CLIP's fine-tuning context
    rerankers = frozenset({"laclip"})
    trainer = "artray.train.cnclip:CNClipTrainer"
    tiny = {"cnclip": "artray.scaffold.tiny.cnclip:build"}

    def check_train_config(self, cfg) -> None:
        """Optional hook TrainConfig calls: the text tower has 512 positions."""
        if cfg.context_length and cfg.context_length > 512:
            raise ValueError("cnclip context_length is at most 512 (the text tower's positions)")

    def load(self, checkpoint, device="cpu", dtype=None, storage_options=None):
        from artray.models.cnclip import load_cnclip

        return load_cnclip(checkpoint, device, dtype, storage_options)

    def load_encoder(self, checkpoint, device="cpu", dtype=None, storage_options=None) -> Encoder:
        return CNClipEncoder(checkpoint, self.load(checkpoint, device, dtype, storage_options))

    def sniff(self, path: Path) -> bool:
        return (config_json(path) or {}).get("model_type") == "chinese_clip"


CNCLIP = CNClipFamily()
