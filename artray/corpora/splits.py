"""Train/val/test assignment for corpora that ship without an official split (ArtCap, a
museum's own folder): a user's split file, or a deterministic seeded split."""

from __future__ import annotations

import csv
import io
import json
import random

from artray import storage
from artray.schema import normalise_split
from artray.storage import StorageOptions


class SplitFileError(ValueError):
    pass


class _Pairs(list):
    """A JSON object as its (key, value) pairs, so that repeated keys are seen."""


def seeded_split(ids: list[str], ratios: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Assign each id to train/val/test: shuffle the sorted ids with `seed`, cut by `ratios`.

    Sorting first makes the result independent of input order; the same ids, ratios and
    seed always give the same split.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise SplitFileError(f"split_ratios must be three non-negative numbers summing to 1, got {list(ratios)}")
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_train = round(ratios[0] * n)
    n_val = round(ratios[1] * n)
    out = {}
    for i, key in enumerate(order):
        out[key] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out


def read_split_file(uri: str, options: StorageOptions) -> dict[str, str]:
    """A user's split file: JSON `{id_or_filename: split}` or CSV with columns `<id>,split`.

    Ids are matched with and without their file extension, so either spelling works.
    """
    data = storage.read_bytes(uri, options)
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SplitFileError(f"{uri} is not UTF-8 text (line {line}: {exc.reason}); re-save it as UTF-8") from exc
    if uri.endswith(".json"):
        items = _json_items(uri, raw)
    else:
        items = _csv_items(uri, raw)
    out: dict[str, str] = {}
    for where, key, value in items:
        split = normalise_split(value)
        if split is None:
            raise SplitFileError(f"{uri} {where}: entry {key!r} has unknown split {value!r}; use train, val or test")
        if out.get(str(key), split) != split:
            raise SplitFileError(f"{uri} {where}: entry {key!r} is listed twice, as {out[str(key)]} and {split}; "
                                 "keep one")
        out[str(key)] = split
    return out


def _json_items(uri: str, raw: str) -> list[tuple[str, str, object]]:
    """(where, key, split) of a JSON split file, in file order (repeated keys included)."""
    try:
        data = json.loads(raw, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as exc:
        raise SplitFileError(f"{uri} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except (RecursionError, ValueError) as exc:  # nesting too deep; an integer over Python's digit limit
        raise SplitFileError(f"{uri} cannot be read as JSON ({type(exc).__name__}); fix the file") from exc
    if not isinstance(data, _Pairs):
        raise SplitFileError(f"{uri} must be a JSON object mapping image id or file name to split")
    return [(f"key {key!r}", key, value) for key, value in data]


def _csv_items(uri: str, raw: str) -> list[tuple[str, str, object]]:
    """(where, key, split) of a CSV split file `<id>,<split>` with an optional header."""
    reader = csv.reader(io.StringIO(raw))
    items = []
    try:
        for row in reader:
            if not row:
                continue
            if not items and reader.line_num == 1 and row[-1].strip().lower() == "split":
                continue  # the header
            if len(row) < 2:
                raise SplitFileError(f"{uri} line {reader.line_num}: expected '<id>,<split>', got {row!r}")
            items.append((f"line {reader.line_num}", row[0], row[1]))
    except csv.Error as exc:  # a NUL byte, an unterminated quote, a field over the size limit
        raise SplitFileError(f"{uri} line {reader.line_num}: not valid CSV ({exc})") from exc
    return items


def assign(ids: list[str], split_file: str | None, ratios: tuple[float, float, float], seed: int,
           options: StorageOptions) -> tuple[dict[str, str], dict]:
    """The split of each id (from `split_file` if given, else seeded) and a manifest record of how."""
    if split_file:
        return read_split_file(split_file, options), {"method": "file", "split_file": split_file}
    return seeded_split(ids, ratios, seed), {"method": "seeded", "seed": seed, "ratios": list(ratios)}


def lookup(splits: dict[str, str], artwork_id: str, file_name: str | None = None) -> str | None:
    for key in (artwork_id, file_name):
        if key is not None and key in splits:
            return splits[key]
    return None
