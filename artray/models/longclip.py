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

Images are prepared by open_clip's ``image_transform`` from an *image preprocessing record*
(:func:`default_preprocessing`: the OpenAI recipe at the checkpoint's image size); an artray export
records the one it was trained with beside its weights, and :func:`load_longclip` uses that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from artray.models.pretrained import EXPORT_RECORD, file_export_record
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


def default_preprocessing(sd: dict[str, torch.Tensor]) -> dict:
    """The OpenAI CLIP image preprocessing at the image size of the state dict `sd` (grid × patch): shortest side
    resized (bicubic) and centre-cropped, OpenAI mean/std; the form an export records (``library: open_clip``)."""
    import math

    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    size = round(math.sqrt(sd["visual.positional_embedding"].shape[0] - 1)) * sd["visual.conv1.weight"].shape[-1]
    return {"library": "open_clip", "image_size": int(size), "resize_mode": "shortest", "interpolation": "bicubic",
            "mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD)}


def preprocessing_of(record: dict, sd: dict[str, torch.Tensor], where: str) -> dict:
    """The image preprocessing of a checkpoint: its export `record`'s if it has one, else the default."""
    spec = record.get("image_preprocessing")
    if not spec:
        return default_preprocessing(sd)
    if spec.get("library") != "open_clip":
        raise ValueError(f"{where}: image_preprocessing is for {spec.get('library')!r}, not open_clip: the record "
                         "does not belong to this checkpoint; fix or remove it")
    return spec


def image_transform(spec: dict) -> Callable:
    """PIL image → normalised tensor as `spec` (an open_clip image preprocessing record) says, by open_clip."""
    import open_clip

    size = spec["image_size"]
    return open_clip.image_transform(tuple(size) if isinstance(size, list) else size, is_train=False,
                                     mean=tuple(spec["mean"]), std=tuple(spec["std"]),
                                     resize_mode=spec.get("resize_mode", "shortest"),
                                     interpolation=spec.get("interpolation", "bicubic"))


@dataclass
class LongClipBundle:
    """An open_clip CLIP in eval mode with its image transform and a tokenizer at its context length."""

    model: CLIP
    preprocess: Callable
    tokenizer: SimpleTokenizer
    context_length: int
    device: str
    dtype: torch.dtype
    preprocessing: dict | None = None  # the image preprocessing record `preprocess` follows


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
    with ``stretch=True``. Images are prepared as the ``artray_export.json`` beside an artray
    export says it was trained (``image_preprocessing``), else by OpenAI's recipe.
    """
    from open_clip.model import (
        build_model_from_openai_state_dict,
        convert_weights_to_lp,
    )
    from open_clip.tokenizer import SimpleTokenizer

    path = resolve_model_path(path_or_uri, storage_options)
    record = file_export_record(path_or_uri, path, storage_options)
    sd = _unwrap(load_state_dict(path))
    if "positional_embedding_res" in sd:
        sd = merge_longclip_state_dict(sd)
    elif stretch:
        sd["positional_embedding"] = stretch_positional_embedding(sd["positional_embedding"])
    context_length = int(sd["positional_embedding"].shape[0])
    if record.get("text_length") not in (None, context_length) and not stretch:
        raise ValueError(f"{path_or_uri}: its {EXPORT_RECORD} says text_length {record['text_length']}, but "
                         f"the weights have {context_length} positions: the record belongs to other weights")
    spec = preprocessing_of(record, sd, path_or_uri)

    dtype = dtype or torch.float32
    low_precision = dtype in (torch.float16, torch.bfloat16)
    model = build_model_from_openai_state_dict(sd, quick_gelu=True, cast_dtype=dtype if low_precision else None)
    model = model.float()  # the builder casts to fp16 the OpenAI way; undo, then cast as asked
    if low_precision:
        convert_weights_to_lp(model, dtype=dtype)
    model = model.to(device).eval()
    model.visual.image_mean, model.visual.image_std = tuple(spec["mean"]), tuple(spec["std"])
    tokenizer = SimpleTokenizer(context_length=context_length)
    return LongClipBundle(
        model=model, preprocess=image_transform(spec), tokenizer=tokenizer,
        context_length=context_length, device=device, dtype=dtype, preprocessing=spec,
    )
