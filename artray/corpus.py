"""A corpus on storage: layout, sharded atomic writer, and readers.

Layout of a corpus (or any stage output) at a URI::

    <uri>/_manifest.json          written last; its presence means the job finished
    <uri>/artworks/part-*.parquet  artwork rows (ARTWORK_SCHEMA)
    <uri>/texts/part-*.parquet     text rows (TEXT_SCHEMA)
    <uri>/_failures/part-*.parquet failure rows (FAILURE_SCHEMA)

Every shard under these folders is complete (written atomically), so the set of ids in
them is exactly what has been committed; resumable stages read it to skip done work.
"""

from __future__ import annotations

import uuid
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from artray import storage
from artray.dedup import first_per_key
from artray.schema import ARTWORK_SCHEMA, FAILURE_SCHEMA, TEXT_SCHEMA
from artray.storage import DEFAULT_OPTIONS, StorageOptions

MANIFEST = "_manifest.json"
ARTWORKS = "artworks"
TEXTS = "texts"
FAILURES = "_failures"


def shard_name(index: int, run_id: str | None = None) -> str:
    return f"part-{run_id}-{index:05d}.parquet" if run_id else f"part-{index:05d}.parquet"


def new_run_id() -> str:
    """A short id that keeps shards of different (resumed) runs from colliding."""
    return uuid.uuid4().hex[:10]


class ShardWriter:
    """Buffers rows of one table and commits them as atomic Parquet shards."""

    def __init__(
        self,
        dir_uri: str,
        schema: pa.Schema,
        shard_rows: int = 1000,
        run_id: str | None = None,
        options: StorageOptions = DEFAULT_OPTIONS,
    ):
        self.dir_uri = dir_uri
        self.schema = schema
        self.shard_rows = shard_rows
        self.run_id = run_id
        self.options = options
        self._rows: list[dict] = []
        self._next = 0
        self.rows_written = 0
        self.shards: list[str] = []

    def add(self, row: dict) -> None:
        self._rows.append(row)
        if len(self._rows) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        uri = storage.join(self.dir_uri, shard_name(self._next, self.run_id))
        storage.write_parquet_atomic(table, uri, self.options)
        self.shards.append(uri)
        self.rows_written += len(self._rows)
        self._next += 1
        self._rows = []


def read_table(dir_uri: str, schema: pa.Schema, options: StorageOptions = DEFAULT_OPTIONS,
               columns: list[str] | None = None) -> pa.Table:
    """All committed shards under `dir_uri` as one table (empty table if none)."""
    return storage.read_shards(storage.list_files(dir_uri, ".parquet", options), schema, options, columns)


def read_keyed(dir_uri: str, schema: pa.Schema, key: str, options: StorageOptions = DEFAULT_OPTIONS,
               columns: list[str] | None = None) -> pa.Table:
    """The committed rows under `dir_uri`, one per `key` (the first): an output written by two runs at once
    before run leases existed reads as if written once (its next stage run repairs it on storage)."""
    wanted = None if columns is None else list(dict.fromkeys([*columns, key]))
    table = first_per_key(read_table(dir_uri, schema, options, wanted), key)
    return table if columns is None else table.select(columns)


def read_artworks(uri: str, options: StorageOptions = DEFAULT_OPTIONS, columns: list[str] | None = None,
                  unique: bool = True) -> pa.Table:
    """The artwork rows of a corpus, one per `artwork_id` (`read_keyed`). `unique=False` reads every row as
    stored, for checks that must see duplicates (a corrupt input is refused, not thinned)."""
    if not unique:
        return read_table(storage.join(uri, ARTWORKS), ARTWORK_SCHEMA, options, columns)
    return read_keyed(storage.join(uri, ARTWORKS), ARTWORK_SCHEMA, "artwork_id", options, columns)


def read_texts(uri: str, options: StorageOptions = DEFAULT_OPTIONS) -> pa.Table:
    return read_table(storage.join(uri, TEXTS), TEXT_SCHEMA, options)


def read_failures(uri: str, options: StorageOptions = DEFAULT_OPTIONS) -> pa.Table:
    return read_table(storage.join(uri, FAILURES), FAILURE_SCHEMA, options)


def read_manifest(uri: str, options: StorageOptions = DEFAULT_OPTIONS) -> dict | None:
    return storage.read_json(storage.join(uri, MANIFEST), options)


def write_manifest(uri: str, manifest: dict, options: StorageOptions = DEFAULT_OPTIONS) -> None:
    storage.write_json_atomic(storage.join(uri, MANIFEST), manifest, options)


def split_counts(table: pa.Table) -> dict[str, int]:
    if table.num_rows == 0:
        return {}
    return dict(sorted(Counter(table.column("split").to_pylist()).items()))


def summarize(uri: str, options: StorageOptions = DEFAULT_OPTIONS) -> dict:
    """Counts a person wants to see about a corpus: artworks/texts per split, images, failures."""
    artworks = read_artworks(uri, options, columns=["artwork_id", "split", "image_uri", "img_url", "width", "language", "source"])
    texts = read_texts(uri, options)
    failures = read_failures(uri, options)
    with_image = artworks.num_rows - artworks.column("width").null_count if artworks.num_rows else 0
    reasons = Counter(failures.column("reason").to_pylist()) if failures.num_rows else Counter()
    return {
        "uri": uri,
        "artworks": artworks.num_rows,
        "artworks_per_split": split_counts(artworks),
        "with_image": with_image,
        "texts": texts.num_rows,
        "texts_per_split": split_counts(texts),
        "languages": sorted(set(artworks.column("language").to_pylist())) if artworks.num_rows else [],
        "sources": sorted(set(artworks.column("source").to_pylist())) if artworks.num_rows else [],
        "failures": failures.num_rows,
        "failure_reasons": dict(sorted(reasons.items())),
    }


def has_duplicates(table: pa.Table, column: str) -> bool:
    return table.num_rows != pc.count_distinct(table.column(column)).as_py()
