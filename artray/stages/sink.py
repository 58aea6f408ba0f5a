"""Committing a Ray Data stage's results: rows to `<output>/<table>/`, failures to `<output>/_failures/`.

Every map step of an artray stage returns, for each input row, one *result row*: the
output schema's columns plus

    _ok (bool)  _key (str)  _file (str)  _reason (str)  _detail (str)  _retryable (bool)

`StageSink` (a `ray.data.Datasink`) writes the rows with ``_ok`` as atomic Parquet shards
and the others as failure rows. Shard names are ``part-<run id>-w<write task>-<n>``:
deterministic per write task, so a write task Ray retries overwrites its own shards
instead of duplicating rows, and a resumed run never touches an earlier run's shards.
`BatchCommitter` does the same from inside the map step itself (no write tasks; shards
named after the batch's keys), for stages whose rows (downloaded images) cost more to move
to a write task than to write where they are made.

Resume reads the committed output back: `artray.outputs.latest_failures` says which keys failed
and whether that was transient, and `consolidate_failures` leaves one row per key (none for
keys that have since succeeded) once a run ends.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from artray import corpus, storage
from artray.console import report
from artray.corpus import FAILURES, shard_name
from artray.schema import FAILURE_SCHEMA, failure_row

RESULT_FIELDS = [
    pa.field("_ok", pa.bool_()),
    pa.field("_key", pa.string()),
    pa.field("_file", pa.string()),
    pa.field("_reason", pa.string()),
    pa.field("_detail", pa.string()),
    pa.field("_retryable", pa.bool_()),
]


def result_schema(schema: pa.Schema, *extra: pa.Field) -> pa.Schema:
    """The schema of a map step's result rows: `schema` + the result columns (+ `extra` stats)."""
    return pa.schema(list(schema) + RESULT_FIELDS + list(extra))


def ok_result(row: dict, key: str) -> dict:
    return {**row, "_ok": True, "_key": key, "_file": None, "_reason": None, "_detail": None, "_retryable": False}


def failed_result(row: dict, key: str, reason: str, detail: str, *, file: str | None = None,
                  retryable: bool = False) -> dict:
    return {**row, "_ok": False, "_key": key, "_file": file, "_reason": reason, "_detail": detail,
            "_retryable": retryable}


def split_results(table: pa.Table, schema: pa.Schema, stage: str,
                  sum_columns: tuple[str, ...] = ()) -> tuple[pa.Table, list[dict], dict]:
    """Result rows → (the ``_ok`` rows as `schema`, a failure row for each other row, this table's stats)."""
    ok = pc.fill_null(table["_ok"], False)
    stats = {"written": 0, "failed": Counter(), **{c: pc.sum(table[c]).as_py() or 0 for c in sum_columns}}
    failures = []
    failed = table.filter(pc.invert(ok)).select(["_key", "_file", "_reason", "_detail", "_retryable"])
    for row in failed.to_pylist():
        failures.append(failure_row(stage, row["_reason"], row["_detail"], key=row["_key"], file=row["_file"],
                                    retryable=bool(row["_retryable"])))
        stats["failed"][row["_reason"]] += 1
    good = table.filter(ok).select(schema.names).cast(schema)
    stats["written"] = good.num_rows
    return good, failures, stats


def commit_shards(table: pa.Table, dir_uri: str, tag: str, shard_rows: int, options: storage.StorageOptions,
                  first: int = 0) -> int:
    """Commit `table` as atomic shards ``part-<tag>-<n>`` of at most shard_rows rows; returns the next n."""
    index = first
    for i in range(0, table.num_rows, shard_rows):
        storage.write_parquet_atomic(table.slice(i, shard_rows), storage.join(dir_uri, shard_name(index, tag)), options)
        index += 1
    return index


def total_stats(parts, sum_columns: tuple[str, ...] = ()) -> dict:
    """The stage's stats from its parts' (write tasks' or batches'): rows written, failures by reason, sums."""
    out: dict = {"written": 0, "failed": Counter(), **{c: 0 for c in sum_columns}}
    for part in parts:
        out["written"] += part["written"]
        out["failed"].update(part["failed"])
        for c in sum_columns:
            out[c] += part[c]
    out["failed"] = dict(sorted(out["failed"].items()))
    return out


class StageSink(Datasink[dict]):
    """Atomic shard writer for one stage's result rows; `stats` is filled on the driver."""

    def __init__(self, output: str, table: str, schema: pa.Schema, stage: str, run_id: str,
                 options: storage.StorageOptions, shard_rows: int = 500, sum_columns: tuple[str, ...] = (),
                 progress=None):
        self.output, self.table, self.schema, self.stage = output, table, schema, stage
        self.run_id, self.options, self.shard_rows, self.sum_columns = run_id, options, shard_rows, sum_columns
        self.progress = progress  # artray.console's counter of the stage's progress line (None: none)
        self.stats: dict = {"written": 0, "failed": {}, **{c: 0 for c in sum_columns}}

    def write(self, blocks, ctx) -> dict:
        tag = f"{self.run_id}-w{ctx.task_idx:05d}"
        bad = corpus.ShardWriter(storage.join(self.output, FAILURES), FAILURE_SCHEMA, 10 * self.shard_rows, tag,
                                 self.options)
        parts, pending, index = [], [], 0
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            if table.num_rows == 0:
                continue
            good, failures, stats = split_results(table, self.schema, self.stage, self.sum_columns)
            for row in failures:
                bad.add(row)
            parts.append(stats)
            pending.append(good)
            if sum(t.num_rows for t in pending) >= self.shard_rows:
                index, pending = self._commit(pending, tag, index), []
        self._commit(pending, tag, index)
        bad.flush()
        stats = total_stats(parts, self.sum_columns)
        report(self.progress, stats["written"], sum(stats["failed"].values()))
        return stats

    def _commit(self, tables: list[pa.Table], tag: str, index: int) -> int:
        """Write `tables` as shards of at most shard_rows rows; returns the next shard index."""
        table = pa.concat_tables(tables) if tables else self.schema.empty_table()
        return commit_shards(table, storage.join(self.output, self.table), tag, self.shard_rows, self.options, index)

    def on_write_complete(self, write_result) -> None:
        self.stats = total_stats(write_result.write_returns, self.sum_columns)


