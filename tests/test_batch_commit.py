"""`BatchCommitter`, the in-actor commit of ingest: a batch that Ray runs again (its actor died after
committing) rewrites its own shards, so the output never holds a row twice; failures land in
`_failures` naming the key and file; the driver's totals add up over batches."""

from __future__ import annotations

import pyarrow as pa
import pytest

from artray import corpus, storage
from artray.corpus import FAILURES
from artray.stages.sink import BatchCommitter, failed_result, ok_result, result_schema
from artray.storage import StorageOptions

SCHEMA = pa.schema([("artwork_id", pa.string()), ("width", pa.int64())])
RESULTS = result_schema(SCHEMA, pa.field("_bytes", pa.int64()))


def _batch(ids: list[str], bad: set[str] = frozenset()) -> pa.Table:
    rows = []
    for i, aid in enumerate(ids):
        row = {"artwork_id": aid, "width": 100 + i}
        out = (failed_result(row, aid, "not_found", "HTTP 404", file=f"http://x/{aid}.jpg") if aid in bad
               else ok_result(row, aid))
        rows.append({**out, "_bytes": 10})
    return pa.Table.from_pylist(rows, schema=RESULTS)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_batch_run_twice_leaves_its_rows_once(where, tmp_path, request):
    if where == "s3":
        opts = StorageOptions(endpoint_url=request.getfixturevalue("s3_endpoint"))
        out = f"{request.getfixturevalue('s3_bucket')}/out"
    else:
        opts, out = StorageOptions(), str(tmp_path / "out")
    commit = BatchCommitter(out, "artworks", SCHEMA, "ingest", "20261204T000000-run1", opts, shard_rows=3,
                            sum_columns=("_bytes",))
    first, second = _batch(["a", "b", "c", "d", "e"], bad={"c"}), _batch(["f", "g"])

    commit(first)  # its actor dies after committing: this return never reaches the driver
    stats = [commit(second), commit(first)]  # Ray Data runs the first batch again, on another actor
    shards = storage.list_files(storage.join(out, "artworks"), ".parquet", opts)
    ids = corpus.read_table(storage.join(out, "artworks"), SCHEMA, opts)["artwork_id"].to_pylist()
    assert sorted(ids) == ["a", "b", "d", "e", "f", "g"]  # each once; the failed one not among them
    assert len(shards) == 3  # first batch: 4 rows in shards of 3 -> 2; second batch: 1
    assert all("20261204T000000-run1-b" in s for s in shards)

    failures = corpus.read_failures(out, opts).to_pylist()
    assert [(f["key"], f["reason"], f["file"], f["stage"]) for f in failures] == [
        ("c", "not_found", "http://x/c.jpg", "ingest")]
    assert len(storage.list_files(storage.join(out, FAILURES), ".parquet", opts)) == 1

    totals = commit.collect(stats)
    assert totals == {"written": 2 + 4, "failed": {"not_found": 1}, "_bytes": 20 + 50}
