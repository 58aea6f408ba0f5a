"""The augment quality filter: CLIP image–image cosine similarity between a variant and its source.

Any CLIP image tower can score, named the way users already know it:

* a ``.safetensors`` (or, opted in to pickle, ``.pt``/``.pth``) file (local or ``s3://``): an
  OpenAI-layout CLIP state dict (OpenAI's ``ViT-L-14.pt``, ``longclip-L.pt`` converted with
  ``artray models to-safetensors``, artray's tiny ``clip-77``), loaded with open_clip;
* ``open_clip:<architecture>[:<pretrained tag or weights file>]`` or ``hf-hub:<repo>``: open_clip;
* anything else: a transformers ``CLIPModel`` (hub id such as ``openai/clip-vit-large-patch14``,
  local folder or ``s3://`` folder).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from artray.models.resolve import resolve_model_path
from artray.models.weights import check_weights_path
from artray.storage import StorageOptions, is_s3


def _open_clip(name: str, device: str, options: StorageOptions | None) -> tuple[Callable, Callable]:
    import open_clip

    if name.startswith("hf-hub:"):
        model, _, preprocess = open_clip.create_model_and_transforms(name)
    else:
        _, arch, *rest = name.split(":", 2)
        pretrained = rest[0] if rest else None
        if pretrained and (is_s3(pretrained) or pretrained.startswith("file://")):
            pretrained = resolve_model_path(pretrained, options)
        if pretrained:
            check_weights_path(pretrained)  # a local weights file must be safetensors; tags pass
        model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained)
    model = model.to(device).eval()
    return model.encode_image, preprocess


def _openai_state_dict(path: str, device: str, options: StorageOptions | None) -> tuple[Callable, Callable]:
    from artray.models.longclip import (
        load_longclip,  # builds any OpenAI-layout CLIP; 77 positions stay 77
    )

    bundle = load_longclip(path, device=device, storage_options=options)
    return bundle.model.encode_image, bundle.preprocess


def _transformers(name: str, device: str, options: StorageOptions | None) -> tuple[Callable, Callable]:
    from transformers import CLIPImageProcessor, CLIPModel

    from artray.models.pretrained import load_pretrained

    bundle = load_pretrained(CLIPModel, CLIPImageProcessor, name, device, storage_options=options)
    model, processor = bundle.model, bundle.processor

    def encode(pixel_values: torch.Tensor) -> torch.Tensor:
        out = model.get_image_features(pixel_values=pixel_values)
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers 5 returns an output object

    return encode, lambda im: processor(images=im, return_tensors="pt")["pixel_values"][0]


class ClipImageScorer:
    """Loads one CLIP image tower (fp32) and scores pairs of images by cosine similarity."""

    def __init__(self, name: str, device: str = "cpu", options: StorageOptions | None = None):
        self.name, self.device = name, device
        if name.startswith(("open_clip:", "hf-hub:")):
            self.encode, self.preprocess = _open_clip(name, device, options)
        elif name.rstrip("/").lower().endswith((".pt", ".pth", ".safetensors")):
            self.encode, self.preprocess = _openai_state_dict(name, device, options)
        else:
            self.encode, self.preprocess = _transformers(name, device, options)

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        return torch.nn.functional.normalize(self.encode(pixels).float(), dim=-1)

    def similarity(self, images: list[Image.Image], sources: list[Image.Image], source_of: list[int]) -> list[float]:
        """Cosine similarity of each image to its source, ``sources[source_of[i]]`` (each source embedded once)."""
        return (self.embed(images) * self.embed(sources)[source_of]).sum(dim=-1).tolist()
