"""Caption quality flags for MLLM output the word-level tests miss: a leaked markup token followed by a run of one
character or of punctuation (`markup_run`), refusals after a literal backslash-n, captions that begin by echoing
the prompt (`prompt_echo`); and no flag on good captions (the sample corpora's, LLaVA-style ones)."""

from __future__ import annotations

import csv
import json

import pytest

from artray.scaffold.sample_corpora import make_samples
from artray.stages.caption_flags import (EXCLUDE_BY_DEFAULT, FLAGS, is_loop, is_markup_run, is_prompt_echo,
                                         is_refusal, quality_flags, usable)

CAPTION = "Caption this image"  # method (B)'s caption prompt and its query prompt
QUERY = "Generate a query for this image, suitable for text-to-image retrieval"

# Shapes seen in method (B)'s Llama-3.2-Vision output: a tag, then one character over and over (one "word").
MARKUP_RUNS = [
    "The painting shows a woman in a blue dress.</s>" + "!" * 24,
    "A portrait of a man in a black hat. <|im_end|> " + "_" * 18,
    'Title: "Annunciation" by Rogier van der Weyden. <OCR/> ' + "\u1275" * 25,
    "A ship on a grey sea.[/INST] " + ". " * 14,
    "Two angels read books on a bench.<|eot_id|>" + "?!" * 8,
    "A still life with flowers.<0x0A><0x0A>" + "#" * 12,
]
# A refusal after an escaped newline written out (a backslash, then n): no word boundary before "I'm".
ESCAPED_REFUSALS = [
    " with a one-word or short phrase.\\nI'm not able to provide information about the person in this image.",
    "Caption:\\n\\nI cannot provide a caption for this image.",
    "A portrait of a woman.\\nI'm sorry, but I can't help identify her.",
    "The image shows a crowded street.\\r\\nI am unable to identify the people in it.",
]
PROMPT_ECHOES = [
    (CAPTION, "Caption this image: A woman in a blue dress holds a child on her lap."),
    (CAPTION, "caption this image. The image features a river winding through green hills."),
    (CAPTION, "USER: <image>\nCaption this image ASSISTANT: The image features a portrait of a man."),
    (QUERY, "Generate a query for this image, suitable for text-to-image retrieval. Query: woman in blue dress"),
    (QUERY, "Generate a query for this image: Madonna with child, gold background"),
    ("Describe the painting in one sentence.", "[INST] Describe the painting in one sentence. A calm harbour at dusk."),
]
# LLaVA-1.5 / Llama-3.2-Vision-Instruct style captions and queries, some with markup-like text or punctuation.
GOOD = [
    "The image features a woman wearing a blue dress and a gold necklace. She is wearing a hat and has a gold crown "
    "on her head. The woman appears to be looking at the viewer, and her outfit suggests a regal appearance.",
    "The image depicts a painting of a man sitting on a hill, surrounded by other figures.\n\n* A man sitting on a "
    "hill:\n\t+ The man is wearing a blue robe with a red sash.\n* Three people sitting on the ground.",
    "**Title:** The Harvesters\n**Artist:** Pieter Bruegel the Elder\n**Description:** Peasants rest under a pear "
    "tree at noon; others cut wheat... a church tower rises in the distance.",
    "| Element | Colour |\n|---|---|\n| Sky | Blue |\n| Field | Yellow |",
    "The image shows a caption-like inscription, \"SPQR\", carved above the arch -- the rest is illegible...",
    "Woman in a red cloak holding a caption card, \"This image is not for sale\", oil on canvas",
    "A query for this image: a knight on a white horse?",  # not the query prompt's words
    "Generate warm light over the bay: a fisherman mends his net at sunset.",
    "In this painting the saint cannot see the angel who stands behind him.",
    "A portrait of a man.</s>",  # a leaked token alone is not a run
    "Wait... what? A small boat on a stormy sea!!!",
    "窠内一飞鸟，展翅回首；四周饰以卷草纹。",
]


@pytest.mark.parametrize("text", MARKUP_RUNS)
def test_markup_token_then_run_is_flagged(text):
    assert is_markup_run(text)
    assert not is_loop(text)  # the run is one word or none: the loop tests cannot see it
    assert quality_flags(text) == ["markup_run"] and not usable(quality_flags(text))


def test_a_long_run_of_one_character_alone_is_a_loop():
    assert quality_flags("The image shows a bridge over a river" + "!" * 40) == ["loop"]
    assert quality_flags("A bridge " + ". " * 35) == ["loop"]
    assert quality_flags("A bridge over a river" + "!" * 12) == []  # short runs are punctuation, not loops


@pytest.mark.parametrize("text", ESCAPED_REFUSALS)
def test_refusal_after_a_literal_backslash_n_is_flagged(text):
    assert is_refusal(text) and quality_flags(text) == ["refusal"]
    assert is_refusal(text.replace("\\r", "").replace("\\n", "\n"))  # as with a real line break


def test_escaped_newlines_alone_are_empty_and_loops_split_at_them():
    assert quality_flags("\\n\\n") == ["empty"]
    assert quality_flags("The saint cannot see the angel.\\nThe angel stands behind him.") == []
    assert is_loop("\\n".join(["A woman holds a child"] * 3))


@pytest.mark.parametrize("prompt,text", PROMPT_ECHOES)
def test_caption_that_begins_by_echoing_the_prompt_is_flagged(prompt, text):
    assert is_prompt_echo(text, prompt)
    assert quality_flags(text, prompt=prompt) == ["prompt_echo"] and not usable(["prompt_echo"])
    assert quality_flags(text) == []  # without the prompt the test does not run


def test_prompt_words_later_in_the_caption_are_no_echo():
    assert not is_prompt_echo("A painting of a ship. Caption this image? No.", CAPTION)
    assert not is_prompt_echo("Caption: A woman in a blue dress.", CAPTION)
    assert not is_prompt_echo("Generate", QUERY) and not is_prompt_echo("Anything", None)


def _sample_captions(root) -> list[str]:
    """Every human text of the four sample corpora, read from their native files."""
    paths = make_samples(str(root), n=24)
    out = [" ".join(a["visual_sentences"]) for a in
           json.loads(open(f"{paths['artpedia']}/artpedia.json", encoding="utf-8").read()).values()]
    out += [c for caps in json.loads(open(f"{paths['artcap']}/ArtCap.json", encoding="utf-8").read()).values()
            for c in caps]
    for split in ("train", "valid", "test"):
        with open(f"{paths['culti']}/{split}_texts.jsonl", encoding="utf-8") as f:
            out += [json.loads(line)["text"] for line in f]
    with open(f"{paths['folder']}/metadata.csv", encoding="utf-8") as f:
        out += [r["caption"] for r in csv.DictReader(f)]
    return out


def test_good_captions_get_no_flag(tmp_path):
    texts = GOOD + _sample_captions(tmp_path)
    assert len(texts) > 150
    for prompt in (None, CAPTION, QUERY):
        flagged = {t: quality_flags(t, prompt=prompt) for t in texts if quality_flags(t, prompt=prompt)}
        assert flagged == {}, prompt


def test_flag_names_and_default_exclusion():
    assert FLAGS == ("refusal", "loop", "markup_run", "prompt_echo", "empty", "truncated")
    assert set(EXCLUDE_BY_DEFAULT) == set(FLAGS) - {"truncated"}
    text = "Caption this image.\\nI'm not able to help.</s>" + "." * 20
    assert quality_flags(text, truncated=True, prompt=CAPTION) == ["refusal", "markup_run", "prompt_echo",
                                                                  "truncated"]
