"""Import references, ``"package.module:attribute"``: how artray names code it imports only when it is used
(a job's config class and run function, a model family object, its trainer and tiny builders).

:func:`load_ref` is the one place they are imported, so a bad reference always fails the same way:
an :class:`ImportRefError` naming the reference and what is wrong with it. (Not to be confused with a
recipe's ``${...}`` references, :mod:`artray.recipes.refs`.)
"""

from __future__ import annotations

import importlib
from typing import Any

from artray.errors import UserError


class ImportRefError(UserError, ImportError):
    """An import reference that is malformed or names no importable object; the message says which part."""


def load_ref(ref: str) -> Any:
    """The object `ref` (``"package.module:attribute"``) names, its module imported now.

    A module that exists but fails to import (a missing dependency of its own, an error in its code)
    raises that error unchanged: only a wrong reference is an `ImportRefError`."""
    module, sep, attr = ref.partition(":") if isinstance(ref, str) else ("", "", "")
    if not (sep and module and attr) or ":" in attr:
        raise ImportRefError(f"import reference {ref!r} is not 'package.module:attribute'")
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            raise ImportRefError(f"import reference {ref!r}: there is no module {exc.name!r} (a typo, or a package "
                                 "that is not installed on this node)") from exc
        raise
    try:
        return getattr(loaded, attr)
    except AttributeError:
        raise ImportRefError(f"import reference {ref!r}: module {module!r} has no "
                             f"attribute {attr!r}") from None
