"""GIT (GenerativeImage2Text), method (A)'s default captioner (``microsoft/git-base``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from artray.models.pretrained import PretrainedBundle, load_pretrained
from artray.storage import StorageOptions

if TYPE_CHECKING:
    import torch

GitCaptionerBundle = PretrainedBundle  # a GIT captioning model in eval mode and its processor


def load_git_captioner(
    name_or_path: str,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    storage_options: StorageOptions | None = None,
) -> PretrainedBundle:
    """Load a GIT checkpoint (``AutoModelForCausalLM`` → ``GitForCausalLM``) and its processor."""
    return load_pretrained("AutoModelForCausalLM", "AutoProcessor", name_or_path, device, dtype, storage_options)
