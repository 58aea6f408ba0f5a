"""Where a model lives → a path ``from_pretrained`` / ``torch.load`` can open.

Hub ids and local paths are passed through untouched (the libraries resolve them and
use their own caches). An ``s3://bucket/prefix`` model folder (or single file) is
downloaded once into a local cache, so every worker on a node shares one copy:
``$ARTRAY_CACHE/models/<sha256 of the URI>`` (default ``~/.cache/artray/models/...``).
The download goes to a temp folder that is renamed into place only when complete, so
a crashed or concurrent download never leaves a half-written model that looks done.
A ``.artray-source.json`` inside the folder records the object listing (sizes and
modification times); when the S3 objects change, the next call downloads them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from artray.storage import (
    DEFAULT_OPTIONS,
    StorageError,
    StorageOptions,
    basename,
    filesystem,
    is_s3,
)

SOURCE_FILE = ".artray-source.json"


def cache_root() -> Path:
    """The folder holding downloaded models (``$ARTRAY_CACHE/models`` or ``~/.cache/artray/models``)."""
    base = os.environ.get("ARTRAY_CACHE") or os.path.join("~", ".cache", "artray")
    return Path(base).expanduser() / "models"


def _listing(fs: pafs.FileSystem, path: str, uri: str) -> tuple[str, list[dict]]:
    """('dir' | 'file', [{'rel', 'size', 'mtime'}]) of the objects under `path`."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return "file", [{"rel": basename(uri), "size": info.size, "mtime": str(info.mtime)}]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    files = [
        {"rel": i.path[len(path):].lstrip("/"), "size": i.size, "mtime": str(i.mtime)}
        for i in infos
        if i.type == pafs.FileType.File
    ]
    if not files:
        raise StorageError(f"no model found at {uri}: nothing exists under it (check the bucket and path)")
    return "dir", sorted(files, key=lambda f: f["rel"])


def _copy(fs: pafs.FileSystem, src: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(src) as f, open(dst, "wb") as out:
        while chunk := f.read(8 << 20):
            out.write(chunk)


def _is_current(dest: Path, source: dict) -> bool:
    try:
        return json.loads((dest / SOURCE_FILE).read_text(encoding="utf-8")) == source
    except (OSError, ValueError):
        return False


def resolve_model_path(name_or_uri: str, storage_options: StorageOptions | None = None) -> str:
    """A local path (or hub id) for `name_or_uri`, downloading ``s3://`` models once.

    Hub ids (``org/name``) and local paths come back as they are; ``file://`` is stripped.
    For an S3 folder the local folder is returned; for an S3 file (``.../longclip-L.pt``)
    the local file inside the cached folder is returned.
    """
    if name_or_uri.startswith("file://"):
        return name_or_uri[len("file://"):]
    if not is_s3(name_or_uri):
        return name_or_uri
    uri = name_or_uri.rstrip("/")
    fs, path = filesystem(uri, storage_options or DEFAULT_OPTIONS)
    try:
        kind, files = _listing(fs, path, uri)
    except OSError as exc:
        raise StorageError(f"could not list model at {uri}: {exc}") from exc
    source = {"uri": uri, "kind": kind, "files": files}
    dest = cache_root() / hashlib.sha256(uri.encode("utf-8")).hexdigest()[:32]
    result = str(dest / files[0]["rel"]) if kind == "file" else str(dest)
    if _is_current(dest, source):
        return result

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.tmp"
    try:
        for f in files:
            _copy(fs, path if kind == "file" else f"{path}/{f['rel']}", tmp / f["rel"])
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=1), encoding="utf-8")
        if _is_current(dest, source):  # another worker on this node finished first
            return result
        if dest.exists():  # stale copy (the objects changed): move it aside, then swap in
            old = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.old"
            os.rename(dest, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:  # fine if another worker renamed an identical copy in first
            if not _is_current(dest, source):
                raise
    except OSError as exc:
        raise StorageError(f"could not download model {uri} to {dest}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
