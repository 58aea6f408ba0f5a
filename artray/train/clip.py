"""Plain CLIP family (``clip``): a 77-token CLIP fine-tuned as it is — no stretching — with symmetric InfoNCE.

Two checkpoint layouts train, picked by the base checkpoint (``TrainConfig.model``):

- an OpenAI / open_clip-layout state dict file (``.safetensors``, ``.pt``…): Long-CLIP's hooks
  (:class:`artray.train.longclip.LongClipTrainer`) with every text position trainable (``keep = 0``); the
  export is ``clip.safetensors`` in the OpenAI layout (open_clip, ``longclip``/``open_clip``/``clip``
  families all load it);
- a transformers ``CLIPModel`` (folder, hub id or s3://): :class:`HFClipTrainer`; the export is a
  ``save_pretrained`` folder.

Both write ``artray_export.json`` beside the weights: text length and image preprocessing as trained.
"""

from __future__ import annotations

import torch
from torch import nn

from artray.encoders import pooled
from artray.families.clip import is_weights_file
from artray.models.longclip import merge_longclip_state_dict, preprocessing_of
from artray.models.pretrained import (
    export_record,
    from_pretrained,
    image_processor_kwargs,
    image_processor_record,
)
from artray.models.resolve import resolve_model_path
from artray.train.config import TrainConfig
from artray.train.export import save_pretrained_export
from artray.train.longclip import LongClipTrainer, base_checkpoint
from artray.train.losses import symmetric_infonce

CLIP_TEXT_LENGTH = 77  # CLIP's text positions; a transformers CLIP is tokenised at most this long by default


class OpenAIClipTrainer(LongClipTrainer):
    """A CLIP state dict trained as it is: Long-CLIP's module with no frozen positions, exported in the
    OpenAI layout (``positional_embedding`` with its own length, no ``positional_embedding_res``)."""

    keep = 0
    export_name = "clip.safetensors"

    @classmethod
    def starting_point(cls, cfg: TrainConfig) -> tuple[dict[str, torch.Tensor], dict]:
        sd, record = base_checkpoint(cfg)
        if "positional_embedding_res" in sd:
            raise ValueError(f"{cfg.model} is a Long-CLIP checkpoint (248 positions + positional_embedding_res): "
                             "train it with family: longclip")
        positions = int(sd["positional_embedding"].shape[0])
        if cfg.context_length not in (None, positions):
            raise ValueError(f"{cfg.model} has {positions} text positions; context_length {cfg.context_length} "
                             "does not fit an OpenAI-layout CLIP: leave context_length unset")
        # Every position reads the trainable copy (keep = 0): plain CLIP fine-tuning.
        return {**sd, "positional_embedding_res": sd["positional_embedding"]}, preprocessing_of(record, sd, cfg.model)

    @classmethod
    def published_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return merge_longclip_state_dict(state_dict, keep=0)  # positional_embedding = the trained copy


