"""One row per key in a stage output: dedup on read, and the compaction that repairs an output for good.

Outputs written before run leases existed (`artray.lease`) can hold the same key twice: two runs
into one output each committed it. Readers keep the first row of each key (`first_per_key`), and
the next run of the stage rewrites the shards that hold the extra rows (`compact`): each such shard
is replaced by a shard without them (written atomically first, the old shard deleted after), so a
crash in between leaves duplicates that the next run removes again, never a lost row.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from artray import storage
from artray.storage import SHARD_PATH, StorageOptions

logger = logging.getLogger(__name__)


def first_per_key(table: pa.Table, key: str) -> pa.Table:
    """`table` with only the first row of each `key` value (unchanged, and no copy, when keys are unique)."""
    if table.num_rows < 2 or pc.count_distinct(table[key], mode="all").as_py() == table.num_rows:
        return table
    first = (pa.table({"k": table[key], "i": pa.array(range(table.num_rows), pa.int64())})
             .group_by("k", use_threads=False).aggregate([("i", "min")]))
    return table.take(pc.take(first["i_min"], pc.sort_indices(first["i_min"])))  # first rows, in table order


@dataclass
class Compaction:
    """What `compact` found and did: the keys committed (one row each now), rows and shards rewritten."""

    keys: set
    removed: int = 0  # duplicate rows removed
    shards: int = 0  # shards rewritten (or deleted when only duplicates were left)


def compact(dir_uri: str, schema: pa.Schema, key: str, tag: str, options: StorageOptions) -> Compaction:
    """The keys committed under `dir_uri`; shards holding a second row of a key are rewritten without it.

    A key's row is kept in the first shard (by name: by run, oldest first) that holds it, once. The
    scan reads only the key column (and each row's shard), so an output without duplicates costs what
    listing its committed keys costs.
    """
    uris = storage.list_files(dir_uri, ".parquet", options)
    scan = storage.read_shards(uris, schema, options, columns=[key], with_path=True)
    keys = scan[key].to_pylist()
    done = set(keys)
    if len(done) == len(keys):
        return Compaction(done)
    paths = scan[SHARD_PATH].to_pylist()
    owner: dict = {}
    for k, p in zip(keys, paths):
        if k not in owner or p < owner[k]:
            owner[k] = p
    per_shard = Counter(zip(paths, keys))
    affected = sorted({p for (p, k), n in per_shard.items() if n > 1 or owner[k] != p})
    uri_of = {storage.filesystem(u, options)[1]: u for u in uris}
    result = Compaction(done)
    for n, path in enumerate(affected):
        uri = uri_of[path]
        table = storage.read_parquet(uri, options)
        seen: set = set()
        keep = []
        for k in table[key].to_pylist():
            keep.append(owner[k] == path and k not in seen)
            seen.add(k)
        kept = table.filter(pa.array(keep, pa.bool_()))
        result.removed += table.num_rows - kept.num_rows
        result.shards += 1
        if kept.num_rows:
            storage.write_parquet_atomic(kept, storage.join(dir_uri, f"part-{tag}-dedup-{n:05d}.parquet"), options)
        storage.delete(uri, options)
    logger.warning("%s: removed %d duplicate rows (%d shards rewritten); every key now has one row",
                   dir_uri, result.removed, result.shards)
    return result
