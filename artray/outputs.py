"""Reading what the stages wrote: embeddings, captions, variants, their failures and pinned settings.

The one public place for the readers of stage outputs (evaluate, index, train and serve use
these, never a stage's internals). Every output is a folder of atomic Parquet shards per table
plus ``_failures/``, ``_<stage>_params.json`` (the settings that shaped its rows) and
``_manifest.json`` (written last). Every reader keeps one row per key (`corpus.read_keyed`). Importing this
module starts nothing (no Ray).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from artray import corpus, storage
from artray.schema import CAPTION_SCHEMA, EMBEDDING_SCHEMA, VARIANT_SCHEMA
from artray.stages.caption_flags import EXCLUDE_BY_DEFAULT, usable
from artray.storage import DEFAULT_OPTIONS, StorageOptions

# The table each stage writes under its output URI (ingest writes a corpus: `corpus.ARTWORKS`).
EMBEDDINGS = "embeddings"
CAPTIONS = "captions"
VARIANTS = "variants"


def params_file(stage: str) -> str:
    """Name of the file that pins the settings a stage's committed rows were made with."""
    return f"_{stage}_params.json"


def read_params(uri: str, stage: str, options: StorageOptions = DEFAULT_OPTIONS) -> dict | None:
    """The settings pinned at a `stage` output (e.g. embed: family and checkpoint), None if none yet."""
    return storage.read_json(storage.join(uri, params_file(stage)), options)


def read_embeddings(uri: str, options: StorageOptions = DEFAULT_OPTIONS, columns: list[str] | None = None) -> pa.Table:
    """All committed embedding rows at `uri` (an embed job's output), one per `embedding_id`."""
    return corpus.read_keyed(storage.join(uri, EMBEDDINGS), EMBEDDING_SCHEMA, "embedding_id", options, columns)


def read_variants(uri: str, options: StorageOptions = DEFAULT_OPTIONS, columns: list[str] | None = None) -> pa.Table:
    """All committed variant rows at `uri` (an augment job's output), one per `variant_id`."""
    return corpus.read_keyed(storage.join(uri, VARIANTS), VARIANT_SCHEMA, "variant_id", options, columns)


def read_captions(uri: str, options: StorageOptions = DEFAULT_OPTIONS, captioner: str | None = None,
                  preset: str | None = None, exclude_flags: tuple[str, ...] = EXCLUDE_BY_DEFAULT,
                  columns: list[str] | None = None) -> pa.Table:
    """Caption rows at `uri` of one captioner/preset (default: all), without those carrying `exclude_flags`.

    The default leaves out refusals, loops and empty captions: what training should see.
    Pass ``exclude_flags=()`` to get every row.
    """
    wanted = None if columns is None else list(dict.fromkeys(
        [*columns, *(["captioner"] if captioner else []), *(["preset"] if preset else []),
         *(["flags"] if exclude_flags else [])]))
    table = corpus.read_keyed(storage.join(uri, CAPTIONS), CAPTION_SCHEMA, "caption_id", options, wanted)
    if captioner is not None:
        table = table.filter(pc.equal(table["captioner"], captioner))
    if preset is not None:
        table = table.filter(pc.equal(table["preset"], preset))
    if exclude_flags:
        table = table.filter(pa.array([usable(f, exclude_flags) for f in table["flags"].to_pylist()], pa.bool_()))
    return table if columns is None else table.select(columns)


def latest_failures(uri: str, stage: str, options: StorageOptions = DEFAULT_OPTIONS) -> dict[str, bool]:
    """key → `retryable` of its latest failure row of `stage` at `uri` (shards sort by run id)."""
    failures = corpus.read_failures(uri, options)
    out: dict[str, bool] = {}
    for key, st, retryable in zip(*(failures.column(c).to_pylist() for c in ("key", "stage", "retryable"))):
        if st == stage and key is not None:
            out[key] = retryable
    return out


def permanent_failures(uri: str, stage: str, options: StorageOptions = DEFAULT_OPTIONS) -> set[str]:
    """Keys whose latest `stage` failure at `uri` is permanent (a rerun skips them unless retry_failed)."""
    return {key for key, retryable in latest_failures(uri, stage, options).items() if not retryable}
