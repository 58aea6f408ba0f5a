"""Quality flags of a generated caption: refusal, loop, markup_run, prompt_echo, empty, truncated (pure functions).

Method (B)'s second captioner (Llama-3.2-11B-Vision, base) answered most artworks with
refusals that then looped ("I'm not able to provide that information. I'm not able to
provide that information. ..."). Such text must never silently become training data, but
it is kept, flagged, so a person can see what a captioner did. Other bad MLLM output:
a leaked special/markup token followed by a long run of one character or of punctuation
(`markup_run`: "…</s>!!!!!!!!!!!!"; the run is one word or no word, so the word loop test
cannot see it), refusals after an escaped newline (a literal backslash-n before "I'm not
able to…"), and captions that begin by echoing the instruction prompt (`prompt_echo`).
`usable` is the default filter for training: every flag but `truncated` excludes a
caption; `truncated` (the answer hit max_new_tokens) is informational, since a long
description cut at 200 tokens is still a description (method (B) kept them).
"""

from __future__ import annotations

import re
from collections import Counter

FLAGS = ("refusal", "loop", "markup_run", "prompt_echo", "empty", "truncated")
EXCLUDE_BY_DEFAULT = ("refusal", "loop", "markup_run", "prompt_echo", "empty")

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
# An escaped line break or tab written out literally ("\\n" in the text: a backslash, then n).
_LITERAL_ESCAPE = re.compile(r"\\+([nrt])")
# Leaked special tokens and markup: <|im_end|>, </s>, <image>, <0x0A>, [INST], <<SYS>>, HTML-like tags.
_MARKUP = re.compile(r"<\|[^<>|\s]{1,40}\|>|<</?SYS>>|<0x[0-9A-Fa-f]{2}>|\[/?[A-Z_]{2,12}\]"
                     r"|</?[A-Za-z_][\w:.-]{0,30}(?:\s[^<>]{0,60})?/?>")
# After such a token: 10+ of one character, or 10+ punctuation marks (single spaces between allowed).
_RUN_AFTER_MARKUP = re.compile(r"(\S)(?:\s?\1){9,}|(?:[^\w\s]\s?){10,}")
# Anywhere: 30+ of one character (single spaces between allowed) — a loop below the word level.
_CHAR_LOOP = re.compile(r"(\S)(?:\s?\1){29,}")
# Words a leaked chat template puts before an echoed prompt ("USER: <image>\nCaption this image").
_ROLE_WORDS = {"user", "human", "system", "sys", "assistant", "instruction", "instructions", "prompt", "question",
               "q", "image", "img", "inst", "s", "im_start", "im_end", "start_of_turn", "end_of_turn", "turn"}


def unescape(text: str) -> str:
    """Literal "\\n", "\\r" (a backslash and a letter) become line breaks, "\\t" a space."""
    return _LITERAL_ESCAPE.sub(lambda m: " " if m.group(1) == "t" else "\n", text)


def _normalise(text: str) -> str:
    return unescape(text).replace("\u2019", "'").replace("\u2018", "'").lower()


def tokens(text: str) -> list[str]:
    """Lower-cased words (a CJK character is a word); punctuation dropped."""
    return _TOKEN.findall(_normalise(text))


def is_empty(text: str) -> bool:
    """No letter or digit at all: '', whitespace, '...', a lone special token's remains."""
    return not any(ch.isalnum() for ch in unescape(text))


def is_refusal(text: str) -> bool:
    """The model declines (first person: "I'm not able to", "I cannot provide", "As an AI", ...).

    Third-person statements ("the saint cannot see the angel") are not refusals. Each line
    (literal "\\n" escapes count as line breaks) is also checked on its own, so an apology
    that opens a later line counts.
    """
    norm = _normalise(text)
    texts = [" ".join(norm.split())] + [" ".join(line.split()) for line in norm.splitlines()[1:]]
    return any(p.search(t) for t in texts for p in _REFUSALS)


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
    """Degenerate repetition, by any of four tests:

    * a block of 2+ words repeated `min_repeats` times back to back (one word: 2 more times);
    * one sentence of 3+ words said `min_repeats` times anywhere in the text;
    * in a text of `min_tokens`+ words, more than `max_repeated_share` of its 4-grams are repeats;
    * one character 30+ times in a row ("!!!!…", "aaaa…", ". . . …"): below the word level.
    """
    text = unescape(text)
    if _CHAR_LOOP.search(text):
        return True
    toks = tokens(text)
    period, copies = _longest_tandem(toks, max_period)
    if copies >= (min_repeats + 2 if period == 1 else min_repeats):
        return True
    sentences = Counter(" ".join(tokens(s)) for s in _SENTENCE_END.split(text) if len(tokens(s)) >= 3)
    if sentences and max(sentences.values()) >= min_repeats:
        return True
    grams = [tuple(toks[i:i + 4]) for i in range(len(toks) - 3)]
    return len(toks) >= min_tokens and 1 - len(set(grams)) / len(grams) > max_repeated_share


def is_markup_run(text: str) -> bool:
    """A leaked special/markup token (``<|im_end|>``, ``</s>``, ``[INST]``, a tag) followed by a long run
    of one character or of punctuation ("</s>!!!!!!!!!!!!", "<|eot_id|>. . . . . . . . . . ")."""
    first = _MARKUP.search(text)
    return first is not None and _RUN_AFTER_MARKUP.search(text, first.end()) is not None


def is_prompt_echo(text: str, prompt: str | None, min_words: int = 3) -> bool:
    """The text begins by repeating the instruction `prompt` (all of it, or its first half and at
    least `min_words` words), possibly after leaked chat-template role words ("USER: <image>")."""
    want = tokens(prompt or "")
    if not want:
        return False
    need = min(len(want), max(min_words, (len(want) + 1) // 2))
    toks = tokens(text)
    skip = 0
    while skip < min(len(toks), 8) and toks[skip] in _ROLE_WORDS:
        skip += 1
    return any(toks[i:i + need] == want[:need] for i in range(skip + 1))


def quality_flags(text: str, truncated: bool = False, min_repeats: int = 3, prompt: str | None = None) -> list[str]:
    """The flags of one generated text, in FLAGS order; [] for a normal caption.

    `prompt` is the instruction the model was given (for `prompt_echo`; None skips that test).
    """
    if is_empty(text):
        return ["empty"] + (["truncated"] if truncated else [])
    flags = []
    if is_refusal(text):
        flags.append("refusal")
    if is_loop(text, min_repeats=min_repeats):
        flags.append("loop")
    if is_markup_run(text):
        flags.append("markup_run")
    if is_prompt_echo(text, prompt):
        flags.append("prompt_echo")
    if truncated:
        flags.append("truncated")
    return flags


def usable(flags: list[str] | tuple[str, ...], exclude: tuple[str, ...] = EXCLUDE_BY_DEFAULT) -> bool:
    """True if a caption with `flags` may be used (for training, by default)."""
    return not set(flags) & set(exclude)
