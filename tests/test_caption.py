"""MLLM captioning on real Ray with the tiny LLaVA: one row per (artwork, preset) with provenance, resume
after a lost shard, failures and flags kept, S3 in/out; and the quality flags on realistic captions."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from artray import corpus, storage
from artray.config import ConfigError, load_config
from artray.scaffold.tiny import make_tiny
from artray.schema import ARTWORK_SCHEMA, artwork_row
from artray.outputs import read_captions
from artray.stages.caption import PRESETS, CaptionConfig, CaptionError, run_caption
from artray.stages.caption_flags import FLAGS, is_loop, is_refusal, quality_flags, usable
from artray.storage import StorageOptions

# Method (B)'s Llama-3.2-11B-Vision (base) answers to "Caption this image" (captions/test_captions.json, abridged).
LLAMA_REFUSAL_LOOP = (
    " with a one-word or short phrase. I'm not able to provide that information. I'm not able to provide "
    "information about the person in this image. I can give you an idea of what's happening in the image, but not "
    "who's in it. I can provide some context, but not specific names. I can give you an idea of what's happening in "
    "the image, but not who's in it. I can provide some background information, but not names. I can give you an "
    "idea of what's happening in the image, but not who's in it. I can provide some context, but not specific "
    "names. I can give you an idea of what's")
LLAMA_SAME_SENTENCE = " with a one-word or short phrase. " + "I'm not able to provide that information. " * 12
LLAMA_IDENTIFY = (" with the name of the person in it, I'm not able to identify individuals. I can provide information "
                  "on the image's context, but not names.")
# Normal answers in the style of LLaVA-1.5 and Llama-3.2-Vision-Instruct (captions and queries).
NORMAL = [
    "The image features a woman wearing a blue dress and a gold necklace. She is wearing a hat and has a gold crown "
    "on her head. The woman appears to be looking at the viewer, and her outfit suggests a regal appearance.",
    "The image depicts a painting of a woman holding a baby, surrounded by several other people. The woman is "
    "positioned in the center of the painting, with the baby in her arms. The other people are scattered around the "
    "painting, with some standing closer to the woman and others further away.",
    "The image depicts a painting of a man sitting on a hill, surrounded by other figures.\n\n* A man sitting on a "
    "hill:\n\t+ The man is wearing a blue robe with a red sash.\n\t+ He has long hair and is looking down.\n* Three "
    "people sitting on the ground:\n\t+ They are all dressed in simple, earthy tones.\n\t+ One of them is holding a "
    "staff.\n* A horse and rider in the distance:\n\t+ The horse is brown and appears to be galloping.",
    "Renaissance painting of the Virgin Mary holding the infant Jesus, surrounded by angels",
    "A very, very small boat on a grey sea.",
    "In this painting the saint cannot see the angel who stands behind him.",
    "窠内一飞鸟，展翅回首；四周饰以卷草纹。",
]


def test_flags_catch_refusals_loops_and_empties():
    assert quality_flags(LLAMA_REFUSAL_LOOP) == ["refusal", "loop"]
    assert quality_flags(LLAMA_SAME_SENTENCE, truncated=True) == ["refusal", "loop", "truncated"]
    assert quality_flags(LLAMA_IDENTIFY) == ["refusal"]
    for text in ["", "   ", "...", "\n"]:
        assert quality_flags(text) == ["empty"]
    assert is_refusal("I'm sorry, but I cannot help with identifying people in images.")
    assert is_refusal("As an AI, I do not have the ability to view images.")
    assert is_refusal("I can\u2019t provide a caption for this image.")
    assert is_loop("a painting of a painting of a painting of a painting of a painting of a")
    assert is_loop("The the the the the the castle")
    assert is_loop("一个人一个人一个人")
    assert quality_flags("A portrait of a man", truncated=True) == ["truncated"]
    assert not usable(["refusal"]) and not usable(["loop", "truncated"]) and usable(["truncated"]) and usable([])


@pytest.mark.parametrize("text", NORMAL)
def test_flags_pass_normal_captions(text):
    assert quality_flags(text) == []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return make_tiny(str(tmp_path_factory.mktemp("tiny")))["llava"]


@pytest.fixture(scope="module")
def sample(imported_artpedia) -> str:
    return imported_artpedia(12)


def _cfg(inp: str, out: str, model: str, **kw) -> CaptionConfig:
    base = dict(input=inp, output=out, model=model, max_new_tokens=8, batch_size=4, cpus_per_actor=0.75)
    return CaptionConfig(**{**base, **kw})


def _captions(out: str, options=StorageOptions()) -> dict[str, dict]:
    rows = read_captions(out, options, exclude_flags=()).to_pylist()
    assert len(rows) == len({r["caption_id"] for r in rows}), "one row per caption_id"
    return {r["caption_id"]: r for r in rows}


def test_one_row_per_artwork_and_preset_with_provenance_and_resume(ray_local, tiny, sample, tmp_path, capsys):
    from artray.models.mllm import load_mllm
    from artray.stages.caption_generate import eos_ids, generate, generate_kwargs

    out = str(tmp_path / "captions")
    style = "Name the art style of this painting"
    cfg = _cfg(sample, out, tiny, splits=["val", "test"], prompts={"style": style}, presets=["caption", "query", "style"],
               shard_rows=4)
    arts = {r["artwork_id"]: r for r in corpus.read_artworks(sample).to_pylist() if r["split"] in ("val", "test")}
    first = run_caption(cfg)
    rows = _captions(out)
    assert set(rows) == {f"{a}|llava|{p}" for a in arts for p in ("caption", "query", "style")}
    prompts = {**PRESETS, "style": style}
    for row in rows.values():
        assert (row["captioner"], row["model"], row["split"]) == ("llava", tiny, arts[row["artwork_id"]]["split"])
        assert row["prompt"] == prompts[row["preset"]] and set(row["flags"]) <= set(FLAGS)
        gen = json.loads(row["generation"])
        assert gen == {"backend": "transformers", "max_new_tokens": 8, "do_sample": False, "num_beams": 1,
                       "repetition_penalty": 1.0, "ignore_eos": False, "dtype": "float32", "device": "cpu"}
    c = first["counts"]
    assert (c["captioned"], c["output_captions"], c["skipped_done"], sum(c["failed_this_run"].values())) == (12, 12, 0, 0)
    assert first["generated_tokens"] > 0 and corpus.read_manifest(out)["run_id"] == first["run_id"]
    assert "[caption]" in capsys.readouterr().out

    # Batched, left-padded generation in the pipeline = one image at a time, greedy, as method (B) ran it.
    bundle = load_mllm(tiny)
    kw, eos = generate_kwargs(json.loads(rows[next(iter(rows))]["generation"]), bundle.processor.tokenizer.pad_token_id), eos_ids(bundle)
    for cid in sorted(rows)[:4]:
        aid, _, preset = cid.split("|")
        image = Image.open(io.BytesIO(arts[aid]["image"])).convert("RGB")
        text, _, hit_max = generate(bundle, [image], [bundle.prompt(prompts[preset])], kw, eos)[0]
        assert rows[cid]["text"] == text and ("truncated" in rows[cid]["flags"]) == hit_max

    # A finished output: a rerun does nothing.
    second = run_caption(cfg)
    assert second["counts"]["captioned"] == 0 and second["counts"]["skipped_done"] == 12 and _captions(out) == rows

    # Killed mid-way: one committed shard and the manifest are gone; the rerun makes exactly those rows again.
    shards = storage.list_files(storage.join(out, "captions"), ".parquet")
    assert len(shards) >= 2
    lost = storage.read_parquet(shards[1])["caption_id"].to_pylist()
    storage.delete(shards[1])
    storage.delete(storage.join(out, "_manifest.json"))
    third = run_caption(cfg)
    assert third["counts"]["captioned"] == len(lost) == third["counts"]["to_caption"]
    assert _captions(out) == rows


def _hand_corpus(uri: str, sample: str, options=StorageOptions()) -> None:
    """Two good artworks, a corrupt image, one without any image, one whose image file is gone."""
    good = corpus.read_artworks(sample, options=StorageOptions()).to_pylist()[:2]
    writer = corpus.ShardWriter(storage.join(uri, "artworks"), ARTWORK_SCHEMA, 10, options=options)
    for row in good:
        writer.add(row)
    common = dict(split="test", captions=["a test"], text_ids=[], language="en", source="test")
    writer.add(artwork_row(artwork_id="corrupt", image=good[0]["image"][:200], **common))
    writer.add(artwork_row(artwork_id="noimage", img_url="https://example.org/x.jpg", **common))
    writer.add(artwork_row(artwork_id="gone", image_uri=storage.join(uri, "images", "gone.jpg"), **common))
    writer.flush()
    corpus.write_manifest(uri, {"stage": "import"}, options)


def test_failures_recorded_flags_kept_on_s3(ray_local, tiny, sample, s3_endpoint, s3_bucket):
    opts = StorageOptions(endpoint_url=s3_endpoint)
    inp, out = f"{s3_bucket}/corpus", f"{s3_bucket}/captions"
    _hand_corpus(inp, sample, opts)
    cfg = _cfg(inp, out, tiny, s3_endpoint=s3_endpoint, ignore_eos=True, captioner="tiny-llava")
    first = run_caption(cfg)
    rows = _captions(out, opts)
    good = [r["artwork_id"] for r in corpus.read_artworks(sample).to_pylist()[:2]]
    assert set(rows) == {f"{a}|tiny-llava|caption" for a in good}
    assert all(r["flags"] == ["truncated"] for r in rows.values())  # flagged (hit max_new_tokens), kept
    assert read_captions(out, opts, exclude_flags=("truncated",)).num_rows == 0
    fails = {r["key"]: r for r in corpus.read_failures(out, opts).to_pylist()}
    assert {k: (r["reason"], r["retryable"]) for k, r in fails.items()} == {
        "corrupt|tiny-llava|caption": ("undecodable_image", False),
        "noimage|tiny-llava|caption": ("no_image", False),
        "gone|tiny-llava|caption": ("image_read_error", True)}
    assert "ingest" in fails["noimage|tiny-llava|caption"]["detail"]
    assert first["counts"]["failed_this_run"] == {"image_read_error": 1, "no_image": 1, "undecodable_image": 1}

    second = run_caption(cfg)  # only the transient failure is tried again; still one failure row per key
    assert (second["counts"]["to_caption"], second["counts"]["skipped_failed"], second["counts"]["skipped_done"]) == (1, 2, 2)
    assert len(corpus.read_failures(out, opts)) == 3 and _captions(out, opts) == rows


def test_config_and_resume_guards(sample, tmp_path):
    with pytest.raises(ConfigError, match="unknown presets"):
        load_config(CaptionConfig, overrides={"input": "a", "output": "b", "presets": ["describe"]})
    with pytest.raises(ConfigError, match="built-in preset"):
        load_config(CaptionConfig, overrides={"input": "a", "output": "b", "prompts": {"query": "x"}})
    with pytest.raises(ConfigError, match="unknown splits"):
        load_config(CaptionConfig, overrides={"input": "a", "output": "b", "splits": ["training"]})
    cfg = load_config(CaptionConfig, overrides={"input": "a", "output": "b", "prompts": {"style": "Name the style"}})
    assert list(cfg.prompt_texts()) == ["caption", "style"] and cfg.captioner_name() == "llava-1.5-7b-hf"
    assert cfg.generation()["max_new_tokens"] == 200 and not cfg.generation()["do_sample"]
    with pytest.raises(CaptionError, match="not a finished corpus"):
        run_caption(_cfg(str(tmp_path / "nothing"), str(tmp_path / "o"), "m"))
    out = tmp_path / "out"
    storage.write_json_atomic(str(out / "_caption_params.json"), {"llava": {
        "model": "/models/llava", "generation": _cfg(sample, str(out), "/models/llava").generation(),
        "prompts": {"caption": "Describe the painting"}}})
    with pytest.raises(CaptionError, match="made differently"):  # before any Ray work
        run_caption(_cfg(sample, str(out), "/models/llava"))
