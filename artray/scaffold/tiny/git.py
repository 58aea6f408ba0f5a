"""Tiny GIT captioner (family ``git-captioner``)."""

from __future__ import annotations

from pathlib import Path

from artray.scaffold.tiny import tokenizers as tt
from artray.scaffold.tiny.common import VISION, clip_image_processor, params


def build(out: Path, need) -> tuple[str, str, int]:
    """GitForCausalLM with a GIT processor (family git-captioner)."""
    from transformers import GitConfig, GitForCausalLM, GitProcessor

    tok = tt.bert_tokenizer()
    config = GitConfig(
        vision_config=dict(VISION), vocab_size=len(tok), hidden_size=32, intermediate_size=37,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
    )
    model = GitForCausalLM(config)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    GitProcessor(image_processor=clip_image_processor(), tokenizer=tok).save_pretrained(out)
    tt.write_wordpiece_vocab(tok, out)
    return "", "GitForCausalLM", params(model)
