"""Training and validation examples: caption-source mixing, variant mixing (alpha) and the leakage guard.

One training example per real train artwork (so an epoch is N real artworks, as in the
ICCV work): its image, the captions it may be trained on, and the images of its augmented
variants. Each time an example is drawn, :func:`draw_image` swaps the image for a variant
chosen uniformly with probability ``alpha`` (``ArtpediaDataset._get_image``'s rule),
:func:`draw_caption` picks one caption uniformly, and with ``auto_augment`` the decoded train
image goes through torchvision's AutoAugment (the ICCV work's train transform) before the
family's processor. Validation images never pass through here.
"""

from __future__ import annotations

import functools
import logging
import random

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.collate_fn import ArrowBatchCollateFn

from artray import corpus
from artray.errors import UserError
from artray.images import ImageError, decode, header
from artray.outputs import read_captions, read_variants
from artray.train.config import TrainConfig

log = logging.getLogger("artray.train")

TRAIN_SCHEMA = pa.schema([
    pa.field("artwork_id", pa.string()),
    pa.field("image", pa.binary()),
    pa.field("captions", pa.list_(pa.string())),
    pa.field("variants", pa.list_(pa.binary())),
])


class LeakageError(UserError, ValueError):
    """Something derived from a val/test artwork would reach training."""


class TrainImageError(UserError, ValueError):
    """A train or validation image over the pixel limit: the loader must not decode it."""


def check_images(rows: list[dict], max_pixels: int, source: str) -> None:
    """Read every image's header (no pixels decoded) before any worker starts; refuse the first one over
    `max_pixels` (a decompression bomb), naming the artwork. (A corrupt image fails in the loader itself.)"""
    for r in rows:
        blobs = [("image", r["image"])] + [(f"variant {i}", v) for i, v in enumerate(r.get("variants") or [])]
        for what, blob in blobs:
            try:
                header(blob, max_pixels)
            except ImageError as exc:
                if exc.reason != "decompression_bomb":
                    continue
                raise TrainImageError(
                    f"{source}: artwork {r['artwork_id']!r} ({what}): {exc.detail}. Import/ingest refuses such "
                    "images: re-import the corpus (or re-run augment), or raise max_image_pixels if it is trusted"
                ) from exc


def check_leakage(kind: str, ids: list[str], splits: dict[str, str], source: str) -> None:
    """Refuse rows of `kind` whose artwork is not a train artwork of the corpus, naming the first."""
    for aid in ids:
        split = splits.get(aid)
        if split == "train":
            continue
        where = f"a {split} artwork" if split else "an artwork that is not in the corpus"
        n = sum(1 for a in ids if splits.get(a) != "train")
        raise LeakageError(
            f"leakage: {source} holds {kind} of {where}, {aid!r} ({n} such rows in all). Nothing derived "
            f"from val/test artworks may reach training: re-run that stage on the train split only "
            f"(or point the trainer at an output made from this corpus)")


def _read_variants(cfg: TrainConfig, splits: dict[str, str]) -> dict[str, list[bytes]]:
    opts = cfg.storage_options()
    table = read_variants(cfg.variants, opts, columns=["parent_id", "variant", "image", "passed_filter"])
    check_leakage("variants", table.column("parent_id").to_pylist(), splits, f"variants at {cfg.variants}")
    if cfg.only_passed_filter and table.num_rows:
        table = table.filter(pc.invert(pc.fill_null(pc.equal(table["passed_filter"], False), False)))
    out: dict[str, list[bytes]] = {}
    for row in sorted(table.select(["parent_id", "variant", "image"]).to_pylist(),
                      key=lambda r: (r["parent_id"], r["variant"])):
        out.setdefault(row["parent_id"], []).append(row["image"])
    return out


