"""Tiny Chinese-CLIP (family ``cnclip``)."""

from __future__ import annotations

from pathlib import Path

from artray.scaffold.tiny import tokenizers as tt
from artray.scaffold.tiny.common import IMAGE, OPENAI_MEAN, OPENAI_STD, VISION, params


def build(out: Path, need) -> tuple[str, str, int]:
    """ChineseCLIPModel with a vocab.txt-only tokenizer, as the OFA-Sys checkpoints ship."""
    from transformers import (
        ChineseCLIPConfig,
        ChineseCLIPImageProcessor,
        ChineseCLIPModel,
        ChineseCLIPProcessor,
    )

    tok = tt.chinese_bert_tokenizer()
    config = ChineseCLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=512, type_vocab_size=2,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(VISION, projection_dim=16), projection_dim=16,
    )
    model = ChineseCLIPModel(config)
    model.save_pretrained(out, safe_serialization=True)
    image = ChineseCLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE},
                                      image_mean=OPENAI_MEAN, image_std=OPENAI_STD)
    ChineseCLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(out)
    # OFA-Sys/chinese-clip-* ship vocab.txt only (no tokenizer.json): load through that path too.
    tt.write_wordpiece_vocab(tok, out)
    (out / "tokenizer.json").unlink()
    return "", "ChineseCLIPModel", params(model)
