"""URIs → filesystems, and atomic writes.

Every artray input and output is a local path or an ``s3://bucket/prefix`` URI. S3
endpoint and credentials come from the standard AWS environment and config files
(``AWS_ACCESS_KEY_ID``, ``~/.aws/credentials``, instance profiles, ``AWS_ENDPOINT_URL``)
or from an explicit endpoint (``--s3-endpoint``), so the same job runs against AWS,
MinIO or a local test server.

Writes are atomic: a shard is serialised completely in memory (or a temp file) and then
committed in one step (``os.replace`` locally; on S3 an upload to a hidden temp key, a size
check, then a server-side copy into place). A crash never
leaves a half-written shard that a later run would take as done (pyarrow keeps a
partial S3 object if a writer raises mid-file, apache/arrow#40502, so we never stream
a Parquet writer straight to S3).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from artray.errors import UserError
from artray.jsonio import dumps_strict


class StorageError(UserError, RuntimeError):
    """A URI could not be read or written; the message names the URI and the fix."""


@dataclass(frozen=True)
class StorageOptions:
    """How to reach object storage. Empty fields fall back to the AWS environment."""

    endpoint_url: str | None = None  # e.g. http://127.0.0.1:9000 for MinIO / a test server
    region: str | None = None

    def resolved_endpoint(self) -> str | None:
        return (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )

    def resolved_region(self) -> str:
        return self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


DEFAULT_OPTIONS = StorageOptions()


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a local path or URI with '/'."""
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return str(Path(uri, *parts))


def basename(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/")) if is_s3(uri) else Path(uri).name


@lru_cache(maxsize=16)
def _s3_filesystem(endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    kwargs: dict = {
        "region": StorageOptions(region=region).resolved_region(),
        "connect_timeout": 5,
        "request_timeout": 60,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=4),
    }
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str, options: StorageOptions = DEFAULT_OPTIONS) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem serving `uri`, and the path of `uri` inside it."""
    if is_s3(uri):
        parsed = urlparse(uri)
        path = f"{parsed.netloc}{parsed.path}".rstrip("/")
        return _s3_filesystem(options.resolved_endpoint(), options.region), path
    if "://" in uri and not uri.startswith("file://"):
        raise StorageError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/prefix")
    local = uri[len("file://"):] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), str(Path(local).expanduser().absolute())


def _wrap(uri: str, action: str, exc: Exception) -> StorageError:
    hint = ""
    if is_s3(uri):
        hint = (
            " Check the bucket exists, the endpoint (--s3-endpoint or AWS_ENDPOINT_URL) is reachable"
            " and the credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE / instance profile) allow it."
        )
    return StorageError(f"could not {action} {uri}: {exc}.{hint}")


def exists(uri: str, options: StorageOptions = DEFAULT_OPTIONS) -> bool:
    fs, path = filesystem(uri, options)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise _wrap(uri, "check", exc) from exc


def read_bytes(uri: str, options: StorageOptions = DEFAULT_OPTIONS) -> bytes:
    fs, path = filesystem(uri, options)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as exc:
        raise StorageError(f"{uri} does not exist") from exc
    except OSError as exc:
        raise _wrap(uri, "read", exc) from exc


def write_bytes_atomic(uri: str, data: bytes, options: StorageOptions = DEFAULT_OPTIONS) -> None:
    """Write `data` so that readers see either the old object or all of the new one."""
    fs, path = filesystem(uri, options)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            _put_then_copy(fs, path, data)
    except OSError as exc:
        raise _wrap(uri, "write", exc) from exc


def _put_then_copy(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Object-store commit: upload to a hidden temp key, check its size, copy it into place (server-side).

    pyarrow uploads even a small payload as a multipart upload, and one cut off by a dying endpoint
    can still leave an object shorter than the payload under its key (seen in tests/chaos with a
    crashed S3 server). The temp key starts with '.', so `list_files` never takes it for a shard,
    and the copy makes the final object appear complete or not at all.
    """
    tmp = posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        size = fs.get_file_info(tmp).size
        if size != len(data):
            raise OSError(f"the upload stored {size} of {len(data)} bytes")
        fs.move(tmp, path)
    except OSError:
        try:
            fs.delete_file(tmp)
        except OSError:
            pass  # a hidden temp object; never listed, never read
        raise


# Columns of encoded image bytes (JPEG/PNG/WebP): compressed already, so zstd and dictionary encoding would
# only spend CPU on them (~0.1 ms per image, 1 % of URL ingest's CPU) for a file of the same size.
_ENCODED_COLUMNS = frozenset({"image"})


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    """`table` as Parquet: zstd, except the encoded-image columns, stored as they are."""
    sink = io.BytesIO()
    names = table.column_names
    encoded = {n for n in names if n in _ENCODED_COLUMNS and pa.types.is_binary(table.schema.field(n).type)}
    if encoded:
        pq.write_table(table, sink, compression={n: "none" if n in encoded else "zstd" for n in names},
                       use_dictionary=[n for n in names if n not in encoded])
    else:
        pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_parquet_atomic(table: pa.Table, uri: str, options: StorageOptions = DEFAULT_OPTIONS) -> None:
    """Write one Parquet shard atomically."""
    write_bytes_atomic(uri, table_to_parquet_bytes(table), options)


