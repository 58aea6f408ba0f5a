"""What the tiny checkpoints share: tower sizes, the OpenAI image statistics, a CLIP image processor."""

from __future__ import annotations

import torch

IMAGE = 32  # image side of the tiny vision towers (real: 224-384)
VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
              image_size=IMAGE, patch_size=8)
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def params(*modules: torch.nn.Module) -> int:
    """Parameter count of `modules`."""
    return int(sum(p.numel() for m in modules for p in m.parameters()))


def clip_image_processor(size: int = IMAGE):
    """A transformers CLIP image processor at `size` with OpenAI's mean/std."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=OPENAI_MEAN, image_std=OPENAI_STD)
