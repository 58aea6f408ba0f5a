"""Tiny 77-token CLIP in the OpenAI state-dict layout (family ``open_clip``; Long-CLIP's starting point)."""

from __future__ import annotations

from pathlib import Path

from artray.models.weights import save_state_dict
from artray.scaffold.tiny.common import IMAGE, params


def build(out: Path, need) -> tuple[str, str, int]:
    """An OpenAI-layout CLIP state dict with 77 text positions (family open_clip)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    # open_clip's OpenAI builder infers heads as width // 64, so widths are multiples of 64.
    model = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=8, image_size=IMAGE),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
        quick_gelu=True,
    )
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_state_dict(sd, out / "clip-tiny.safetensors")
    return "clip-tiny.safetensors", "CLIP (OpenAI state-dict layout, 77 positions)", params(model)