class BufferedStageSink(StageSink):
    """StageSink whose write tasks get at least shard_rows rows (Ray Data buffers them), so each commits
    full shards instead of one small shard per map batch: fewer files and write tasks, at the price of
    up to shard_rows uncommitted rows redone after a crash."""

    @property
    def min_rows_per_write(self) -> int:
        return self.shard_rows


class BatchCommitter:
    """Commits one map batch's result rows from inside the Ray Data UDF that made them, with no Write
    operator behind it: the rows go to ``<output>/<table>/`` and the failures to ``_failures/`` as shards
    named after the run and a digest of the batch's keys, so a batch that Ray runs again (its actor
    died) rewrites the same shards instead of adding rows. `__call__` returns the batch's stats as a
    one-row table; `collect` sums them on the driver. It saves moving every row to a write task (for
    ingest: 15 % of the CPU), at the price of one shard per batch."""

    def __init__(self, output: str, table: str, schema: pa.Schema, stage: str, run_id: str,
                 options: storage.StorageOptions, shard_rows: int = 500, sum_columns: tuple[str, ...] = (),
                 progress=None):
        self.output, self.table, self.schema, self.stage = output, table, schema, stage
        self.run_id, self.options, self.shard_rows, self.sum_columns = run_id, options, shard_rows, sum_columns
        self.progress = progress  # artray.console's counter of the stage's progress line (None: none)

    def __call__(self, results: pa.Table) -> pa.Table:
        good, failures, stats = split_results(results, self.schema, self.stage, self.sum_columns)
        keys = sorted(str(k) for k in results["_key"].to_pylist())
        tag = f"{self.run_id}-b" + hashlib.sha1("\n".join(keys).encode()).hexdigest()[:16]
        commit_shards(good, storage.join(self.output, self.table), tag, self.shard_rows, self.options)
        if failures:
            storage.write_parquet_atomic(pa.Table.from_pylist(failures, schema=FAILURE_SCHEMA),
                                         storage.join(self.output, FAILURES, shard_name(0, tag)), self.options)
        report(self.progress, stats["written"], len(failures))
        return pa.table({"written": [stats["written"]], "failed": [json.dumps(dict(stats["failed"]))],
                         **{c: [stats[c]] for c in self.sum_columns}})

    def collect(self, stats_batches, progress_line=None) -> dict:
        """The stage's stats (as `StageSink.stats`) from the batches `__call__` returned, as they come; each
        batch's counts go to `progress_line` (an `artray.console.StageProgress` without a counter actor)."""
        parts = []
        for batch in stats_batches:
            rows = [{**row, "failed": json.loads(row["failed"])} for row in batch.to_pylist()]
            parts += rows
            if progress_line is not None:
                progress_line.add(sum(r["written"] for r in rows), sum(sum(r["failed"].values()) for r in rows))
        return total_stats(parts, self.sum_columns)


def consolidate_failures(output: str, stage: str, final_keys: set[str], run_id: str,
                         options: storage.StorageOptions) -> list[dict]:
    """Leave one failure row per key of `stage` (the latest) and none for keys in `final_keys`.

    The merged shard is committed before the shards it replaces are deleted; a crash in
    between leaves duplicates that the next run's consolidation removes.
    """
    dir_uri = storage.join(output, FAILURES)
    shards = storage.list_files(dir_uri, ".parquet", options)
    rows = [r for s in shards for r in storage.read_parquet(s, options).select(FAILURE_SCHEMA.names).to_pylist()]
    others, latest = [], {}
    for r in rows:
        if r["stage"] == stage and r["key"] is not None:
            latest[r["key"]] = r
        else:
            others.append(r)
    kept = others + [r for key, r in latest.items() if key not in final_keys]
    if len(kept) != len(rows) or len(shards) > 1:
        if kept:
            merged = pa.Table.from_pylist(kept, schema=FAILURE_SCHEMA)
            storage.write_parquet_atomic(merged, storage.join(dir_uri, shard_name(0, f"{run_id}-merged")), options)
        for shard in shards:
            storage.delete(shard, options)
    return kept


def failure_counts(failures: list[dict], stage: str | None = None) -> dict:
    """The ``_failures`` table in a manifest's counts: rows per reason, and how many a rerun may retry."""
    rows = [r for r in failures if stage is None or r["stage"] == stage]
    return {
        "failures_total": dict(sorted(Counter(r["reason"] for r in rows).items())),
        "failures_retryable": sum(1 for r in rows if r["retryable"]),
    }


def failed_phrase(failed_this_run: dict[str, int]) -> str:
    """``failed N (reason=count, ...)``: the failure part of a stage's one-line summary."""
    reasons = ", ".join(f"{k}={v}" for k, v in failed_this_run.items())
    return f"failed {sum(failed_this_run.values())}" + (f" ({reasons})" if reasons else "")
