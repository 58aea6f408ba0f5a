"""Tokenizers for the tiny checkpoints, built offline from what ships on disk.

- CLIP BPE: open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz`` converted to the
  HF vocab/merges (same ids as open_clip and as the real SD / CLIP tokenizers).
  transformers 5 trap: ``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently
  ignores both files, so the tokenizer is built with ``vocab=`` / ``merges=``.
- BERT WordPiece: a small English vocab (BLIP, with ``[DEC]`` bos and ``[ENC]``; GIT).
- Chinese BERT: every CJK Unified Ideograph U+4E00–U+9FFF, CJK and full-width
  punctuation and ASCII, so Chinese text never tokenises to ``[UNK]``.
- LLaVA: a byte-level BPE trained with ``tokenizers`` on a fixed corpus, plus ``<image>``.
"""

from __future__ import annotations

import gzip
from functools import lru_cache

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CJK_PUNCTUATION = "，。、；：？！“”‘’（）《》〈〉「」『』【】〔〕…—·～％"

# A fixed, small English corpus: the words art captions are made of.
WORDS = (
    "a an the of in on at with and or to from by for is are was were be this that these those "
    "painting portrait landscape fresco mural drawing sketch print engraving sculpture statue icon "
    "man woman child children figure figures saint virgin mary christ angel angels king queen "
    "people group crowd soldier horse dog bird birds tree trees river sea sky cloud clouds mountain "
    "building church city house room table chair window door garden field flowers flower fruit "
    "red blue green yellow white black gold golden brown dark light bright small large old young "
    "sitting standing holding wearing looking lying riding walking dressed seated "
    "left right center front background foreground top bottom side his her their its "
    "oil canvas panel wood paper silk pattern textile ancient chinese dunhuang artist century style"
).split()


@lru_cache(maxsize=1)
def clip_vocab_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The CLIP BPE vocab (49,408 entries) and merges, from open_clip's bundled file."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def clip_tokenizer(model_max_length: int = 77):
    """An HF ``CLIPTokenizer`` with the real CLIP vocabulary (ids equal open_clip's)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length)


def _ascii_pieces(uppercase: bool) -> list[str]:
    chars = [chr(c) for c in range(33, 127) if uppercase or not chr(c).isupper()]
    alnum = [c for c in chars if c.isalnum()]
    return chars + ["##" + c for c in alnum]


def bert_tokenizer(bos_dec: bool = False, model_max_length: int = 512):
    """A small uncased English WordPiece ``BertTokenizer``; with `bos_dec`, BLIP's ``[DEC]``/``[ENC]``."""
    from transformers import BertTokenizer

    pieces = BERT_SPECIALS + _ascii_pieces(uppercase=False) + sorted(set(WORDS))
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(pieces))}
    tok = BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=model_max_length)
    if bos_dec:  # as in Salesforce/blip-*: [DEC] starts generation, [ENC] marks ITM text
        tok.add_special_tokens({"bos_token": "[DEC]", "extra_special_tokens": ["[ENC]"]})
    return tok


def chinese_bert_tokenizer(model_max_length: int = 512):
    """A Chinese ``BertTokenizer`` covering all of U+4E00–U+9FFF, CJK punctuation and ASCII."""
    from transformers import BertTokenizer

    fullwidth = [chr(c) for c in range(0xFF01, 0xFF5F)]
    pieces = (
        BERT_SPECIALS
        + _ascii_pieces(uppercase=True)
        + list(CJK_PUNCTUATION)
        + fullwidth
        + ["##" + c for c in fullwidth if c.isalnum()]
        + [chr(c) for c in range(0x4E00, 0xA000)]
    )
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(pieces))}
    return BertTokenizer(
        vocab=vocab, do_lower_case=True, tokenize_chinese_chars=True, model_max_length=model_max_length
    )


LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)  # the llava-hf/llava-1.5 template: "USER: <image>\n{text} ASSISTANT:"


def llava_tokenizer(vocab_size: int = 512, model_max_length: int = 512):
    """A byte-level BPE (Llama-style specials ``<unk> <s> </s>``) plus ``<image>`` and ``<pad>``."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(0, len(WORDS), 7)]
    corpus += ["USER: <image>\nDescribe this artwork. ASSISTANT: A painting of a woman."]
    backend.train_from_iterator(corpus, trainer=trainer)
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )
    tok.add_special_tokens({"pad_token": "<pad>", "extra_special_tokens": ["<image>"]})
    return tok


def write_clip_bpe_files(directory) -> None:
    """Write ``vocab.json`` + ``merges.txt``, the tokenizer files of the real SD 1.x / CLIP repos."""
    import json
    from pathlib import Path

    vocab, merges = clip_vocab_merges()
    d = Path(directory)
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = "\n".join(" ".join(m) for m in merges)
    (d / "merges.txt").write_text("#version: 0.2\n" + lines + "\n", encoding="utf-8")


def write_wordpiece_vocab(tokenizer, directory) -> None:
    """Write the WordPiece ``vocab.txt`` (base vocab, added tokens excluded) as BERT-style repos ship it."""
    from pathlib import Path

    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)
    tokens = [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    (Path(directory) / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
