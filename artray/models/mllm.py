"""Multimodal LLMs (LLaVA and kin) that write artwork captions, as in method (B).

``AutoModelForImageTextToText`` picks the class from the checkpoint's config (LLaVA
checkpoints get ``LlavaForConditionalGeneration``); ``AutoProcessor`` brings the image
processor, the tokenizer with its ``<image>`` token, and the chat template that turns
a conversation into the prompt the model was tuned on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from artray.models.pretrained import from_pretrained
from artray.models.resolve import resolve_model_path
from artray.storage import StorageOptions

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin


@dataclass
class MLLMBundle:
    """An image-text-to-text model in eval mode and its processor (chat template included)."""

    model: PreTrainedModel
    processor: ProcessorMixin
    device: str
    dtype: torch.dtype

    def prompt(self, text: str) -> str:
        """The chat-templated prompt for one user turn holding an image and `text`."""
        conversation: list[dict[str, Any]] = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
        ]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True)


def load_mllm(
    name_or_path: str,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    storage_options: StorageOptions | None = None,
) -> MLLMBundle:
    """Load an MLLM (e.g. ``llava-hf/llava-1.5-7b-hf`` or the tiny LLaVA) and its processor.

    The tokenizer pads on the left, as batched generation with a decoder-only model needs.
    Raises ValueError if the checkpoint ships no chat template (prompts would be wrong).
    """
    from transformers import (
        AutoConfig,
        AutoModelForImageTextToText,
        AutoProcessor,
        LlavaForConditionalGeneration,
    )

    path = resolve_model_path(name_or_path, storage_options)
    dtype = dtype or torch.float32
    config = AutoConfig.from_pretrained(path)
    model_cls = LlavaForConditionalGeneration if config.model_type == "llava" else AutoModelForImageTextToText
    model = from_pretrained(model_cls, path, dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(path)
    if not getattr(processor, "chat_template", None):
        raise ValueError(f"{name_or_path} has no chat template; cannot build MLLM prompts for it")
    processor.tokenizer.padding_side = "left"
    return MLLMBundle(model=model, processor=processor, device=device, dtype=dtype)