class HFClipModule(nn.Module):
    """A transformers CLIPModel with its own copy of ``logit_scale`` (ZeRO-3 gathers it in this forward)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.logit_scale = nn.Parameter(model.logit_scale.detach().clone())
        model.logit_scale.requires_grad_(False)

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None):
        out = {"logit_scale": self.logit_scale}
        if pixel_values is not None:
            out["img"] = pooled(self.model.get_image_features(pixel_values=pixel_values))
        if input_ids is not None:
            out["txt"] = pooled(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))
        return out


class HFClipTrainer:
    """A transformers CLIPModel: symmetric InfoNCE over all workers' batches; texts cut at `context_length`
    (default 77, at most the text tower's positions); images through its processor as its record says."""

    def __init__(self, cfg: TrainConfig):
        from transformers import CLIPProcessor

        self.cfg = cfg
        self.path = resolve_model_path(cfg.model, cfg.storage_options())
        self.processor = CLIPProcessor.from_pretrained(self.path)
        self.preprocessing = self.base_preprocessing(cfg, self.processor)
        self._image_kwargs = image_processor_kwargs(self.preprocessing, cfg.model)
        self.context_length = cfg.context_length or CLIP_TEXT_LENGTH

    @staticmethod
    def base_preprocessing(cfg: TrainConfig, processor) -> dict:
        """The base checkpoint's recorded image preprocessing (an artray export), else its processor's own."""
        path = resolve_model_path(cfg.model, cfg.storage_options())
        return export_record(path).get("image_preprocessing") or image_processor_record(processor.image_processor)

    def build_module(self) -> nn.Module:
        from transformers import CLIPModel

        model = from_pretrained(CLIPModel, self.path)
        limit = model.config.text_config.max_position_embeddings
        if self.context_length > limit:
            raise ValueError(f"context_length {self.context_length} exceeds the text tower's {limit} positions")
        if self.cfg.freeze_vision:
            for p in list(model.vision_model.parameters()) + list(model.visual_projection.parameters()):
                p.requires_grad_(False)
        if self.cfg.grad_checkpointing:
            model.gradient_checkpointing_enable()
        return HFClipModule(model)

    def pixels(self, images) -> torch.Tensor:
        return self.processor.image_processor([im.convert("RGB") for im in images], return_tensors="pt",
                                              **self._image_kwargs)["pixel_values"]

    def tokens(self, texts: list[str]) -> dict:
        enc = self.processor.tokenizer(texts, padding=True, truncation=True, max_length=self.context_length,
                                       return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def train_batch(self, images, captions: list[str]) -> dict:
        return {"pixel_values": self.pixels(images), **self.tokens(captions)}

    def image_batch(self, images) -> dict:
        return {"pixel_values": self.pixels(images)}

    def text_batch(self, texts: list[str]) -> dict:
        return self.tokens(texts)

    def loss(self, out: dict, gather: bool = True) -> torch.Tensor:
        return symmetric_infonce(out["img"], out["txt"], out["logit_scale"], self.cfg.label_smoothing,
                                 gather and self.cfg.gather_features)

    @classmethod
    def export(cls, cfg: TrainConfig, state_dict: dict[str, torch.Tensor], out_dir: str) -> str:
        """A ``save_pretrained`` folder (fp32 weights + processor + record) at `out_dir`; returns it."""
        from transformers import CLIPModel, CLIPProcessor

        processor = CLIPProcessor.from_pretrained(resolve_model_path(cfg.model, cfg.storage_options()))
        return save_pretrained_export(cfg, CLIPModel, CLIPProcessor, state_dict, out_dir,
                                      extra={"logit_scale": state_dict["logit_scale"].reshape(())},
                                      text_length=cfg.context_length or CLIP_TEXT_LENGTH,
                                      image_preprocessing=cls.base_preprocessing(cfg, processor))


def layout_trainer(cfg: TrainConfig) -> type:
    """The hooks class for the base checkpoint's layout: a weights file → OpenAI layout, else transformers."""
    return OpenAIClipTrainer if is_weights_file(cfg.model) else HFClipTrainer


class ClipTrainer:
    """The ``clip`` family's training hooks: those of the base checkpoint's layout (:func:`layout_trainer`)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.hooks = layout_trainer(cfg)(cfg)
        self.context_length = self.hooks.context_length

    def build_module(self) -> nn.Module:
        return self.hooks.build_module()

    def train_batch(self, images, captions: list[str]) -> dict:
        return self.hooks.train_batch(images, captions)

    def image_batch(self, images) -> dict:
        return self.hooks.image_batch(images)

    def text_batch(self, texts: list[str]) -> dict:
        return self.hooks.text_batch(texts)

    def loss(self, out: dict, gather: bool = True) -> torch.Tensor:
        return self.hooks.loss(out, gather)

    @classmethod
    def export(cls, cfg: TrainConfig, state_dict: dict[str, torch.Tensor], out_dir: str) -> str:
        return layout_trainer(cfg).export(cfg, state_dict, out_dir)
