"""Tiny transformers ``CLIPModel`` (family ``hf_clip``), saved like a hub checkpoint with its processor."""

from __future__ import annotations

from pathlib import Path

from artray.scaffold.tiny import tokenizers as tt
from artray.scaffold.tiny.common import IMAGE, VISION, clip_image_processor, params


def build(out: Path, need) -> tuple[str, str, int]:
    """CLIPModel + CLIPProcessor (the CLIP BPE tokenizer, a 32-pixel image processor)."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tok = tt.clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(VISION, image_size=IMAGE), projection_dim=16)
    model = CLIPModel(config)
    model.save_pretrained(out, safe_serialization=True)
    CLIPProcessor(image_processor=clip_image_processor(), tokenizer=tok).save_pretrained(out)
    return "", "CLIPModel", params(model)
