"""A truncated object under a stage's output (what a streaming writer leaves when it dies mid-file,
apache/arrow#40502) is never taken as committed: resume refuses it by name and says what to do."""

from __future__ import annotations

import pyarrow as pa
import pytest

from artray import storage
from artray.dedup import compact  # what resume reads: the committed keys (and repairs duplicates)
from artray.storage import StorageError, StorageOptions

KEYS = pa.schema([pa.field("artwork_id", pa.string())])


def _truncated_shard() -> bytes:
    data = storage.table_to_parquet_bytes(pa.table({"artwork_id": [f"a{i}" for i in range(50)]}))
    return data[: len(data) // 2]


def test_truncated_local_shard_is_refused_by_name(tmp_path):
    good = str(tmp_path / "artworks" / "part-00000.parquet")
    storage.write_parquet_atomic(pa.table({"artwork_id": ["x"]}), good)
    bad = str(tmp_path / "artworks" / "part-00001.parquet")
    storage.write_bytes_atomic(bad, _truncated_shard())
    with pytest.raises(StorageError, match="not a complete Parquet file") as err:
        compact(str(tmp_path / "artworks"), KEYS, "artwork_id", "t", storage.DEFAULT_OPTIONS)
    assert bad in str(err.value) and "delete it" in str(err.value)


def test_truncated_s3_shard_is_refused_by_name(s3_bucket, s3_endpoint):
    opts = StorageOptions(endpoint_url=s3_endpoint)
    bad = f"{s3_bucket}/out/artworks/part-00000.parquet"
    storage.write_bytes_atomic(bad, _truncated_shard(), opts)
    with pytest.raises(StorageError, match="not a complete Parquet file") as err:
        compact(f"{s3_bucket}/out/artworks", KEYS, "artwork_id", "t", opts)
    assert bad in str(err.value)


def test_s3_commit_leaves_only_the_complete_object(s3_bucket, s3_endpoint):
    """The temp key of an S3 commit is gone afterwards; the final object holds every byte."""
    import boto3

    opts = StorageOptions(endpoint_url=s3_endpoint)
    data = storage.table_to_parquet_bytes(pa.table({"artwork_id": [f"a{i}" for i in range(500)]}))
    storage.write_bytes_atomic(f"{s3_bucket}/out/artworks/part-00000.parquet", data, opts)
    listing = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").list_objects_v2(
        Bucket=s3_bucket.removeprefix("s3://"))
    keys = [o["Key"] for o in listing["Contents"] if not o["Key"].endswith("/")]  # pyarrow keeps dir markers
    assert keys == ["out/artworks/part-00000.parquet"]
    assert storage.read_bytes(f"{s3_bucket}/out/artworks/part-00000.parquet", opts) == data
