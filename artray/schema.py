"""Arrow schemas of the rows every artray stage reads and writes (see DESIGN.md, "The data contract").

A corpus is two tables keyed by stable string ids:

* **artworks** — one row per image (`ARTWORK_SCHEMA`).
* **texts** — one row per caption/description (`TEXT_SCHEMA`), pointing at one or more
  artworks. Artpedia and ArtCap texts point at exactly one artwork; CulTi texts may point
  at several, and several texts may point at one image. Retrieval evaluation reads the
  texts table so that both directions of that many-to-many relation survive.

Every stage also writes a **failures** table (`FAILURE_SCHEMA`): a row that could not be
processed is recorded there with a reason and never disappears silently.
"""

from __future__ import annotations

import pyarrow as pa

SPLITS = ("train", "val", "test")

# Spellings found in the wild, mapped to the canonical split names.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}

ARTWORK_SCHEMA = pa.schema(
    [
        pa.field("artwork_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("image", pa.binary()),  # encoded bytes (JPEG/PNG/...), null until fetched
        pa.field("image_uri", pa.string()),  # where the image was read from, if a file
        pa.field("img_url", pa.string()),  # remote source URL (Artpedia: Wikimedia)
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("captions", pa.list_(pa.string()), nullable=False),
        pa.field("text_ids", pa.list_(pa.string()), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("year", pa.int32()),
        pa.field("visual_sentences", pa.list_(pa.string())),
        pa.field("contextual_sentences", pa.list_(pa.string())),
    ]
)

TEXT_SCHEMA = pa.schema(
    [
        pa.field("text_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("artwork_ids", pa.list_(pa.string()), nullable=False),
        pa.field("language", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)

# One synthetic variant of a training artwork (augment stage). Enough provenance to
# regenerate it bit-for-bit on the same hardware; joins to artworks on parent_id.
VARIANT_SCHEMA = pa.schema(
    [
        pa.field("variant_id", pa.string(), nullable=False),  # "<parent_id>#<variant>"
        pa.field("parent_id", pa.string(), nullable=False),
        pa.field("variant", pa.int32(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # always "train"
        pa.field("image", pa.binary(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("prompt_truncated", pa.bool_(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("strength", pa.float32(), nullable=False),
        pa.field("guidance", pa.float32(), nullable=False),
        pa.field("steps", pa.int32(), nullable=False),
        pa.field("sampler", pa.string(), nullable=False),
        pa.field("similarity", pa.float32()),  # optional quality filter: CLIP image-image cosine to the parent
        pa.field("passed_filter", pa.bool_()),  # null when the filter is off
    ]
)

# One generated caption or query (caption stage).
CAPTION_SCHEMA = pa.schema(
    [
        pa.field("caption_id", pa.string(), nullable=False),  # "<artwork_id>|<captioner>|<preset>"
        pa.field("artwork_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("captioner", pa.string(), nullable=False),  # short name used to select captions for training
        pa.field("preset", pa.string(), nullable=False),  # caption / query / a user-defined name
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("flags", pa.list_(pa.string()), nullable=False),  # refusal / loop / empty / truncated
        pa.field("model", pa.string(), nullable=False),
        pa.field("revision", pa.string()),
        pa.field("generation", pa.string(), nullable=False),  # JSON of the generation settings
    ]
)

# One embedding of an artwork image or a text (embed stage). `vector` is L2-normalised, so an
# inner product is a cosine; its length is the encoder's dim (one dim per output).
EMBEDDING_SCHEMA = pa.schema(
    [
        pa.field("embedding_id", pa.string(), nullable=False),  # "<kind>:<id>", unique per output
        pa.field("id", pa.string(), nullable=False),  # artwork_id (kind image) or text_id (kind text)
        pa.field("kind", pa.string(), nullable=False),  # image / text
        pa.field("model", pa.string(), nullable=False),  # encoder family (a retrieval family of artray.families)
        pa.field("checkpoint", pa.string(), nullable=False),  # hub id, path or URI the weights came from
        pa.field("vector", pa.list_(pa.float32()), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)

FAILURE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string()),  # artwork_id / text_id when known
        pa.field("stage", pa.string(), nullable=False),
        pa.field("file", pa.string()),  # the input file (or URL) the row came from
        pa.field("row", pa.string()),  # line number or JSON key inside that file
        pa.field("reason", pa.string(), nullable=False),  # short machine-readable code
        pa.field("detail", pa.string(), nullable=False),  # what went wrong and how to fix it
        pa.field("retryable", pa.bool_(), nullable=False),
    ]
)


def empty_table(schema: pa.Schema) -> pa.Table:
    """An empty table of `schema` (for stages whose output is legitimately empty)."""
    return schema.empty_table()


def artwork_row(**fields) -> dict:
    """An artwork row dict with every schema column present (missing ones null/empty)."""
    row = {name: None for name in ARTWORK_SCHEMA.names}
    row["captions"] = []
    row["text_ids"] = []
    row.update(fields)
    unknown = set(fields) - set(ARTWORK_SCHEMA.names)
    if unknown:
        raise KeyError(f"not artwork columns: {sorted(unknown)}")
    return row


def failure_row(
    stage: str,
    reason: str,
    detail: str,
    *,
    key: str | None = None,
    file: str | None = None,
    row: str | int | None = None,
    retryable: bool = False,
) -> dict:
    """A failures-table row: what failed, where (file/row), why, and how to fix it (credentials masked)."""
    from artray.redact import redact_text

    return {
        "key": key,
        "stage": stage,
        "file": redact_text(file) if file else file,
        "row": None if row is None else str(row),
        "reason": reason,
        "detail": redact_text(detail) if detail else detail,
        "retryable": retryable,
    }


def normalise_split(value: object) -> str | None:
    """The canonical split name for `value`, or None if it is not a known split."""
    if not isinstance(value, str):
        return None
    return SPLIT_ALIASES.get(value.strip().lower())
