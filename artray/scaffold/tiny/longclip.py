"""Tiny Long-CLIP (family ``longclip``): the tiny clip-77 stretched by knowledge-preserved stretching."""

from __future__ import annotations

from pathlib import Path

from artray.models.weights import load_state_dict, save_state_dict


def build(out: Path, need) -> tuple[str, str, int]:
    """The tiny clip-77 checkpoint stretched to 248 positions, in ``longclip-L.pt``'s layout (family longclip)."""
    from artray.models.longclip import longclip_state_dict_from_clip

    clip_file = Path(need("clip-77"))
    sd = longclip_state_dict_from_clip(load_state_dict(clip_file))
    save_state_dict(sd, out / "longclip-tiny.safetensors")
    n = sum(v.numel() for k, v in sd.items() if k != "positional_embedding_res")
    return ("longclip-tiny.safetensors",
            "Long-CLIP (OpenAI state-dict layout, 248 positions + positional_embedding_res)", n)
