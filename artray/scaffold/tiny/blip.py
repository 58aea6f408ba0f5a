"""Tiny BLIP checkpoints: retrieval (family ``blip``) and captioning (``blip-captioner``)."""

from __future__ import annotations

from pathlib import Path

from artray.scaffold.tiny import tokenizers as tt
from artray.scaffold.tiny.common import IMAGE, OPENAI_MEAN, OPENAI_STD, VISION, params


def blip_config(tok):
    from transformers import BlipConfig

    text = dict(vocab_size=len(tok), hidden_size=32, encoder_hidden_size=VISION["hidden_size"],
                intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.sep_token_id,
                sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, initializer_range=0.1)
    # BlipVisionConfig's default initializer_range is 1e-10 (it assumes pretrained weights): a random
    # BLIP then maps every image to the same feature and its contrastive loss sits at chance. At 0.1
    # (both towers) the tiny model's features differ per image/text and fine-tuning can move them.
    return BlipConfig(text_config=text, vision_config=dict(VISION, initializer_range=0.1), projection_dim=16,
                      image_text_hidden_size=16, initializer_range=0.1)


def blip_processor(tok):
    from transformers import BlipImageProcessor, BlipProcessor

    image = BlipImageProcessor(size={"height": IMAGE, "width": IMAGE}, image_mean=OPENAI_MEAN, image_std=OPENAI_STD)
    return BlipProcessor(image_processor=image, tokenizer=tok)


def build_retrieval(out: Path, need) -> tuple[str, str, int]:
    """BlipForImageTextRetrieval (family blip)."""
    from transformers import BlipForImageTextRetrieval

    tok = tt.bert_tokenizer(bos_dec=True)
    model = BlipForImageTextRetrieval(blip_config(tok))
    model.save_pretrained(out, safe_serialization=True)
    blip_processor(tok).save_pretrained(out)
    tt.write_wordpiece_vocab(tok, out)
    return "", "BlipForImageTextRetrieval", params(model)


def build_captioner(out: Path, need) -> tuple[str, str, int]:
    """BlipForConditionalGeneration (family blip-captioner)."""
    from transformers import BlipForConditionalGeneration

    tok = tt.bert_tokenizer(bos_dec=True)
    model = BlipForConditionalGeneration(blip_config(tok))
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tok.bos_token_id, tok.sep_token_id, tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    blip_processor(tok).save_pretrained(out)
    tt.write_wordpiece_vocab(tok, out)
    return "", "BlipForConditionalGeneration", params(model)
