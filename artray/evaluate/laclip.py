"""LACLIP (CulTi, ICDAR 2025): training-free local alignment re-scoring of image–text pairs.

The method as the CulTi paper's figure draws it (the default here): k random crops p_1..p_k of
image I go through the (fine-tuned) image encoder, giving local embeddings u_1..u_k beside the
global u_I; crop j weighs ``w_j = u_j·u_I`` (its similarity to the whole image, used as it is);
the score of I and text T is ``Σ_j w_j (u_j·u_T)``, with no normalisation and no global term.

The paper leaves k, the crop scale, how the crops are drawn and the image→text use unstated
(REFERENCE.md (C)): k = 4 crops of half the image side, drawn at random positions seeded per
artwork, are artray's assumptions (options). artray's own variants stay as named options:
``layout="grid"`` (evenly spaced crops), ``weighting="softmax"`` (``softmax(u_j·u_I / τ)``) or
``"sum"`` (similarities clipped at 0 and normalised to sum 1), and ``global_weight`` (the final
score ``(1 - g)·local + g·(u_I·u_T)``). Since the local score equals ``(Σ_j w_j u_j)·u_T``, it
is one matrix product, and the same score matrix serves text→image and image→text (transposed).
With one full-image crop and ``global_weight=0`` the score is exactly the global score.

`laclip_scores` works on embeddings; `laclip_rerank` takes an encoder and PIL images, and is
what a Serve re-ranker calls on its top-k candidates.
"""

from __future__ import annotations

import hashlib
import random
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field


class LaclipOptions(BaseModel):
    """LACLIP settings (the `laclip` section of `artray evaluate retrieval`)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="also score every model with LACLIP")
    crops: int = Field(4, ge=1, description="k, crops per image (not stated in the paper: an assumption)")
    scale: float = Field(0.5, gt=0, le=1, description="crop side as a fraction of the image side (an assumption)")
    layout: Literal["random", "grid"] = Field(
        "random", description="random: the paper's random crops, seeded per artwork; grid: evenly spaced")
    seed: int = Field(0, description="seed of the random crop positions (with the artwork id)")
    weighting: Literal["similarity", "softmax", "sum"] = Field(
        "similarity", description="similarity: the paper's w_j = crop·image as it is; softmax: softmax(sim/temperature); "
        "sum: sim clipped at 0 and normalised to sum 1")
    temperature: float = Field(0.1, gt=0, description="softmax temperature (weighting: softmax)")
    global_weight: float = Field(0.0, ge=0, le=1, description="mix of the global score (0: local only, the paper)")


def crop_boxes(width: int, height: int, opts: LaclipOptions, key: str = "") -> list[tuple[int, int, int, int]]:
    """k (left, top, right, bottom) boxes; `key` (the artwork id) seeds the random layout."""
    cw, ch = max(1, round(width * opts.scale)), max(1, round(height * opts.scale))
    if opts.layout == "random":
        digest = hashlib.sha256(f"{opts.seed}:{key}".encode()).digest()
        rng = random.Random(int.from_bytes(digest[:8], "big"))
        starts = [(rng.randint(0, width - cw), rng.randint(0, height - ch)) for _ in range(opts.crops)]
    else:
        side = int(np.ceil(np.sqrt(opts.crops)))
        xs = np.linspace(0, width - cw, side).round().astype(int) if side > 1 else [(width - cw) // 2]
        ys = np.linspace(0, height - ch, side).round().astype(int) if side > 1 else [(height - ch) // 2]
        starts = [(int(x), int(y)) for y in ys for x in xs][:opts.crops]
    return [(x, y, x + cw, y + ch) for x, y in starts]


def crops_of(image: Image.Image, opts: LaclipOptions, key: str = "") -> list[Image.Image]:
    """The k crops of `image`; a box covering the whole image gives the image itself (no resampling)."""
    full = (0, 0, image.width, image.height)
    return [image if box == full else image.crop(box) for box in crop_boxes(image.width, image.height, opts, key)]


def crop_weights(crop_emb: np.ndarray, image_emb: np.ndarray, opts: LaclipOptions) -> np.ndarray:
    """(n_images, k) weights from each crop's similarity to its image's global embedding."""
    sim = np.einsum("nkd,nd->nk", crop_emb.astype(np.float64), image_emb.astype(np.float64))
    if opts.weighting == "similarity":
        return sim
    if opts.weighting == "softmax":
        z = sim / opts.temperature
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)
    pos = np.clip(sim, 0, None)
    total = pos.sum(axis=1, keepdims=True)
    uniform = np.full_like(pos, 1.0 / pos.shape[1])
    return np.where(total > 0, pos / np.where(total > 0, total, 1), uniform)


def laclip_scores(crop_emb: np.ndarray, image_emb: np.ndarray, text_emb: np.ndarray,
                  opts: LaclipOptions) -> np.ndarray:
    """(n_images, n_texts) LACLIP scores from crop (n, k, d), global image (n, d) and text (m, d) embeddings."""
    crop_emb, image_emb, text_emb = (np.asarray(a, np.float64) for a in (crop_emb, image_emb, text_emb))
    if crop_emb.ndim != 3 or crop_emb.shape[0] != image_emb.shape[0] or crop_emb.shape[2] != image_emb.shape[1]:
        raise ValueError(f"crop embeddings {crop_emb.shape} do not fit image embeddings {image_emb.shape}")
    if text_emb.shape[1] != image_emb.shape[1]:
        raise ValueError(f"text embeddings of dim {text_emb.shape[1]} do not fit image embeddings of dim "
                         f"{image_emb.shape[1]}")
    weights = crop_weights(crop_emb, image_emb, opts)
    local = np.einsum("nk,nkd->nd", weights, crop_emb) @ text_emb.T
    if opts.global_weight == 0:
        return local
    return (1 - opts.global_weight) * local + opts.global_weight * (image_emb @ text_emb.T)


def encode_crops(encoder, images: list[Image.Image], opts: LaclipOptions, keys: list[str] | None = None) -> np.ndarray:
    """(n, k, d) crop embeddings of `images` with `encoder` (an ``artray.encoders.Encoder``)."""
    keys = keys or [""] * len(images)
    crops = [c for im, key in zip(images, keys) for c in crops_of(im, opts, key)]
    return encoder.encode_images(crops).reshape(len(images), opts.crops, -1)


def laclip_rerank(encoder, images: list[Image.Image], text_emb: np.ndarray, opts: LaclipOptions,
                  image_emb: np.ndarray | None = None, keys: list[str] | None = None) -> np.ndarray:
    """LACLIP scores (n_images, n_texts) of candidate `images` against `text_emb` (m, d) — a
    Serve re-ranker's entry point: text→image re-ranks a column, image→text a row. `image_emb`
    (the index's vectors of these images) saves one forward pass; `keys` seed random crops."""
    if image_emb is None:
        image_emb = encoder.encode_images(images)
    return laclip_scores(encode_crops(encoder, images, opts, keys), image_emb, np.atleast_2d(text_emb), opts)
