"""`${...}` references in recipe values, resolved against what the runner knows.

- ``${corpus}``, ``${out}``: the run's input corpus and output prefix (`--corpus`, `--out`)
- ``${params.<key>[.<sub>…]}``: the recipe's params after `when` overlays and `--set`
- ``${steps.<name>.<key>}``: what an earlier step recorded (``output``, ``export`` for train)

A value that is one whole reference keeps its type (a list, a number, a mapping); a reference
inside a longer string is written into it as text. A reference to a step that has not run yet
stays as written when `strict` is false (`artray recipe show`), and is an error otherwise.
"""

from __future__ import annotations

import re
from typing import Any

from artray.errors import UserError

PATTERN = re.compile(r"\$\{([^}]+)\}")


class RecipeError(UserError, ValueError):
    """A recipe that cannot load or run as written; the message names the recipe, step or key and the fix."""


class _Pending(Exception):
    """A step reference that cannot be resolved yet (not strict)."""


def _lookup(ref: str, context: dict, strict: bool, where: str) -> Any:
    head, *rest = ref.strip().split(".")
    if head in ("corpus", "out") and not rest:
        return context[head]
    if head == "steps":
        if len(rest) < 2:
            raise RecipeError(f"{where}: ${{{ref}}} must name a step and a key, e.g. ${{steps.train.export}}")
        step, key = rest[0], ".".join(rest[1:])
        done = context["steps"].get(step)
        if done is None or key not in done:
            if not strict:
                raise _Pending(ref)
            known = "earlier steps are " + ", ".join(context["steps"]) if context["steps"] else "no step ran before"
            raise RecipeError(f"{where}: ${{{ref}}}: step {step!r} has no {key!r} yet ({known}); a step can only "
                              "refer to steps above it")
        return done[key]
    if head == "params":
        node: Any = context["params"]
        for i, part in enumerate(rest):
            if not isinstance(node, dict) or part not in node:
                raise RecipeError(f"{where}: ${{{ref}}}: no param {'.'.join(rest[:i + 1])!r}; params are "
                                  f"{sorted(context['params'])}")
            node = node[part]
        return node
    raise RecipeError(f"{where}: unknown reference ${{{ref}}}: use ${{corpus}}, ${{out}}, ${{params.<key>}} or "
                      "${steps.<step>.<key>}")


def _text(ref: str, context: dict, strict: bool, where: str) -> str:
    """A reference inside a longer string, as text; an unset (null) param there is an error naming it."""
    value = resolve(_lookup(ref, context, strict, where), context, strict=strict, where=where)
    if value is None:
        if not strict:
            raise _Pending(ref)
        raise RecipeError(f"{where}: ${{{ref}}} is not set: give it with --set {ref.removeprefix('params.')}=…")
    return str(value)


def resolve(value: Any, context: dict, *, strict: bool = True, where: str = "recipe") -> Any:
    """`value` with every `${...}` replaced (recursively through lists and mappings)."""
    if isinstance(value, dict):
        return {k: resolve(v, context, strict=strict, where=f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, context, strict=strict, where=f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = PATTERN.fullmatch(value.strip())
    try:
        if whole:
            return resolve(_lookup(whole.group(1), context, strict, where), context, strict=strict, where=where)
        return PATTERN.sub(lambda m: _text(m.group(1), context, strict, where), value)
    except _Pending:
        return value
