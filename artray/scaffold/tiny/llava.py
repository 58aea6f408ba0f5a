"""Tiny LLaVA (the caption stage's MLLM)."""

from __future__ import annotations

from pathlib import Path

from artray.scaffold.tiny import tokenizers as tt
from artray.scaffold.tiny.common import VISION, clip_image_processor, params


def build(out: Path, need) -> tuple[str, str, int]:
    """A tiny LLaVA with its processor and chat template."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = tt.llava_tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION, projection_dim=32, hidden_act="quick_gelu"),
        text_config=LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        ),
        image_token_index=image_id, projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-2, pad_token_id=tok.pad_token_id,
    )
    model = LlavaForConditionalGeneration(config)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    processor = LlavaProcessor(
        image_processor=clip_image_processor(), tokenizer=tok, patch_size=VISION["patch_size"],
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=tt.LLAVA_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return "", "LlavaForConditionalGeneration", params(model)
