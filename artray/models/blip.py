"""BLIP: image-text retrieval (method B's BLIP baseline) and captioning (method A).

``BlipForImageTextRetrieval`` has no ``get_*_features``; its ITC embeddings are the
normalised ``vision_proj`` of the vision CLS token and ``text_proj`` of the unimodal
text encoder's CLS token. The helpers below compute exactly those, so retrieval can
embed images and texts separately (an index of images, a stream of queries) and
still reproduce the model's own ITC score ``image_embeds @ text_embeds.T``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from artray.models.pretrained import PretrainedBundle, load_pretrained
from artray.storage import StorageOptions


# Both loaders return a `PretrainedBundle` (model in eval mode, processor, device, dtype).
BlipRetrievalBundle = BlipCaptionerBundle = PretrainedBundle


def load_blip_retrieval(
    name_or_path: str,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    storage_options: StorageOptions | None = None,
) -> PretrainedBundle:
    """Load a BLIP ITM/ITC checkpoint (e.g. ``Salesforce/blip-itm-base-coco``)."""
    return load_pretrained("BlipForImageTextRetrieval", "BlipProcessor", name_or_path, device, dtype, storage_options)


def load_blip_captioner(
    name_or_path: str,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    storage_options: StorageOptions | None = None,
) -> PretrainedBundle:
    """Load a BLIP captioner (e.g. ``Salesforce/blip-image-captioning-base``)."""
    return load_pretrained("BlipForConditionalGeneration", "BlipProcessor", name_or_path, device, dtype,
                           storage_options)


@torch.no_grad()
def blip_image_embeds(bundle: BlipRetrievalBundle, pixel_values: torch.Tensor) -> torch.Tensor:
    """L2-normalised ITC image embeddings, shape (batch, projection dim)."""
    model = bundle.model
    pixel_values = pixel_values.to(bundle.device, bundle.dtype)
    vision = model.vision_model(pixel_values=pixel_values).last_hidden_state
    return F.normalize(model.vision_proj(vision[:, 0, :]).float(), dim=-1)


@torch.no_grad()
def blip_text_embeds(
    bundle: BlipRetrievalBundle, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """L2-normalised ITC text embeddings (unimodal text encoder CLS), shape (batch, projection dim)."""
    model = bundle.model
    input_ids = input_ids.to(bundle.device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(bundle.device)
    text = model.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return F.normalize(model.text_proj(text[:, 0, :]).float(), dim=-1)


@torch.no_grad()
def blip_itm_logits(
    bundle: BlipRetrievalBundle, pixel_values: torch.Tensor, input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None, image_index: list[int] | None = None,
) -> torch.Tensor:
    """ITM head logits (no match, match) of text i with image ``image_index[i]`` (default: image i),
    shape (texts, 2). Each image crosses the vision tower once, however many texts it is paired with.

    The ITM head attends from the text to the image tokens, so it judges a pair jointly; BLIP
    re-ranks its ITC top-k this way (k=256 in its retrieval protocol)."""
    model = bundle.model
    vision = model.vision_model(pixel_values=pixel_values.to(bundle.device, bundle.dtype)).last_hidden_state
    if image_index is not None:
        vision = vision[torch.as_tensor(image_index, dtype=torch.long, device=vision.device)]
    text = model.text_encoder(
        input_ids=input_ids.to(bundle.device),
        attention_mask=None if attention_mask is None else attention_mask.to(bundle.device),
        encoder_hidden_states=vision,
        encoder_attention_mask=torch.ones(vision.shape[:-1], dtype=torch.long, device=vision.device),
    ).last_hidden_state
    return model.itm_head(text[:, 0, :]).float()
