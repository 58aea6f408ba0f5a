"""Which variants the augment job generates, and in which batches: the plan, made on the driver.

Only the **train** split is read (a Parquet filter on every corpus shard); val and test rows
never enter the plan, and `read_train` refuses if one slips through.

Batches are planned over the *whole* train split, never over what is still missing:
every (artwork, variant) pair gets a target size (long side `long_side`, sides rounded to
a multiple of 8), pairs of equal size are sorted by (artwork_id, variant) and cut into
batches of `batch_size`. Batched kernels on GPU and CPU are not batch-invariant (the same
image in another batch differs in its last bits), so a resumed run regenerates a batch
with any missing variant *whole*, in exactly the composition a never-interrupted run
used, and keeps only the missing rows. That is what makes resume and re-runs byte-identical.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from artray import corpus, storage
from artray import images as imaging
from artray.corpus import ARTWORKS
from artray.errors import UserError
from artray.schema import ARTWORK_SCHEMA, failure_row

SIDE_MULTIPLE = 8  # SD 1.x/2.x VAEs downsample by 8; diffusers' UNet pads odd latent sizes itself
TRAIN_COLUMNS = ["artwork_id", "split", "image", "image_uri", "width", "height", "captions"]
TRAIN_SCHEMA = pa.schema([ARTWORK_SCHEMA.field(c) for c in TRAIN_COLUMNS])

BATCH_SCHEMA = pa.schema([  # one dataset row = one planned generation batch of equal-size images
    pa.field("batch_id", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("variant_ids", pa.list_(pa.string())),
    pa.field("parents", pa.list_(pa.string())),
    pa.field("variants", pa.list_(pa.int32())),
    pa.field("seeds", pa.list_(pa.int64())),
    pa.field("prompts", pa.list_(pa.string())),
    pa.field("emit", pa.list_(pa.bool_())),  # False: already committed, generated only to keep the batch whole
    pa.field("src_ids", pa.list_(pa.string())),
    pa.field("src_splits", pa.list_(pa.string())),
    pa.field("src_images", pa.list_(pa.binary())),  # encoded bytes, or null when only src_uris has the image
    pa.field("src_uris", pa.list_(pa.string())),
])


class PlanError(UserError, RuntimeError):
    """The input cannot be planned (e.g. a non-train row reached the plan); says what to fix."""


def variant_id(artwork_id: str, variant: int) -> str:
    return f"{artwork_id}#{variant}"


def variant_seed(base_seed: int, artwork_id: str, variant: int) -> int:
    """A stable 63-bit seed from (base seed, artwork, variant): same on every machine and Python run."""
    digest = hashlib.sha256(f"{base_seed}\x1f{artwork_id}\x1f{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # fits int64 and torch.Generator.manual_seed


def plan_seed(seed_mode: str, base_seed: int, artwork_id: str, variant: int) -> int:
    """The seed of one image: ``per_row`` hashes (base seed, artwork, variant); ``per_variant`` is
    ``base seed + variant`` for every artwork (method (A) seeded variant k with k)."""
    return base_seed + variant if seed_mode == "per_variant" else variant_seed(base_seed, artwork_id, variant)


def target_size(width: int, height: int, long_side: int, multiple: int = SIDE_MULTIPLE) -> tuple[int, int]:
    """(w, h) with the long side scaled to `long_side` (up or down), aspect kept, sides multiples of `multiple`."""
    scale = long_side / max(width, height)
    return (max(multiple, round(width * scale / multiple) * multiple),
            max(multiple, round(height * scale / multiple) * multiple))


def make_prompt(captions: list[str], variant: int, caption: str, template: str) -> str:
    """The prompt of one variant: the chosen caption ('first', 'per_variant' or 'all') in `template`."""
    if caption == "first":
        text = captions[0]
    elif caption == "per_variant":
        text = captions[variant % len(captions)]
    else:
        text = " ".join(captions)
    return template.format(caption=text)


def read_train(input_uri: str, options: storage.StorageOptions) -> tuple[pa.Table, dict[str, int]]:
    """The train artworks of a corpus (only the columns augment needs) and the artwork count per split."""
    splits = corpus.split_counts(corpus.read_artworks(input_uri, options, columns=["split"]))
    tables = []
    for shard in storage.list_files(storage.join(input_uri, ARTWORKS), ".parquet", options):
        fs, path = storage.filesystem(shard, options)
        try:
            t = pq.read_table(path, filesystem=fs, columns=TRAIN_COLUMNS, filters=[("split", "=", "train")])
        except OSError as exc:
            raise storage.StorageError(f"could not read {shard}: {exc}") from exc
        tables.append(t.filter(pc.equal(t["split"], "train")).select(TRAIN_COLUMNS).cast(TRAIN_SCHEMA))
    train = pa.concat_tables(tables) if tables else TRAIN_SCHEMA.empty_table()
    if set(train["split"].to_pylist()) - {"train"}:
        raise PlanError("non-train rows reached the augment plan; val/test artworks must never be augmented")
    if corpus.has_duplicates(train, "artwork_id"):
        raise PlanError(f"{input_uri} has duplicate artwork_ids in its train split; re-import it")
    return train, splits


def _header_size(data: bytes, max_pixels: int) -> tuple[tuple[int, int] | None, imaging.ImageError | None]:
    """((w, h), None) from the image header alone, or (None, why not): unreadable or over `max_pixels`."""
    try:
        info = imaging.header(data, max_pixels)
    except imaging.ImageError as exc:
        return None, exc
    return (info.width, info.height), None


def _sizes(train: pa.Table, options: storage.StorageOptions, max_pixels: int) -> tuple[list, list[dict]]:
    """Per artwork: its (w, h) from the corpus columns, else from the image header; plus failure rows."""
    rows = train.select(["artwork_id", "image", "image_uri", "width", "height"]).to_pylist()
    sizes: list = [None] * len(rows)
    bad: dict[int, imaging.ImageError] = {}
    fails: list[dict] = []
    need_read = []
    for i, r in enumerate(rows):
        if r["width"] and r["height"]:
            sizes[i] = (r["width"], r["height"])
        elif r["image"] is not None:
            sizes[i], error = _header_size(r["image"], max_pixels)
            if error:
                bad[i] = error
        elif r["image_uri"]:
            need_read.append(i)

    def read(i):
        try:
            return _header_size(storage.read_bytes(rows[i]["image_uri"], options), max_pixels), None
        except storage.StorageError as exc:
            return (None, None), str(exc)
    with ThreadPoolExecutor(8) as pool:
        for i, ((size, error), err) in zip(need_read, pool.map(read, need_read)):
            sizes[i] = size
            if error:
                bad[i] = error
            if err:
                fails.append(failure_row("augment", "unreadable_image", f"{err}; fix the path or re-run ingest",
                                         key=rows[i]["artwork_id"], file=rows[i]["image_uri"], retryable=True))
    unreadable = {f["key"] for f in fails}
    for i, r in enumerate(rows):
        if sizes[i] is None and r["artwork_id"] not in unreadable:
            if i in bad:  # an unreadable header, or a decompression bomb
                reason, detail = bad[i].reason, f"{bad[i].detail}; replace the image in the corpus"
            elif r["image"] is not None or r["image_uri"]:
                reason, detail = "undecodable_image", "the image header is unreadable; replace the image in the corpus"
            else:
                reason, detail = "missing_image", ("the artwork has no image bytes and no image_uri; "
                                                   "run `artray corpus ingest` first")
            fails.append(failure_row("augment", reason, detail, key=r["artwork_id"], file=r["image_uri"]))
    return sizes, fails


def make_plan(train: pa.Table, cfg, done: set[str], failed: dict[str, bool],
              options: storage.StorageOptions) -> tuple[list[pa.Table], list[dict], dict]:
    """(one-row batch tables still to run, failure rows found while planning, counts)."""
    sizes, fails = _sizes(train, options, cfg.max_image_pixels)
    unplannable = {f["key"] for f in fails}
    ids = train["artwork_id"].to_pylist()
    captions = train["captions"].to_pylist()
    items = defaultdict(list)  # (w, h) → [(artwork_id, variant, row index)]
    for i, aid in enumerate(ids):
        if aid in unplannable:
            continue
        if not captions[i]:
            fails.append(failure_row("augment", "empty_caption", "the artwork has no caption to prompt with; "
                                     "add one in the corpus", key=aid))
            continue
        w, h = target_size(*sizes[i], cfg.long_side)
        items[(w, h)].extend((aid, v, i) for v in range(cfg.variants))

    skip = {a for a, retryable in failed.items() if not retryable} if not cfg.retry_failed else set()
    batches: list[pa.Table] = []
    counts = {"planned_variants": 0, "done": 0, "skipped_failed": 0, "to_generate": 0, "regenerated_for_batch": 0}
    known = sum(1 for f in fails if f["key"] in skip)  # failed for good in an earlier run: not recorded again
    fails = [f for f in fails if f["key"] not in skip]
    counts["skipped_failed"] += known * cfg.variants
    images, uris, splits = train["image"], train["image_uri"].to_pylist(), train["split"].to_pylist()
    for (w, h) in sorted(items):
        group = sorted(items[(w, h)])
        for start in range(0, len(group), cfg.batch_size):
            chunk = [(a, v, i) for a, v, i in group[start:start + cfg.batch_size]]
            counts["planned_variants"] += len(chunk)
            live = [(a, v, i) for a, v, i in chunk if a not in skip]
            counts["skipped_failed"] += len(chunk) - len(live)
            emit = [variant_id(a, v) not in done for a, v, _ in live]
            counts["done"] += sum(1 for a, v, _ in chunk if variant_id(a, v) in done)
            if not any(emit):
                continue
            counts["to_generate"] += sum(emit)
            counts["regenerated_for_batch"] += len(emit) - sum(emit)
            src = sorted({i for _, _, i in live})
            batches.append(pa.Table.from_pylist([{
                "batch_id": f"{w}x{h}/{start // cfg.batch_size:06d}", "width": w, "height": h,
                "variant_ids": [variant_id(a, v) for a, v, _ in live], "parents": [a for a, _, _ in live],
                "variants": [v for _, v, _ in live],
                "seeds": [plan_seed(cfg.seed_mode, cfg.seed, a, v) for a, v, _ in live],
                "prompts": [make_prompt(captions[i], v, cfg.caption, cfg.prompt_template) for _, v, i in live],
                "emit": emit, "src_ids": [ids[i] for i in src], "src_splits": [splits[i] for i in src],
                "src_images": [images[i].as_py() for i in src], "src_uris": [uris[i] for i in src],
            }], schema=BATCH_SCHEMA))
    return batches, fails, counts
