"""GIT (GenerativeImage2Text), method (A)'s default captioner (``microsoft/git-base``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from artray.models.resolve import resolve_model_path
from artray.models.weights import pretrained_kwargs
from artray.storage import StorageOptions

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin


@dataclass
class GitCaptionerBundle:
    """A GIT captioning model in eval mode and its processor."""

    model: PreTrainedModel
    processor: ProcessorMixin
    device: str
    dtype: torch.dtype


def load_git_captioner(
    name_or_path: str,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    storage_options: StorageOptions | None = None,
) -> GitCaptionerBundle:
    """Load a GIT checkpoint (``AutoModelForCausalLM`` → ``GitForCausalLM``) and its processor."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    path = resolve_model_path(name_or_path, storage_options)
    dtype = dtype or torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **pretrained_kwargs(path)).to(device).eval()
    processor = AutoProcessor.from_pretrained(path)
    return GitCaptionerBundle(model=model, processor=processor, device=device, dtype=dtype)
