"""The one way artray opens a transformers checkpoint: resolve → ``from_pretrained`` → ``to(device).eval()``.

Every family's loader (BLIP retrieval and captioning, Chinese-CLIP, GIT, transformers CLIP) and
every trainer goes through these two functions, so s3:// resolution, the safetensors-only rule of
:mod:`artray.models.weights` and the dtype handling are written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from artray.models.resolve import resolve_model_path
from artray.models.weights import pretrained_kwargs
from artray.storage import StorageOptions

if TYPE_CHECKING:
    import torch


@dataclass
class PretrainedBundle:
    """A transformers model in eval mode, its processor, and where/how it runs."""

    model: Any
    processor: Any
    device: str
    dtype: torch.dtype
    path: str = ""  # the local folder it was loaded from (an s3:// checkpoint's cache)


def from_pretrained(model_cls, path: str, dtype: torch.dtype | None = None):
    """``model_cls.from_pretrained(path)`` in `dtype` (default fp32), safetensors only unless opted in."""
    import torch

    return model_cls.from_pretrained(path, dtype=dtype or torch.float32, **pretrained_kwargs(path))


def load_pretrained(model_cls, processor_cls, name_or_path: str, device: str = "cpu",
                    dtype: torch.dtype | None = None,
                    storage_options: StorageOptions | None = None) -> PretrainedBundle:
    """`name_or_path` (hub id, local folder or s3:// URI) as an eval-mode `model_cls` on `device` with its
    `processor_cls` processor. `model_cls`/`processor_cls` are transformers classes or their names."""
    import torch
    import transformers

    if isinstance(model_cls, str):
        model_cls = getattr(transformers, model_cls)
    if isinstance(processor_cls, str):
        processor_cls = getattr(transformers, processor_cls)
    path = resolve_model_path(name_or_path, storage_options)
    dtype = dtype or torch.float32
    model = from_pretrained(model_cls, path, dtype).to(device).eval()
    return PretrainedBundle(model=model, processor=processor_cls.from_pretrained(path), device=device, dtype=dtype,
                            path=str(path))


# What an artray export records about how it was trained, beside its weights (`save_pretrained_export`).
EXPORT_RECORD = "artray_export.json"


def export_record(path: str) -> dict:
    """The training record of an artray export at local folder `path` ({} for any other checkpoint)."""
    import json
    import os

    try:
        with open(os.path.join(path, EXPORT_RECORD), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def text_length(bundle: PretrainedBundle, default: int | None) -> int:
    """Text tokens an encoder keeps: what the checkpoint was trained with (its export record), else the
    family's published length (`default`; None: every position), never more than the text tower's positions."""
    positions = bundle.model.config.text_config.max_position_embeddings
    wanted = export_record(bundle.path).get("text_length") or default or positions
    return min(int(wanted), positions)
