"""Training hooks shared by the transformers dual-tower families (CLIPModel, ChineseCLIPModel).

Both are a vision and a text tower scored with symmetric InfoNCE over all workers' batches; they
differ only in their model and processor classes, their default text length and whether the
tokenizer's ``token_type_ids`` go to the text tower. The module owns a copy of ``logit_scale`` (so
ZeRO-3 gathers it in the module's own forward); export writes it back and saves a
``save_pretrained`` folder with ``artray_export.json`` (text length and image preprocessing as trained).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from artray.encoders import pooled
from artray.models.pretrained import TrainedImagePreprocessor, from_pretrained
from artray.models.resolve import resolve_model_path
from artray.train.config import TrainConfig
from artray.train.export import save_pretrained_export
from artray.train.losses import symmetric_infonce


def _transformers(name: str):
    return getattr(importlib.import_module("transformers"), name)


class DualTowerModule(nn.Module):
    """A transformers dual-tower model with its own copy of ``logit_scale``; forward gives the pooled
    image and/or text embeddings and the scale."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.logit_scale = nn.Parameter(model.logit_scale.detach().clone())
        model.logit_scale.requires_grad_(False)

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, token_type_ids=None):
        out = {"logit_scale": self.logit_scale}
        if pixel_values is not None:
            out["img"] = pooled(self.model.get_image_features(pixel_values=pixel_values))
        if input_ids is not None:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            out["txt"] = pooled(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask,
                                                             **extra))
        return out


class DualTowerTrainer:
    """Symmetric InfoNCE for a transformers dual-tower model; texts cut at `context_length` (the cut is
    counted and logged per epoch); images through its processor as the base checkpoint's record says."""

    model_class: str  # transformers class names, imported when used
    processor_class: str
    default_context_length: int
    token_keys: tuple[str, ...] = ("input_ids", "attention_mask")

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.path = resolve_model_path(cfg.model, cfg.storage_options())
        self.processor = _transformers(self.processor_class).from_pretrained(self.path)
        self._prepare = TrainedImagePreprocessor(self.path, self.processor.image_processor, cfg.model)
        self.context_length = cfg.context_length or self.default_context_length
        self.cut = [0, 0]  # texts seen, texts truncated

    def build_module(self) -> nn.Module:
        model = from_pretrained(_transformers(self.model_class), self.path)
        limit = model.config.text_config.max_position_embeddings
        if self.context_length > limit:
            raise ValueError(f"context_length {self.context_length} exceeds the text tower's {limit} positions")
        if self.cfg.freeze_vision:
            for p in list(model.vision_model.parameters()) + list(model.visual_projection.parameters()):
                p.requires_grad_(False)
        if self.cfg.grad_checkpointing:
            model.gradient_checkpointing_enable()
        return DualTowerModule(model)

    def pixels(self, images) -> torch.Tensor:
        return self._prepare([im.convert("RGB") for im in images])

    def tokens(self, texts: list[str]) -> dict:
        tok = self.processor.tokenizer
        enc = tok(texts, padding=True, truncation=True, max_length=self.context_length, return_tensors="pt")
        full = tok(texts, truncation=False)["input_ids"]
        self.cut[0] += len(texts)
        self.cut[1] += sum(len(ids) > self.context_length for ids in full)
        return {k: enc[k] for k in self.token_keys if k in enc}

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
        """A ``save_pretrained`` folder (fp32 weights + processor + record) at `out_dir`; returns it."""
        model_cls, processor_cls = _transformers(cls.model_class), _transformers(cls.processor_class)
        return save_pretrained_export(cfg, model_cls, processor_cls, state_dict, out_dir,
                                      extra={"logit_scale": state_dict["logit_scale"].reshape(())},
                                      text_length=cfg.context_length or cls.default_context_length)
