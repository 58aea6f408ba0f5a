"""Quality flags of a generated caption: refusal, loop, empty, truncated (pure functions, no models).

Method (B)'s second captioner (Llama-3.2-11B-Vision, base) answered most artworks with
refusals that then looped ("I'm not able to provide that information. I'm not able to
provide that information. ..."). Such text must never silently become training data, but
it is kept, flagged, so a person can see what a captioner did. `usable` is the default
filter for training: refusal, loop and empty exclude a caption; `truncated` (the answer
hit max_new_tokens) is informational, since a long description cut at 200 tokens is
still a description (method (B) kept them).
"""

from __future__ import annotations

import re
from collections import Counter

FLAGS = ("refusal", "loop", "empty", "truncated")
EXCLUDE_BY_DEFAULT = ("refusal", "loop", "empty")

_REFUSALS = [re.compile(p) for p in (
    r"\bi(?:'m| am)\s+(?:not able|unable|not allowed|not permitted)\s+to\b",
    r"\bi\s+(?:can't|cannot|can not|won't|will not|am not going to)\s+(?:provide|help|assist|identify|describe|"
    r"caption|see|view|access|determine|answer|comply|fulfil|fulfill|generate|process|recognize|recognise|"
    r"tell|share|discuss|create|give|analy[sz]e|interpret)\b",
    r"^\W*(?:i'm sorry|i am sorry|sorry,|i apologi[sz]e|unfortunately,? i (?:can|am|'m|do))",
    r"\bas an ai\b",
    r"\bi (?:don't|do not) have (?:the ability|access|enough (?:information|context)|any information|"
    r"information about)\b",
    r"\b(?:no|there is no|there's no) image (?:was |is |has been )?(?:provided|attached|uploaded|shared)\b",
)]
# CJK characters are tokens of their own; other text splits into words.
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|(?:(?![\u3040-\u30ff\u3400-\u4dbf"
                    r"\u4e00-\u9fff\uf900-\ufaff])[\w'])+")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s*|\n+")


def _normalise(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'").lower()


def tokens(text: str) -> list[str]:
    """Lower-cased words (a CJK character is a word); punctuation dropped."""
    return _TOKEN.findall(_normalise(text))


def is_empty(text: str) -> bool:
    """No letter or digit at all: '', whitespace, '...', a lone special token's remains."""
    return not any(ch.isalnum() for ch in text)


def is_refusal(text: str) -> bool:
    """The model declines (first person: "I'm not able to", "I cannot provide", "As an AI", ...).

    Third-person statements ("the saint cannot see the angel") are not refusals.
    """
    norm = " ".join(_normalise(text).split())
    return any(p.search(norm) for p in _REFUSALS)


def _longest_tandem(toks: list[str], max_period: int) -> tuple[int, int]:
    """(period, copies) of the most-repeated back-to-back block of tokens."""
    best = (0, 1)
    for period in range(1, min(max_period, len(toks) // 2) + 1):
        run = 0
        for j in range(len(toks) - period):
            run = run + 1 if toks[j] == toks[j + period] else 0
            copies = run // period + 1
            if copies > best[1]:
                best = (period, copies)
    return best


def is_loop(text: str, min_repeats: int = 3, max_period: int = 40, min_tokens: int = 30,
            max_repeated_share: float = 0.5) -> bool:
    """Degenerate repetition, by any of three tests:

    * a block of 2+ words repeated `min_repeats` times back to back (one word: 2 more times);
    * one sentence of 3+ words said `min_repeats` times anywhere in the text;
    * in a text of `min_tokens`+ words, more than `max_repeated_share` of its 4-grams are repeats.
    """
    toks = tokens(text)
    period, copies = _longest_tandem(toks, max_period)
    if copies >= (min_repeats + 2 if period == 1 else min_repeats):
        return True
    sentences = Counter(" ".join(tokens(s)) for s in _SENTENCE_END.split(text) if len(tokens(s)) >= 3)
    if sentences and max(sentences.values()) >= min_repeats:
        return True
    grams = [tuple(toks[i:i + 4]) for i in range(len(toks) - 3)]
    return len(toks) >= min_tokens and 1 - len(set(grams)) / len(grams) > max_repeated_share


def quality_flags(text: str, truncated: bool = False, min_repeats: int = 3) -> list[str]:
    """The flags of one generated text, in FLAGS order; [] for a normal caption."""
    if is_empty(text):
        return ["empty"] + (["truncated"] if truncated else [])
    flags = []
    if is_refusal(text):
        flags.append("refusal")
    if is_loop(text, min_repeats=min_repeats):
        flags.append("loop")
    if truncated:
        flags.append("truncated")
    return flags


def usable(flags: list[str] | tuple[str, ...], exclude: tuple[str, ...] = EXCLUDE_BY_DEFAULT) -> bool:
    """True if a caption with `flags` may be used (for training, by default)."""
    return not set(flags) & set(exclude)
