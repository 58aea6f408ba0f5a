"""Long-CLIP (248-token CLIP, Zhang et al. ECCV 2024) expressed in open_clip.

A ``longclip-L.pt`` file is a plain OpenAI-CLIP-layout state dict whose
``positional_embedding`` has 248 rows and which carries one extra key,
``positional_embedding_res``: Long-CLIP adds ``pe`` on positions [0, 20) (frozen) and
``pe_res`` on [20, 248) (trained). open_clip has a single positional embedding, so the
two are merged as ``pe[:20] ++ pe_res[20:]`` — the exact sum Long-CLIP's ``encode_text``
computes — and the model is built with open_clip's OpenAI builder (QuickGELU).

A 77-token CLIP state dict can be turned into the Long-CLIP starting point with
knowledge-preserved stretching (:func:`stretch_positional_embedding`); open_clip's own
``resize_text_pos_embed`` interpolates every position and must not be used for this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from artray.models.resolve import resolve_model_path
from artray.models.weights import load_state_dict
from artray.storage import StorageOptions

if TYPE_CHECKING:
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

KEEP = 20  # positions copied verbatim by Long-CLIP's stretching
RATIO = 4  # interpolation ratio: 77 → 4·77 − 3·20 = 248


def stretch_positional_embedding(pe: torch.Tensor, keep: int = KEEP, ratio: int = RATIO) -> torch.Tensor:
    """Knowledge-preserved stretching of a (L, D) text positional embedding, as Long-CLIP does it.

    Positions ``[0, keep)`` are copied; for ``i = keep .. L-2`` and ``j = 0 .. ratio-1``,
    ``new[ratio·(i−keep)+keep+j] = ((ratio−j)·pe[i] + j·pe[i+1]) / ratio``; the last
    ``ratio`` slots extrapolate, ``new[ratio·(L−1−keep)+keep+j] = pe[L−1] + j·(pe[L−1]−pe[L−2]) / ratio``.
    The result has ``ratio·L − (ratio−1)·keep`` rows (248 for L=77) and the input dtype.
    """
    length = pe.shape[0]
    if length < keep + 2:
        raise ValueError(f"positional embedding of length {length} is too short to stretch with keep={keep}")
    src = pe.detach().to(torch.promote_types(pe.dtype, torch.float32))  # fp16/bf16 → fp32 maths
    j = torch.arange(ratio, dtype=src.dtype, device=pe.device)
    cur, nxt = src[keep:length - 1], src[keep + 1:length]  # (L−1−keep, D) each
    mid = ((ratio - j)[None, :, None] * cur[:, None, :] + j[None, :, None] * nxt[:, None, :]) / ratio
    last = src[length - 1] + j[:, None] * (src[length - 1] - src[length - 2]) / ratio
    out = torch.cat([src[:keep], mid.reshape(-1, src.shape[1]), last], dim=0)
    return out.to(pe.dtype)


def longclip_state_dict_from_clip(openai_clip_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``longclip-*.pt``-layout state dict from a 77-token OpenAI-layout CLIP state dict.

    ``positional_embedding`` is stretched to 248 rows and ``positional_embedding_res`` is
    a copy of it, which is what Long-CLIP's ``load_from_clip`` starts fine-tuning from.
    """
    sd = dict(openai_clip_sd)
    if "positional_embedding_res" in sd:
        raise ValueError("state dict is already in Long-CLIP layout (has positional_embedding_res)")
    stretched = stretch_positional_embedding(sd["positional_embedding"])
    sd["positional_embedding"] = stretched
    sd["positional_embedding_res"] = stretched.clone()
    return sd


def merge_longclip_state_dict(sd: dict[str, torch.Tensor], keep: int = KEEP) -> dict[str, torch.Tensor]:
    """Fold ``positional_embedding_res`` into ``positional_embedding`` (``pe[:keep] ++ pe_res[keep:]``)."""
    sd = dict(sd)
    res = sd.pop("positional_embedding_res", None)
    if res is not None:
        pe = sd["positional_embedding"]
        sd["positional_embedding"] = torch.cat([pe[:keep], res[keep:].to(pe.dtype)], dim=0)
    return sd


@dataclass
class LongClipBundle:
    """An open_clip CLIP in eval mode with its image transform and a tokenizer at its context length."""

    model: CLIP
    preprocess: Callable
    tokenizer: SimpleTokenizer
    context_length: int
    device: str
    dtype: torch.dtype


def _unwrap(obj: object) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or "positional_embedding" not in {k.removeprefix("module.") for k in obj}:
        raise ValueError("not an OpenAI-CLIP-layout state dict (no positional_embedding key)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_longclip(
    path_or_uri: str,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    storage_options: StorageOptions | None = None,
    stretch: bool = False,
) -> LongClipBundle:
    """Load a Long-CLIP state dict file (local path or s3://) into open_clip.

    The file is safetensors (``longclip-L.pt``'s keys, e.g. converted with ``artray models
    to-safetensors``); the published pickle ``.pt`` loads only with ``ARTRAY_ALLOW_PICKLE=1``
    (``artray.models.weights``). The context length comes from the checkpoint (248 for
    Long-CLIP). A plain 77-token OpenAI-layout CLIP file loads as is, or stretched to 248
    with ``stretch=True``.
    """
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.model import (
        build_model_from_openai_state_dict,
        convert_weights_to_lp,
    )
    from open_clip.tokenizer import SimpleTokenizer

    path = resolve_model_path(path_or_uri, storage_options)
    sd = _unwrap(load_state_dict(path))
    if "positional_embedding_res" in sd:
        sd = merge_longclip_state_dict(sd)
    elif stretch:
        sd["positional_embedding"] = stretch_positional_embedding(sd["positional_embedding"])
    context_length = int(sd["positional_embedding"].shape[0])

    dtype = dtype or torch.float32
    low_precision = dtype in (torch.float16, torch.bfloat16)
    model = build_model_from_openai_state_dict(sd, quick_gelu=True, cast_dtype=dtype if low_precision else None)
    model = model.float()  # the builder casts to fp16 the OpenAI way; undo, then cast as asked
    if low_precision:
        convert_weights_to_lp(model, dtype=dtype)
    model = model.to(device).eval()
    model.visual.image_mean = OPENAI_DATASET_MEAN
    model.visual.image_std = OPENAI_DATASET_STD
    preprocess = open_clip.image_transform(
        model.visual.image_size, is_train=False, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD
    )
    tokenizer = SimpleTokenizer(context_length=context_length)
    return LongClipBundle(
        model=model, preprocess=preprocess, tokenizer=tokenizer,
        context_length=context_length, device=device, dtype=dtype,
    )
