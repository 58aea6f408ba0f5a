"""Chinese-CLIP family: contrastive fine-tuning of transformers' `ChineseCLIPModel`.

The text context may exceed Chinese-CLIP's 52 (the tower has 512 positions), so long
CulTi descriptions need not be cut. Optional frozen vision tower and gradient
checkpointing, as in the Chinese-CLIP scripts. The module owns a copy of ``logit_scale``
(so ZeRO-3 gathers it with the module's own forward); export writes it back and saves a
``save_pretrained`` folder that :func:`artray.models.cnclip.load_cnclip` loads.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from artray.families.cnclip import CNCLIP
from artray.models.cnclip import _embedding
from artray.models.pretrained import from_pretrained
from artray.models.resolve import resolve_model_path
from artray.train.config import TrainConfig
from artray.train.export import save_pretrained_export
from artray.train.losses import symmetric_infonce

log = logging.getLogger("artray.train")


class CNClipModule(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.logit_scale = nn.Parameter(model.logit_scale.detach().clone())
        model.logit_scale.requires_grad_(False)

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, token_type_ids=None):
        out = {"logit_scale": self.logit_scale}
        if pixel_values is not None:
            out["img"] = _embedding(self.model.get_image_features(pixel_values=pixel_values))
        if input_ids is not None:
            out["txt"] = _embedding(self.model.get_text_features(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids))
        return out


class CNClipTrainer:
    """Chinese-CLIP's training hooks: symmetric InfoNCE over all workers' batches."""

    def __init__(self, cfg: TrainConfig):
        from transformers import ChineseCLIPProcessor

        self.cfg = cfg
        self.path = resolve_model_path(cfg.model, cfg.storage_options())
        self.processor = ChineseCLIPProcessor.from_pretrained(self.path)
        self.context_length = cfg.context_length or CNCLIP.context_length  # 52, Chinese-CLIP's own
        self.cut = [0, 0]  # texts seen, texts truncated

    def build_module(self) -> nn.Module:
        from transformers import ChineseCLIPModel

        model = from_pretrained(ChineseCLIPModel, self.path)
        limit = model.config.text_config.max_position_embeddings
        if self.context_length > limit:
            raise ValueError(f"context_length {self.context_length} exceeds the text tower's {limit} positions")
        if self.cfg.freeze_vision:
            for p in list(model.vision_model.parameters()) + list(model.visual_projection.parameters()):
                p.requires_grad_(False)
        if self.cfg.grad_checkpointing:
            model.gradient_checkpointing_enable()
        return CNClipModule(model)

    def pixels(self, images) -> torch.Tensor:
        return self.processor.image_processor([im.convert("RGB") for im in images],
                                              return_tensors="pt")["pixel_values"]

    def tokens(self, texts: list[str]) -> dict:
        tok = self.processor.tokenizer
        enc = tok(texts, padding=True, truncation=True, max_length=self.context_length, return_tensors="pt")
        full = tok(texts, truncation=False)["input_ids"]
        self.cut[0] += len(texts)
        self.cut[1] += sum(len(ids) > self.context_length for ids in full)
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}

    def train_batch(self, images, captions: list[str]) -> dict:
        return {"pixel_values": self.pixels(images), **self.tokens(captions)}

    def image_batch(self, images) -> dict:
        return {"pixel_values": self.pixels(images)}

    def text_batch(self, texts: list[str]) -> dict:
        return self.tokens(texts)

    def loss(self, out: dict, gather: bool = True) -> torch.Tensor:
        return symmetric_infonce(out["img"], out["txt"], out["logit_scale"], self.cfg.label_smoothing,
                                 gather and self.cfg.gather_features)

    def truncation(self) -> dict:
        return {"texts": self.cut[0], "truncated": self.cut[1], "context_length": self.context_length}

    @classmethod
    def export(cls, cfg: TrainConfig, state_dict: dict[str, torch.Tensor], out_dir: str) -> str:
        """A ``save_pretrained`` folder (fp32 weights + processor) at `out_dir`; returns it."""
        from transformers import ChineseCLIPModel, ChineseCLIPProcessor

        return save_pretrained_export(cfg, ChineseCLIPModel, ChineseCLIPProcessor, state_dict, out_dir,
                                      extra={"logit_scale": state_dict["logit_scale"].reshape(())},
                                      text_length=cfg.context_length or CNCLIP.context_length)
