"""Loading the stage jobs a recipe step names (the jobs themselves are the table in `artray.jobs`)."""

from __future__ import annotations

import importlib


def load(ref: str):
    """The object a "module:name" reference names (imported now)."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)
