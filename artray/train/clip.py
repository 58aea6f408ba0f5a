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

from artray.families.clip import is_weights_file
from artray.models.longclip import merge_longclip_state_dict, preprocessing_of
from artray.train.config import TrainConfig
from artray.train.dual_tower import DualTowerTrainer
from artray.train.longclip import LongClipTrainer, base_checkpoint

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


class HFClipTrainer(DualTowerTrainer):
    """A transformers CLIPModel: symmetric InfoNCE over all workers' batches; texts cut at `context_length`
    (default 77, at most the text tower's positions); images through its processor as its record says."""

    model_class, processor_class = "CLIPModel", "CLIPProcessor"
    default_context_length = CLIP_TEXT_LENGTH


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