def _read_generated(cfg: TrainConfig, splits: dict[str, str]) -> dict[str, list[str]]:
    opts = cfg.storage_options()
    table = read_captions(cfg.captions, opts, exclude_flags=(),
                          columns=["artwork_id", "captioner", "preset", "text", "flags"])
    mine = table.filter(pc.and_(pc.equal(table["captioner"], cfg.captioner),
                                pc.equal(table["preset"], cfg.caption_preset)))
    if mine.num_rows == 0:
        found = sorted(set(zip(table["captioner"].to_pylist(), table["preset"].to_pylist())))
        raise ValueError(f"no captions by captioner {cfg.captioner!r} with preset {cfg.caption_preset!r} "
                         f"in {cfg.captions}; it holds (captioner, preset) {found}")
    check_leakage("generated captions", mine.column("artwork_id").to_pylist(), splits,
                  f"captions at {cfg.captions} (captioner {cfg.captioner!r})")
    out: dict[str, list[str]] = {}
    flagged = 0
    for aid, text, flags in zip(mine["artwork_id"].to_pylist(), mine["text"].to_pylist(), mine["flags"].to_pylist()):
        if flags:
            flagged += 1
            continue
        out.setdefault(aid, []).append(text)
    log.info("[train] captions: %d by %s, %d flagged and excluded", mine.num_rows, cfg.captioner, flagged)
    return out


def build_train_table(cfg: TrainConfig) -> pa.Table:
    """One row per train artwork with an image and at least one caption (TRAIN_SCHEMA)."""
    opts = cfg.storage_options()
    arts = corpus.read_artworks(cfg.corpus, opts, columns=["artwork_id", "split", "image", "captions"])
    if arts.num_rows == 0:
        raise ValueError(f"no artworks in {cfg.corpus}: import a corpus there first (artray corpus import)")
    splits = dict(zip(arts["artwork_id"].to_pylist(), arts["split"].to_pylist()))
    variants = _read_variants(cfg, splits) if cfg.variants else {}
    generated = _read_generated(cfg, splits) if cfg.caption_source != "human" else {}
    rows, skipped = [], 0
    for r in arts.filter(pc.equal(arts["split"], "train")).to_pylist():
        human = list(r["captions"] or []) if cfg.caption_source in ("human", "both") else []
        caps = human + generated.get(r["artwork_id"], [])
        if not r["image"] or not caps:
            skipped += 1
            continue
        rows.append({"artwork_id": r["artwork_id"], "image": r["image"], "captions": caps,
                     "variants": variants.get(r["artwork_id"], [])})
    if not rows:
        raise ValueError(f"no train artwork of {cfg.corpus} has both an image and a {cfg.caption_source} caption")
    check_images(rows, cfg.max_image_pixels, f"train set of {cfg.corpus}")
    with_var = sum(1 for r in rows if r["variants"])
    log.info("[train] %d artworks (%d skipped: no image or caption), %d with variants, alpha=%s, captions=%s",
             len(rows), skipped, with_var, cfg.alpha, cfg.caption_source)
    return pa.Table.from_pylist(rows, schema=TRAIN_SCHEMA)


def build_val_tables(cfg: TrainConfig, split: str = "val") -> tuple[pa.Table, pa.Table]:
    """(artworks with images, texts pointing at them) of `split`, for retrieval recall and val loss."""
    opts = cfg.storage_options()
    arts = corpus.read_artworks(cfg.corpus, opts, columns=["artwork_id", "split", "image", "captions"])
    arts = arts.filter(pc.and_(pc.equal(arts["split"], split), pc.invert(pc.is_null(arts["image"]))))
    ids = set(arts["artwork_id"].to_pylist())
    texts = corpus.read_texts(cfg.corpus, opts)
    keep = [i for i, a in enumerate(texts["artwork_ids"].to_pylist()) if set(a) & ids]
    texts = texts.take(keep).select(["text_id", "text", "artwork_ids"])
    if arts.num_rows == 0 or texts.num_rows == 0:
        raise ValueError(f"{cfg.corpus} has no {split} artworks with images and texts: validation needs them")
    check_images(arts.select(["artwork_id", "image"]).to_pylist(), cfg.max_image_pixels, f"{split} set of {cfg.corpus}")
    return arts.select(["artwork_id", "image", "captions"]), texts


