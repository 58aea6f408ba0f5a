"""Long-CLIP family: the trainable module, collation, the `longclip` (PCM) and `infonce` objectives, and
export in the published ``longclip-L.pt`` layout (as safetensors).

The module holds the OpenAI-layout parameters itself (``visual``, ``token_embedding``,
``transformer``, ``ln_final``, ``text_projection``, ``logit_scale``) plus Long-CLIP's two
positional tensors: ``positional_embedding`` (a frozen buffer) and the trainable
``positional_embedding_res``; text positions [0, 20) read the frozen one, [20, 248) the
trainable one, exactly as Long-CLIP's ``encode_text``. Its ``state_dict()`` therefore *is*
the ``longclip-L.pt`` layout. Everything runs through ``forward`` so ZeRO-3 gathers the
direct parameters.

The plain ``clip`` family reuses these hooks with no frozen positions (``keep = 0``, see
:mod:`artray.train.clip`). Every export writes ``artray_export.json`` beside its weights file:
the text length and the image preprocessing it was trained with (the base checkpoint's own record
when it is an artray export, else OpenAI's recipe at its image size).
"""

from __future__ import annotations

import math
import os
from typing import ClassVar

import torch
from torch import nn

from artray.models.longclip import (
    KEEP,
    _unwrap,
    image_transform,
    longclip_state_dict_from_clip,
    merge_longclip_state_dict,
    preprocessing_of,
)
from artray.models.pretrained import file_export_record
from artray.models.resolve import resolve_model_path
from artray.models.weights import load_state_dict, save_state_dict
from artray.train.config import TrainConfig
from artray.train.export import write_export_record
from artray.train.losses import first_sentence, pca_reconstruct, symmetric_infonce

EXPORT_NAME = "longclip.safetensors"  # longclip-L.pt's keys, as safetensors


class LongClipModule(nn.Module):
    """open_clip CLIP parts + Long-CLIP's frozen/trainable positional split; forward → features."""

    def __init__(self, clip, pe: torch.Tensor, pe_res: torch.Tensor, keep: int = KEEP):
        super().__init__()
        self.visual, self.token_embedding = clip.visual, clip.token_embedding
        self.transformer, self.ln_final = clip.transformer, clip.ln_final
        self.text_projection, self.logit_scale = clip.text_projection, clip.logit_scale
        self.text_pool_type = clip.text_pool_type
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.register_buffer("positional_embedding", pe.detach().clone())
        self.positional_embedding_res = nn.Parameter(pe_res.detach().clone())
        mask = torch.zeros(pe.shape[0], 1)
        mask[keep:] = 1.0
        self.register_buffer("res_mask", mask, persistent=False)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool

        pe = self.positional_embedding * (1 - self.res_mask) + self.positional_embedding_res * self.res_mask
        x = self.token_embedding(text) + pe.to(self.token_embedding.weight.dtype)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        x = text_global_pool(x, text, self.text_pool_type)
        return x @ self.text_projection

    def forward(self, pixel_values=None, input_ids=None, short_ids=None):
        out = {"logit_scale": self.logit_scale}
        if pixel_values is not None:
            out["img"] = self.visual(pixel_values)
        if input_ids is not None:
            out["txt"] = self.encode_text(input_ids)
        if short_ids is not None:
            out["short"] = self.encode_text(short_ids)
        return out


