"""Tiny, seeded, randomly initialised checkpoints of every real architecture artray runs (scaffolding).

Each one is saved in exactly the on-disk format of its real hub counterpart
(``save_pretrained`` folders with tokenizer/processor, or an OpenAI-layout state dict), so
tests, the demo and CPU smoke runs go through the same loaders as
``runwayml/stable-diffusion-v1-5`` or ``longclip-L.pt`` — only smaller and offline. Every
weight file is safetensors (the state dicts keep ``longclip-L.pt``'s keys), so nothing here
needs the pickle opt-in of ``artray.models.weights``.

The builders live one module per family here (``blip``, ``clip``, ``cnclip``, ``git``, ``longclip``,
plus ``diffusion`` and ``llava`` for the generators); each model family names its own in its ``tiny``
member (:mod:`artray.families`), so a family registered later gets its tiny checkpoint built too.
A builder is ``build(out_folder, need) -> (weights file relative to the folder or "", architecture,
parameter count)``; ``need(name)`` builds another tiny checkpoint first and returns its path.

Each checkpoint is built in a temp folder and renamed into place with a
``.artray-tiny.json`` marker; a second call on the same folder skips complete ones.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from artray.import_refs import load_ref

FORMAT_VERSION = 3  # 2: the OpenAI-layout state dicts are safetensors (were pickle .pt); 3: BLIP init range 0.1
MARKER = ".artray-tiny.json"
# Tiny checkpoints of the generators (not model families): name → builder.
GENERATORS = {"sd-img2img": "artray.scaffold.tiny.diffusion:build", "llava": "artray.scaffold.tiny.llava:build"}

Builder = Callable[[Path, Callable[[str], str]], tuple[str, str, int]]


def builders() -> dict[str, str]:
    """Every tiny checkpoint name → its builder reference: the generators', then each family's ``tiny``."""
    from artray import families

    out = dict(GENERATORS)
    for name in families.names():
        out.update(families.get(name).tiny)
    return out


def _build_one(dest: Path, name: str, seed: int, build: Builder, need: Callable[[str], str]) -> dict:
    """Build `name` under `dest` unless a complete copy for this seed exists; return its marker."""
    final = dest / name
    marker_path = final / MARKER
    if marker_path.exists():
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
        if marker.get("seed") == seed and marker.get("format") == FORMAT_VERSION:
            return marker
    import torch

    tmp = dest / f".{name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir(parents=True)
    try:
        torch.manual_seed(seed)  # each checkpoint depends only on the seed, not on what was built before
        rel_file, arch, n_params = build(tmp, need)
        marker = {"name": name, "seed": seed, "format": FORMAT_VERSION, "file": rel_file,
                  "architecture": arch, "parameters": n_params}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if final.exists():  # stale (other seed or format): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return marker


def make_tiny(dest_dir: str, seed: int = 0) -> dict[str, str]:
    """Write (offline, seeded) the tiny checkpoint set into `dest_dir`; return ``{name: path}``.

    Names: sd-img2img, llava, and each family's (blip-retrieval, blip-captioner, git-captioner,
    clip-77, longclip, cnclip). ``dest_dir/tiny_models.json`` lists name → relative path,
    architecture and parameter count. Idempotent: complete checkpoints are kept.
    """
    from transformers.utils import logging as hf_logging

    dest = Path(dest_dir).expanduser().absolute()
    dest.mkdir(parents=True, exist_ok=True)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # random init of tiny models is expected; keep the log quiet
    hf_logging.disable_progress_bar()
    try:
        refs, markers = builders(), {}

        def need(name: str) -> str:
            if name not in markers:
                if name not in refs:
                    raise KeyError(f"no tiny checkpoint named {name!r}; known: {sorted(refs)}")
                markers[name] = _build_one(dest, name, seed, load_ref(refs[name]), need)
            m = markers[name]
            return str(dest / name / m["file"]) if m["file"] else str(dest / name)

        for name in refs:
            need(name)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

    paths, listing = {}, {}
    for name in refs:  # registry order, whatever order the builds happened in
        m = markers[name]
        rel = f"{name}/{m['file']}" if m["file"] else name
        paths[name] = str(dest / rel)
        listing[name] = {"path": rel, "architecture": m["architecture"], "parameters": m["parameters"]}
    index = json.dumps({"seed": seed, "models": listing}, indent=2) + "\n"
    index_path = dest / "tiny_models.json"
    if not index_path.exists() or index_path.read_text(encoding="utf-8") != index:
        tmp = dest / f".tiny_models.{uuid.uuid4().hex}.tmp"
        tmp.write_text(index, encoding="utf-8")
        os.replace(tmp, index_path)
    return paths
