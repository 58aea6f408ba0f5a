"""Strict JSON reading for corpus index files: duplicate keys recorded, bad bytes named by line."""

from __future__ import annotations

import json

from artray import storage
from artray.corpora.import_config import CorpusImportError


class JsonObject(dict):
    """A parsed JSON object that remembers which of its keys appeared more than once."""

    duplicate_keys: tuple[str, ...] = ()


def _keep_first(pairs) -> JsonObject:
    """`object_pairs_hook`: keep the first of duplicate keys and record the others."""
    obj, dups = JsonObject(), []
    for k, v in pairs:
        if k in obj:
            dups.append(k)
            continue
        obj[k] = v
    obj.duplicate_keys = tuple(dups)
    return obj


def line_of(raw: bytes, offset: int) -> int:
    """The 1-based line number of byte `offset` in `raw`."""
    return raw.count(b"\n", 0, offset) + 1


def parse_json_line(raw: bytes):
    """One JSON value from one line of a JSONL file; ValueError (with the cause) if it is not one.

    Beyond `json.JSONDecodeError`: bytes that are not UTF-8, nesting too deep for Python's
    parser and integers over Python's digit limit — all bad input, never a crash.
    """
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_keep_first)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def load_json(uri: str, options) -> tuple[object, list[str]]:
    """Parse a JSON index file; returns the data and the top-level keys that appear twice.

    Python's json silently keeps the last of duplicate keys; corpora keyed by id must not.
    Every object of the result is a `JsonObject`, so a reader can report repeated fields too.
    """
    try:
        raw = storage.read_bytes(uri, options)
    except storage.StorageError as exc:
        raise CorpusImportError(f"{exc}; pass the path of the dataset's index file or folder") from exc
    try:
        data = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_keep_first)
    except UnicodeDecodeError as exc:
        raise CorpusImportError(f"{uri} is not UTF-8 text (line {line_of(raw, exc.start)}: {exc.reason}); "
                                "re-save it as UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise CorpusImportError(
            f"{uri} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}. "
            f"Fix the file (python -m json.tool {uri} shows the spot) and re-run"
        ) from exc
    except (RecursionError, ValueError) as exc:  # nesting too deep; an integer over Python's digit limit
        raise CorpusImportError(f"{uri} cannot be read as JSON ({type(exc).__name__}: {str(exc)[:200]}); "
                                "fix the file and re-run") from exc
    return data, list(getattr(data, "duplicate_keys", ()))