def draw_image(example: dict, alpha: float, rng: random.Random) -> tuple[bytes, bool]:
    """(image bytes, is_variant): with probability alpha a uniformly chosen variant, if the artwork has one."""
    variants = example.get("variants") or []
    if variants and rng.random() < alpha:
        return variants[rng.randrange(len(variants))], True
    return example["image"], False


def draw_caption(example: dict, rng: random.Random) -> str:
    caps = example["captions"]
    return caps[rng.randrange(len(caps))]


def sample_rng(seed: int, epoch: int, artwork_id: str) -> random.Random:
    """The RNG of one sample's draws in one epoch: the same draws whatever the worker, the batch or the
    thread that prepares it, so a restored or re-sharded epoch draws what the first one did."""
    return random.Random(f"{seed}:{epoch}:{artwork_id}")


def _drawn_params(rng: random.Random, transform_num: int):
    """``AutoAugment.get_params`` with its draws from `rng`: (sub-policy, apply-or-not per op, sign per op)."""
    import torch

    return (rng.randrange(transform_num), torch.tensor([rng.random(), rng.random()]),
            torch.tensor([rng.randrange(2), rng.randrange(2)]))


def auto_augment(image, rng: random.Random):
    """torchvision's ``AutoAugment`` (ImageNet policy, its default, as the ICCV work used it) with its random
    draws taken from `rng`, not torch's global RNG: the same sample in the same epoch is augmented the same
    way on any worker or thread, and the training step's own RNG (dropout) is left alone."""
    from torchvision.transforms import AutoAugment

    transform = AutoAugment()
    transform.get_params = functools.partial(_drawn_params, rng)  # its forward calls self.get_params
    return transform(image.convert("RGB"))


def augment_rng(seed: int, epoch: int, artwork_id: str) -> random.Random:
    """The RNG of one sample's AutoAugment draws in one epoch (apart from `sample_rng`, so turning
    auto_augment on does not change which variant or caption a sample draws)."""
    return random.Random(f"{seed}:{epoch}:{artwork_id}:autoaugment")


class PrepareBatch(ArrowBatchCollateFn):
    """Ray Data's collate step for training: draws each sample's image (alpha) and caption, decodes
    (with the decompression-bomb limit), applies AutoAugment if asked and runs the family's preprocessing.

    `iter_torch_batches` runs it in a background thread, a batch ahead of the training step, so the
    CPU work overlaps the GPU's. Returns ``(model inputs, rows, variants drawn)``; the caller moves the
    inputs to its device (`pin_memory`: in page-locked memory, for an asynchronous copy to a GPU).
    """

    def __init__(self, cfg: TrainConfig, family, epoch: int, pin_memory: bool = False):
        self.cfg, self.family, self.epoch, self.pin_memory = cfg, family, epoch, pin_memory

    def __call__(self, batch: pa.Table) -> tuple[dict, int, int]:
        rows = batch.to_pylist()
        rngs = [sample_rng(self.cfg.seed, self.epoch, r["artwork_id"]) for r in rows]
        drawn = [draw_image(r, self.cfg.alpha, g) for r, g in zip(rows, rngs)]
        images = [decode(b, self.cfg.max_image_pixels) for b, _ in drawn]
        if self.cfg.auto_augment:
            images = [auto_augment(im, augment_rng(self.cfg.seed, self.epoch, r["artwork_id"]))
                      for im, r in zip(images, rows)]
        inputs = self.family.train_batch(images, [draw_caption(r, g) for r, g in zip(rows, rngs)])
        if self.pin_memory:
            from artray.train.batches import pin

            inputs = pin(inputs)
        return inputs, len(rows), sum(v for _, v in drawn)