def _not_parquet(uri: str, exc: Exception) -> StorageError:
    return StorageError(
        f"{uri} is not a complete Parquet file ({exc}). artray commits every shard in one step, so something "
        "else left it (an interrupted copy or streaming writer, another tool): delete it and run again")


def read_parquet(uri: str, options: StorageOptions = DEFAULT_OPTIONS, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(uri, options)
    try:
        return pq.read_table(path, filesystem=fs, columns=columns)
    except FileNotFoundError as exc:
        raise StorageError(f"{uri} does not exist") from exc
    except pa.ArrowInvalid as exc:  # truncated or not Parquet: never take its rows as committed
        raise _not_parquet(uri, exc) from exc
    except OSError as exc:
        raise _wrap(uri, "read", exc) from exc


SHARD_PATH = "__filename"  # the column `read_shards(with_path=True)` adds: each row's shard, as `filesystem` paths


def read_shards(uris: list[str], schema: pa.Schema, options: StorageOptions = DEFAULT_OPTIONS,
                columns: list[str] | None = None, filter=None, with_path: bool = False) -> pa.Table:
    """The Parquet shards `uris` (one directory's, as `list_files` gives them) as one table of `schema`.

    One `pyarrow.dataset` over the shards: columns and `filter` (a ``pyarrow.dataset`` expression) are
    pushed down into the reads, and shards written under an older schema are cast to `schema` (a
    column they lack reads as nulls). A shard that is not complete Parquet is refused by its URI.
    `with_path` adds the column `SHARD_PATH`: the path of the shard each row came from.
    """
    wanted = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    if with_path:
        wanted = wanted.append(pa.field(SHARD_PATH, pa.string()))
    if not uris:
        return wanted.empty_table()
    fs, _ = filesystem(uris[0], options)
    paths = [filesystem(u, options)[1] for u in uris]
    try:
        dataset = pads.dataset(paths, schema=schema, format="parquet", filesystem=fs)
        return dataset.to_table(columns=wanted.names, filter=filter)
    except FileNotFoundError as exc:
        raise StorageError(f"a shard of {dirname(uris[0])} disappeared while it was read ({exc}); is another "
                           "run writing there? Run again once it has finished") from exc
    except pa.ArrowInvalid as exc:
        bad = next((u for u, p in zip(uris, paths) if p in str(exc)), None)
        if bad is None:
            raise StorageError(f"could not read the shards under {dirname(uris[0])}: {exc}") from exc
        raise _not_parquet(bad, exc) from exc
    except OSError as exc:
        raise _wrap(dirname(uris[0]), "read", exc) from exc


def dirname(uri: str) -> str:
    return posixpath.dirname(uri.rstrip("/")) if is_s3(uri) else str(Path(uri).parent)


def write_json_atomic(uri: str, obj: object, options: StorageOptions = DEFAULT_OPTIONS) -> None:
    """Write `obj` as strict JSON (`artray.jsonio`: NaN and ±Infinity become null)."""
    payload = dumps_strict(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    write_bytes_atomic(uri, payload.encode("utf-8"), options)


def read_json(uri: str, options: StorageOptions = DEFAULT_OPTIONS) -> object | None:
    """The parsed JSON at `uri`, or None if there is no such file."""
    if not exists(uri, options):
        return None
    return json.loads(read_bytes(uri, options).decode("utf-8"))


def list_files(dir_uri: str, suffix: str = "", options: StorageOptions = DEFAULT_OPTIONS) -> list[str]:
    """URIs of the committed files directly under `dir_uri` ending in `suffix`, sorted.

    Temp files (leading '.') are never listed; a missing directory lists as empty.
    """
    fs, path = filesystem(dir_uri, options)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as exc:
        raise _wrap(dir_uri, "list", exc) from exc
    names = sorted(
        posixpath.basename(i.path)
        for i in infos
        if i.type == pafs.FileType.File and i.path.endswith(suffix)
    )
    return [join(dir_uri, n) for n in names if not n.startswith((".", "_"))]


def delete(uri: str, options: StorageOptions = DEFAULT_OPTIONS) -> None:
    """Delete a file or a whole directory tree at `uri` (no error if absent)."""
    fs, path = filesystem(uri, options)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            fs.delete_file(path)
    except OSError as exc:
        raise _wrap(uri, "delete", exc) from exc


def ensure_dir(uri: str, options: StorageOptions = DEFAULT_OPTIONS) -> None:
    fs, path = filesystem(uri, options)
    try:
        fs.create_dir(path, recursive=True)
    except OSError as exc:
        raise _wrap(uri, "create", exc) from exc


def iter_lines(uri: str, options: StorageOptions = DEFAULT_OPTIONS, chunk_size: int = 1 << 22):
    """Yield the lines of a (possibly huge) text file at `uri` as bytes, without the newline."""
    fs, path = filesystem(uri, options)
    try:
        stream = fs.open_input_stream(path)
    except FileNotFoundError as exc:
        raise StorageError(f"{uri} does not exist") from exc
    except OSError as exc:
        raise _wrap(uri, "read", exc) from exc
    with stream:
        pending = b""
        while True:
            chunk = stream.read(chunk_size)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r")
        if pending:
            yield pending.rstrip(b"\r")
