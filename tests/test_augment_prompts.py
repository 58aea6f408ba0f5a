"""The augment generator without Ray, on the tiny SD img2img checkpoint: long prompts in 75-token
chunks (AUTOMATIC1111's encoding, method (A)'s web UI) against the 77-token cut, the seed-A preset,
and the fast path (SDPA, channels_last, VAE slicing, batching) keeping what the pipeline computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from artray.models.diffusion import (
    CHUNK_TOKENS,
    apply_fast_path,
    attention_processors,
    chunked_prompt_embeds,
    load_img2img,
    prompt_chunks,
)
from artray.stages.augment import PRESETS, AugmentConfig
from artray.stages.augment_generate import Generate
from artray.stages.augment_plan import plan_seed, variant_seed
from artray.storage import StorageOptions

HEAD = " ".join(["an oil painting in a quiet museum gallery"] * 10)  # 80 tokens: past the 77-token cut
TAIL_A, TAIL_B = "with a red dragon", "with a blue whale"


@pytest.fixture(scope="module")
def pipe(tiny_models):
    return load_img2img(tiny_models["sd-img2img"]).pipeline


def _generator(tiny_models, **kw) -> Generate:
    args = {"model": tiny_models["sd-img2img"], "options": StorageOptions(), "use_gpu": False, "dtype": "float32",
            "sampler": "euler_a", "strength": 0.5, "guidance": 10.0, "steps": 4, "filter_model": None,
            "filter_threshold": 0.5, "threads": None}
    return Generate(**{**args, **kw})


def _init(seed: int = 0, size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_prompt_chunks_follow_the_web_ui(pipe):
    tok = pipe.tokenizer
    bos, eos = tok.bos_token_id, tok.eos_token_id
    n_tokens = len(tok(HEAD, add_special_tokens=False).input_ids)
    chunks = prompt_chunks(tok, HEAD)
    assert n_tokens > CHUNK_TOKENS and len(chunks) == 2 and all(len(c) == 77 for c in chunks)
    assert all(c[0] == bos and c[-1] == eos for c in chunks)
    assert [t for c in chunks for t in c if t not in (bos, eos)] == tok(HEAD, add_special_tokens=False).input_ids
    assert chunks[1].count(eos) == 77 - 1 - (n_tokens - CHUNK_TOKENS)  # EOS pads the last chunk
    assert prompt_chunks(tok, "") == [[bos] + [eos] * 76]
    # a chunk that fills up within 20 tokens of a comma breaks after the comma
    words = " ".join(["painting"] * 70) + ", " + " ".join(["museum"] * 10)
    first, second = prompt_chunks(tok, words)
    comma = tok.convert_tokens_to_ids(",</w>")
    assert first[71] == comma and first[72:] == [eos] * 5 and second[1:11] == tok("museum " * 10,
                                                                                  add_special_tokens=False).input_ids


def test_chunked_embeddings_have_n_chunks_x_77_and_pad_with_empty_chunks(pipe):
    embeds, negative = chunked_prompt_embeds(pipe, [HEAD, "a cat"], "")
    dim = pipe.text_encoder.config.hidden_size
    assert embeds.shape == negative.shape == (2, 2 * 77, dim)
    empty = chunked_prompt_embeds(pipe, [""])[0][0]  # (77, dim): an empty chunk
    short_pe, short_ne = pipe.encode_prompt(["a cat"], "cpu", 1, True)  # diffusers' own 77-token encoding
    torch.testing.assert_close(embeds[1, :77], short_pe[0])  # a short prompt encodes as diffusers does
    torch.testing.assert_close(embeds[1, 77:], empty)  # ... and is padded with an empty chunk
    torch.testing.assert_close(negative[0, :77], short_ne[0])
    torch.testing.assert_close(negative[:, 77:], empty.expand(2, -1, -1))  # the negative prompt padded too
    # a negative prompt longer than every prompt: the prompts are padded to its chunks
    embeds, negative = chunked_prompt_embeds(pipe, ["a cat"], HEAD + " " + HEAD)
    assert embeds.shape == negative.shape == (1, 3 * 77, dim)
    torch.testing.assert_close(embeds[0, 154:], empty)


def test_the_tail_of_a_long_caption_conditions_the_image_only_when_chunked(tiny_models):
    init = _init()
    prompts = (f"{HEAD} {TAIL_A}", f"{HEAD} {TAIL_B}")
    images = {}
    for encoding in ("truncate", "chunked"):
        gen = _generator(tiny_models, prompt_encoding=encoding)
        images[encoding] = [gen._generate([p], [init], [7])[0] for p in prompts]
    assert np.array_equal(*images["truncate"])  # both cut before their tails: the same image
    assert not np.array_equal(*images["chunked"])  # chunked: the tail changes the image
    assert not np.array_equal(images["truncate"][0], images["chunked"][0])
    # a prompt within 75 tokens makes the same image either way; a negative prompt is used in both
    short = {e: _generator(tiny_models, prompt_encoding=e)._generate(["a cat"], [init], [7])[0] for e in
             ("truncate", "chunked")}
    np.testing.assert_allclose(short["truncate"], short["chunked"], atol=1)
    neg = {e: _generator(tiny_models, prompt_encoding=e, negative_prompt="blurry")._generate(["a cat"], [init], [7])[0]
           for e in ("truncate", "chunked")}
    np.testing.assert_allclose(neg["truncate"], neg["chunked"], atol=1)
    assert not np.array_equal(neg["chunked"], short["chunked"])


def test_the_seed_a_preset_and_per_variant_seeds():
    cfg = AugmentConfig(input="a", output="b", preset="cioni2023")
    assert (cfg.prompt_encoding, cfg.seed_mode, cfg.seed, cfg.strength, cfg.steps) == ("chunked", "per_variant", 0,
                                                                                         0.34, 40)
    assert AugmentConfig(input="a", output="b", preset="cioni2023", seed_mode="per_row").seed_mode == "per_row"
    plain = AugmentConfig(input="a", output="b")  # the plain defaults stay as before the preset
    assert (plain.prompt_encoding, plain.seed_mode, plain.preset) == ("truncate", "per_row", None)
    assert set(PRESETS["cioni2023"]) <= set(AugmentConfig.model_fields)
    with pytest.raises(ValueError, match="unknown preset"):
        AugmentConfig.model_validate({"input": "a", "output": "b", "preset": "nope"})
    # per_variant: variant k of every artwork gets seed + k (method A seeded variant k with k)
    assert [plan_seed("per_variant", 0, a, k) for a in ("1", "2") for k in range(3)] == [0, 1, 2, 0, 1, 2]
    assert plan_seed("per_variant", 5, "1", 2) == 7
    assert plan_seed("per_row", 0, "42", 1) == variant_seed(0, "42", 1) != plan_seed("per_row", 0, "43", 1)


def test_fast_path_keeps_the_images_and_batching_matches_one_by_one(tiny_models):
    plain = _generator(tiny_models)
    assert attention_processors(plain.pipe) == {"AttnProcessor2_0"}  # PyTorch SDPA, diffusers' default
    inits = [_init(i) for i in range(4)]
    prompts = ["a cat", "a dog on a hill", "a ship", "a portrait of a lady"]
    seeds = [3, 1, 4, 1]
    batched = plain._generate(prompts, inits, seeds)
    one_by_one = np.concatenate([plain._generate([p], [i], [s]) for p, i, s in zip(prompts, inits, seeds)])
    assert batched.shape == (4, 64, 64, 3)
    assert np.abs(batched.astype(int) - one_by_one.astype(int)).max() <= 2  # fp32 CPU: batch-variant last bits only
    fast = _generator(tiny_models, fast_path={"channels_last": True, "vae_slicing": True})
    assert fast.pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.abs(fast._generate(prompts, inits, seeds).astype(int) - batched.astype(int)).max() <= 2
    pipe = load_img2img(tiny_models["sd-img2img"]).pipeline
    apply_fast_path(pipe, vae_tiling=True)
    assert pipe.vae.use_tiling


@pytest.mark.slow  # torch.compile of the tiny UNet takes about a minute on 2 CPU cores
def test_compiled_unet_makes_the_same_images(tiny_models):
    inits, prompts, seeds = [_init(0), _init(1)], ["a cat", "a ship"], [1, 2]
    plain = _generator(tiny_models)._generate(prompts, inits, seeds)
    compiled = _generator(tiny_models, fast_path={"compile_unet": True, "channels_last": True})
    assert np.abs(compiled._generate(prompts, inits, seeds).astype(int) - plain.astype(int)).max() <= 2