def base_checkpoint(cfg: TrainConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """(OpenAI-layout state dict, its export record or {}) of the run's base checkpoint `cfg.model`."""
    return _unwrap(load_state_dict(resolve_model_path(cfg.model, cfg.storage_options()))), base_record(cfg)


def base_record(cfg: TrainConfig) -> dict:
    """The export record of the run's base checkpoint ({} unless it is an artray export)."""
    return file_export_record(cfg.model, resolve_model_path(cfg.model, cfg.storage_options()), cfg.storage_options())


class LongClipTrainer:
    """Long-CLIP's training hooks: 248-token open_clip CLIP; `longclip` (long + PCM short) or `infonce` loss."""

    keep: ClassVar[int] = KEEP  # leading text positions that read the frozen positional embedding
    export_name: ClassVar[str] = EXPORT_NAME

    def __init__(self, cfg: TrainConfig):
        from open_clip.tokenizer import SimpleTokenizer

        self.cfg = cfg
        self.sd, self.preprocessing = self.starting_point(cfg)
        self.context_length = int(self.sd["positional_embedding"].shape[0])
        self.tokenizer = SimpleTokenizer(context_length=self.context_length)
        self.transform = image_transform(self.preprocessing)

    @classmethod
    def starting_point(cls, cfg: TrainConfig) -> tuple[dict[str, torch.Tensor], dict]:
        """(the ``longclip-L.pt``-layout state dict training starts from, the image preprocessing it trains
        with); a 77-token CLIP is refused unless ``stretch: true``."""
        sd, record = base_checkpoint(cfg)
        spec = preprocessing_of(record, sd, cfg.model)
        if "positional_embedding_res" in sd:
            return sd, spec
        if not cfg.stretch:
            raise ValueError(f"{cfg.model} is a {sd['positional_embedding'].shape[0]}-token CLIP, not Long-CLIP: "
                             "set stretch: true to stretch it to 248 positions (knowledge-preserved stretching), "
                             "or train it as it is with family: clip")
        return longclip_state_dict_from_clip(sd), spec

    @classmethod
    def published_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The trained module's weights in the family's published layout (``longclip-L.pt``'s keys)."""
        return state_dict

    def build_module(self) -> nn.Module:
        from open_clip.model import build_model_from_openai_state_dict

        # cast_dtype=None: open_clip's plain LayerNorm. The default (fp16) picks LayerNormFp32, which casts
        # activations to fp32 and then fails against DeepSpeed's bf16/fp16 weights (CPU and CUDA alike).
        clip = build_model_from_openai_state_dict(merge_longclip_state_dict(self.sd), quick_gelu=True,
                                                  cast_dtype=None).float()
        module = LongClipModule(clip, self.sd["positional_embedding"].float(),
                                self.sd["positional_embedding_res"].float(), keep=self.keep)
        if self.cfg.reset_logit_scale:
            with torch.no_grad():
                module.logit_scale.fill_(math.log(100.0))
        return module

    def pixels(self, images) -> torch.Tensor:
        return torch.stack([self.transform(im.convert("RGB")) for im in images])

    def tokens(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def train_batch(self, images, captions: list[str]) -> dict:
        batch = {"pixel_values": self.pixels(images), "input_ids": self.tokens(captions)}
        if self.cfg.loss == "longclip":
            batch["short_ids"] = self.tokens([first_sentence(c) for c in captions])
        return batch

    def image_batch(self, images) -> dict:
        return {"pixel_values": self.pixels(images)}

    def text_batch(self, texts: list[str]) -> dict:
        return {"input_ids": self.tokens(texts)}

    def loss(self, out: dict, gather: bool = True) -> torch.Tensor:
        cfg = self.cfg
        gather = gather and cfg.gather_features
        long = symmetric_infonce(out["img"], out["txt"], out["logit_scale"], cfg.label_smoothing, gather)
        if cfg.loss != "longclip" or "short" not in out:
            return long
        img = torch.nn.functional.normalize(out["img"].float(), dim=-1)
        short_img = pca_reconstruct(img, cfg.pca_dim)
        return long + symmetric_infonce(short_img, out["short"], out["logit_scale"], cfg.label_smoothing, gather)

    @classmethod
    def export(cls, cfg: TrainConfig, state_dict: dict[str, torch.Tensor], out_dir: str) -> str:
        """Write the weights file (fp32, 0-dim ``logit_scale``) and ``artray_export.json`` beside it (text length,
        image preprocessing); return the file's path."""
        sd = {k: v.float().contiguous() for k, v in state_dict.items() if k not in ("attn_mask", "res_mask")}
        sd["logit_scale"] = sd["logit_scale"].reshape(())
        sd = cls.published_state_dict(sd)
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, cls.export_name)
        save_state_dict(sd, path)
        preprocessing = preprocessing_of(base_record(cfg), sd, cfg.model)  # what __init__ trained with
        write_export_record(cfg, out_dir, int(sd["positional_embedding"].shape[0]), preprocessing,
                            weights=cls.export_name)
        return path
