"""Stable Diffusion img2img, the generator of method (A)'s synthetic artwork variations.

Method (A) ran AUTOMATIC1111's "Euler a" sampler; the diffusers equivalent is
``EulerAncestralDiscreteScheduler`` built from the checkpoint's own scheduler config.
The safety checker is not loaded: artworks (nudes in paintings) trip it constantly and
the augmentation must be deterministic per seed, not silently blacked out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from artray.models.resolve import resolve_model_path
from artray.models.weights import pretrained_kwargs
from artray.storage import StorageOptions

if TYPE_CHECKING:
    from diffusers import StableDiffusionImg2ImgPipeline


@dataclass
class Img2ImgBundle:
    """A ready img2img pipeline (eval mode, on `device`)."""

    pipeline: StableDiffusionImg2ImgPipeline
    device: str
    dtype: torch.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Image sides must be multiples of this (8 for SD 1.x)."""
        return int(self.pipeline.vae_scale_factor)


def load_img2img(
    name_or_path: str,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    storage_options: StorageOptions | None = None,
) -> Img2ImgBundle:
    """Load an SD 1.x checkpoint (hub id, local folder or s3:// folder) as an img2img pipeline.

    Same call for ``runwayml/stable-diffusion-v1-5`` and the tiny test checkpoint;
    weights load as safetensors (pickle only with ``ARTRAY_ALLOW_PICKLE=1``, ``artray.models.weights``).
    """
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        StableDiffusionImg2ImgPipeline,
    )

    path = resolve_model_path(name_or_path, storage_options)
    dtype = dtype or torch.float32
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        path,
        safety_checker=None,
        requires_safety_checker=False,
        dtype=dtype,
        **pretrained_kwargs(path),
    )
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return Img2ImgBundle(pipeline=pipe, device=device, dtype=dtype)
