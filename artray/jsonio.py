"""Strict JSON: what artray writes parses in every JSON parser.

Python's ``json`` writes ``NaN`` and ``Infinity`` for non-finite floats, which is not JSON
(RFC 8259) and which strict parsers (JavaScript's ``JSON.parse``, ``jq``, Go, Rust serde)
refuse. Every JSON file artray writes goes through `dumps_strict`: a non-finite float
(NaN, +/-Infinity, numpy's too) is written as ``null``, so a reader sees "no number here"
(e.g. the p-value of two identical runs, which is undefined) instead of a parse error.
"""

from __future__ import annotations

import json
import math


def strict(obj: object) -> object:
    """`obj` with every non-finite float (at any depth) replaced by None; numpy scalars become
    Python numbers and tuples become lists (as json writes them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if type(obj).__module__ == "numpy" and hasattr(obj, "tolist"):  # numpy scalars and arrays, without importing numpy
        return strict(obj.tolist())
    return obj


def dumps_strict(obj: object, **kwargs) -> str:
    """``json.dumps`` of `strict(obj)` with ``allow_nan=False``: never a bare NaN/Infinity.
    Objects json cannot write are written as their ``str`` (as artray always did)."""
    kwargs.setdefault("default", str)
    return json.dumps(strict(obj), allow_nan=False, **kwargs)
