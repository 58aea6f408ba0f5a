"""Which model weight files artray loads: safetensors always, pickle checkpoints only on request.

A pickle checkpoint (``.pt``/``.pth``/``.bin``/``.ckpt``, a ``pytorch_model.bin`` in a model
folder) is a program as much as data: unpickling it can run code, and torch's restricted
``weights_only`` unpickler has had bypasses. So weights from user paths load as safetensors,
and a pickle file is refused with an error naming it, unless the user opts in with
``ARTRAY_ALLOW_PICKLE=1`` — then it still loads with ``torch.load(weights_only=True)``.
A file is recognised by its header, not its name. ``artray models to-safetensors`` converts
a trusted pickle checkpoint (e.g. the published ``longclip-L.pt``) once.

The opt-in is an environment variable so that it reaches every process that loads weights:
``artray.runtime.init_ray`` hands it to the job's Ray workers and ``artray submit`` puts it in
the job's runtime_env; for ``serve run`` set it in the config's ``runtime_env.env_vars``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from artray.errors import UserError

if TYPE_CHECKING:
    import torch

ENV = "ARTRAY_ALLOW_PICKLE"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


class PickleRefusedError(UserError, ValueError):
    """A pickle checkpoint was about to be loaded without the user's opt-in."""


def pickle_allowed() -> bool:
    """True when the user opted in to pickle checkpoints (``ARTRAY_ALLOW_PICKLE=1``)."""
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


def is_safetensors(path: str | os.PathLike) -> bool:
    """True if the file is in safetensors format (8-byte header length, then a JSON header)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9:
        return False
    return head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") <= size - 8


def refuse(path: str | os.PathLike) -> None:
    """Raise `PickleRefusedError` for `path` unless pickle checkpoints are allowed."""
    if pickle_allowed():
        return
    raise PickleRefusedError(
        f"{path} is a pickle checkpoint, not safetensors: unpickling can run arbitrary code, so artray "
        f"loads only safetensors weights by default. Convert it once where you trust it "
        f"(artray models to-safetensors {path} <out>.safetensors), or, if you trust the file, set "
        f"{ENV}=1 to load it with torch.load(weights_only=True)")


def load_state_dict(path: str | os.PathLike) -> dict:
    """A state dict from a single weights file: safetensors, or (opted in) a pickle via weights_only."""
    if is_safetensors(path):
        from safetensors.torch import load_file

        return load_file(str(path))
    refuse(path)
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def save_state_dict(state_dict: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write `state_dict` as safetensors (tensors made contiguous; tensors sharing memory copied)."""
    from safetensors.torch import save_file

    out, seen = {}, set()
    for k, v in state_dict.items():
        v = v.detach().contiguous()
        if v.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage (tied weights)
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        out[k] = v
    save_file(out, str(path), metadata={"format": "pt"})


def check_folder(path: str | os.PathLike) -> None:
    """Refuse a local model folder (or a diffusers pipeline's component folder) whose weights are only
    pickle files; hub ids and folders with safetensors pass."""
    root = Path(path)
    if pickle_allowed() or not root.is_dir():
        return
    folders = [root]
    if (root / "model_index.json").is_file():  # a diffusers pipeline: one folder per component
        folders += sorted(p for p in root.iterdir() if p.is_dir())
    for folder in folders:
        files = [f for f in folder.iterdir() if f.is_file()]
        if any(f.name.endswith(".safetensors") for f in files):
            continue
        pickles = sorted(f for f in files if f.suffix in PICKLE_SUFFIXES or f.name.endswith(".bin.index.json"))
        if pickles:
            refuse(pickles[0])


def pretrained_kwargs(path: str | os.PathLike) -> dict:
    """Extra keyword arguments for transformers/diffusers ``from_pretrained(path, …)``: safetensors
    only (``use_safetensors=True``) unless opted in; a local folder holding only pickle weights is
    refused here with an error naming the file."""
    if pickle_allowed():
        return {}
    check_folder(path)
    return {"use_safetensors": True}


def check_weights_path(path: str) -> None:
    """Refuse `path` if it is a local pickle weights file or a folder of only pickle weights."""
    p = Path(path)
    if p.is_file() and not is_safetensors(p):
        refuse(p)
    elif p.is_dir():
        check_folder(p)


def convert_to_safetensors(src: str, dst: str) -> int:
    """Load a trusted pickle checkpoint (weights_only) and write its tensors as safetensors; returns
    the number of tensors. A ``{"state_dict": …}`` wrapper is unwrapped."""
    import torch

    obj = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{src} does not hold a flat state dict of tensors; convert it with the library that wrote it")
    save_state_dict(obj, dst)
    return len(obj)
