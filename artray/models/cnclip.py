"""Chinese-CLIP (transformers port), the backbone of method (C)'s CulTi retrieval.

In transformers 5, ``get_image_features`` / ``get_text_features`` return an output
object; the projected embedding is its ``.pooler_output``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from artray.models.pretrained import PretrainedBundle, load_pretrained
from artray.storage import StorageOptions

CNClipBundle = PretrainedBundle  # a Chinese-CLIP model in eval mode and its processor


def load_cnclip(
    name_or_path: str,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    storage_options: StorageOptions | None = None,
) -> PretrainedBundle:
    """Load a Chinese-CLIP checkpoint (e.g. ``OFA-Sys/chinese-clip-vit-base-patch16``)."""
    return load_pretrained("ChineseCLIPModel", "ChineseCLIPProcessor", name_or_path, device, dtype, storage_options)


def _embedding(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def cnclip_image_embeds(bundle: CNClipBundle, pixel_values: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings, shape (batch, projection dim)."""
    out = bundle.model.get_image_features(pixel_values=pixel_values.to(bundle.device, bundle.dtype))
    return F.normalize(_embedding(out).float(), dim=-1)


@torch.no_grad()
def cnclip_text_embeds(
    bundle: CNClipBundle,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """L2-normalised text embeddings, shape (batch, projection dim)."""
    kwargs = {"input_ids": input_ids.to(bundle.device)}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask.to(bundle.device)
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids.to(bundle.device)
    out = bundle.model.get_text_features(**kwargs)
    return F.normalize(_embedding(out).float(), dim=-1)
