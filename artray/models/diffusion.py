"""Stable Diffusion img2img, the generator of method (A)'s synthetic artwork variations.

Method (A) ran AUTOMATIC1111's "Euler a" sampler; the diffusers equivalent is
``EulerAncestralDiscreteScheduler`` built from the checkpoint's own scheduler config.
The safety checker is not loaded: artworks (nudes in paintings) trip it constantly and
the augmentation must be deterministic per seed, not silently blacked out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from artray.models.resolve import resolve_model_path
from artray.models.weights import pretrained_kwargs
from artray.storage import StorageOptions

if TYPE_CHECKING:
    from diffusers import StableDiffusionImg2ImgPipeline


@dataclass
class Img2ImgBundle:
    """A ready img2img pipeline (eval mode, on `device`)."""

    pipeline: StableDiffusionImg2ImgPipeline
    device: str
    dtype: torch.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Image sides must be multiples of this (8 for SD 1.x)."""
        return int(self.pipeline.vae_scale_factor)


def load_img2img(
    name_or_path: str,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    storage_options: StorageOptions | None = None,
) -> Img2ImgBundle:
    """Load an SD 1.x checkpoint (hub id, local folder or s3:// folder) as an img2img pipeline.

    Same call for ``runwayml/stable-diffusion-v1-5`` and the tiny test checkpoint;
    weights load as safetensors (pickle only with ``ARTRAY_ALLOW_PICKLE=1``, ``artray.models.weights``).
    """
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        StableDiffusionImg2ImgPipeline,
    )

    path = resolve_model_path(name_or_path, storage_options)
    dtype = dtype or torch.float32
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        path,
        safety_checker=None,
        requires_safety_checker=False,
        dtype=dtype,
        **pretrained_kwargs(path),
    )
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(device)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return Img2ImgBundle(pipeline=pipe, device=device, dtype=dtype)


# --- long prompts: AUTOMATIC1111's chunked CLIP encoding -------------------------------------------
# diffusers itself cuts prompts at the tokenizer's 77 positions; its long-prompt support lives in a
# community pipeline (lpw_stable_diffusion, fetched from the hub at load time) and in `compel`, both with
# their own weighting syntax. Method (A) made its variants with AUTOMATIC1111's web UI, whose encoding is
# this: 75 prompt tokens per chunk, each chunk BOS + tokens + EOS padding (77 positions), the text
# encoder run per chunk, the chunk embeddings concatenated along the sequence.
CHUNK_TOKENS = 75  # prompt tokens per chunk; with BOS and EOS the text encoder's 77 positions
COMMA_BACKTRACK = 20  # the web UI's default: a chunk full within this many tokens of a comma breaks after it


def prompt_chunks(tokenizer, text: str, chunk: int = CHUNK_TOKENS, backtrack: int = COMMA_BACKTRACK) -> list[list[int]]:
    """Token ids of `text` in chunks of ``chunk + 2`` ids: BOS, up to `chunk` tokens, EOS padding.

    When a chunk fills up within `backtrack` tokens after a comma, the tokens after the comma move to
    the next chunk (the web UI's ``comma_padding_backtrack``). An empty text is one chunk of BOS + EOS.
    """
    ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[list[int]] = []
    current: list[int] = []
    last_comma = -1
    for tok in ids:
        if tok == comma:
            last_comma = len(current)
        elif backtrack and len(current) == chunk and last_comma != -1 and len(current) - last_comma <= backtrack:
            chunks.append(current[:last_comma + 1])
            current, last_comma = current[last_comma + 1:], -1
        if len(current) == chunk:
            chunks.append(current)
            current, last_comma = [], -1
        current.append(tok)
    if current or not chunks:
        chunks.append(current)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [[bos, *c] + [eos] * (chunk + 1 - len(c)) for c in chunks]


def chunked_prompt_embeds(pipe, prompts: list[str], negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt_embeds, negative_prompt_embeds) for the img2img call, each (len(prompts), n * 77, dim).

    n is the most chunks of any prompt or of the negative prompt; shorter ones are padded with the
    embedding of an empty chunk (as the web UI pads a batch and its unconditional prompt), so one
    tensor holds the batch. Every chunk of the batch goes through the text encoder in one call.
    """
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    per_prompt = [prompt_chunks(tokenizer, p) for p in prompts]
    negative = prompt_chunks(tokenizer, negative_prompt)
    empty = prompt_chunks(tokenizer, "")[0]
    n = max(len(negative), *(len(c) for c in per_prompt))
    rows = [c + [empty] * (n - len(c)) for c in [*per_prompt, negative]]
    ids = torch.tensor(rows, device=encoder.device)  # (B + 1, n, 77)
    with torch.inference_mode():
        hidden = encoder(ids.flatten(0, 1))[0]  # last hidden state, final layer norm applied: diffusers' default
    hidden = hidden.to(encoder.dtype).reshape(len(rows), n * ids.shape[-1], -1)
    return hidden[:-1], hidden[-1:].expand(len(prompts), -1, -1).contiguous()


# --- the GPU fast path ----------------------------------------------------------------------------
def attention_processors(pipe) -> set[str]:
    """Class names of the UNet's attention processors (``AttnProcessor2_0`` = PyTorch SDPA)."""
    return {type(p).__name__ for p in pipe.unet.attn_processors.values()}


def apply_fast_path(pipe, *, channels_last: bool = False, compile_unet: bool = False, vae_slicing: bool = False,
                    vae_tiling: bool = False) -> None:
    """Speed settings that keep what the pipeline computes: channels_last memory format for the UNet
    and VAE convolutions, ``torch.compile`` of the UNet (one compile per image size and batch size),
    VAE slicing (decode one image at a time) and tiling (decode in overlapping tiles: large images
    in less memory, visibly different pixels at the seams). Attention is PyTorch SDPA already
    (diffusers' default processor on torch 2, `attention_processors`)."""
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if vae_slicing:
        pipe.vae.enable_slicing()
    if vae_tiling:
        pipe.vae.enable_tiling()
    if compile_unet:
        pipe.unet.compile(fullgraph=True)
