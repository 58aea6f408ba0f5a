"""DeepSpeed checkpoint → consolidated fp32 state dict → the family's published layout.

A ZeRO checkpoint is partitioned by the number of workers that wrote it. Resuming a run
(``engine.load_checkpoint``) needs the same number of workers; to change it, or to use the
model anywhere else, consolidate: :func:`consolidated_state_dict` merges the partitions on
one machine into fp32 weights (DeepSpeed's ``zero_to_fp32``), and the family's ``export``
writes them in the format its loader reads.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch

from artray import storage
from artray.jsonio import dumps_strict
from artray.models.pretrained import EXPORT_RECORD, from_pretrained, recorded_image_preprocessing
from artray.models.resolve import resolve_model_path
from artray.train.checkpoint_layout import CKPT_TAG, STATE_FILE


def consolidated_state_dict(ckpt_dir: str, zero_stage: int) -> dict[str, torch.Tensor]:
    """fp32 weights of a local checkpoint folder: DeepSpeed (any ZeRO stage; 0-dim parameters restored) or
    DDP (the loop state says which)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with open(os.path.join(ckpt_dir, STATE_FILE), encoding="utf-8") as f:
        state = json.load(f)
    reshaped = state.get("reshaped", [])
    if state.get("strategy") == "ddp":  # one full replica, written by rank 0 (artray.train.ddp)
        from artray.train.ddp import module_state_dict

        return module_state_dict(ckpt_dir, CKPT_TAG)
    if zero_stage == 0:
        # DeepSpeed's own pickle, written by this run's workers into its Ray Train checkpoint (not user
        # weights, so artray.models.weights' opt-in does not apply); it holds non-tensor objects
        # (optimizer/engine state) that weights_only=True cannot read.
        states = torch.load(os.path.join(ckpt_dir, CKPT_TAG, "mp_rank_00_model_states.pt"),
                            map_location="cpu", weights_only=False)
        sd = {k: v.float() for k, v in states["module"].items()}
    else:
        from deepspeed.utils.zero_to_fp32 import (
            get_fp32_state_dict_from_zero_checkpoint,
        )

        from artray.console import captured_output

        with captured_output("DeepSpeed's zero_to_fp32"):  # its print()s are not for the console
            sd = get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=CKPT_TAG)
    from artray.train.engine import unshape_0dim

    return unshape_0dim(sd, reshaped)


def write_export_record(cfg, out_dir: str, text_length: int | None, image_preprocessing: dict,
                        weights: str | None = None) -> None:
    """``artray_export.json`` in `out_dir`: how the export was trained (family, the text length and image
    preprocessing its inputs were prepared with, base model, preset). Evaluation, embedding, indexing and
    serving read it and prepare inputs the same way. `weights`: the file it speaks for (single-file exports)."""
    record = {"family": cfg.family, "text_length": text_length, "image_preprocessing": image_preprocessing,
              "base_model": cfg.model, "preset": cfg.preset, "name": cfg.name, "epochs": cfg.epochs}
    if weights:
        record["weights"] = weights
    with open(os.path.join(out_dir, EXPORT_RECORD), "w", encoding="utf-8") as f:
        f.write(dumps_strict(record, indent=2) + "\n")


def save_pretrained_export(cfg, model_cls, processor_cls, state_dict: dict[str, torch.Tensor], out_dir: str,
                           extra: dict[str, torch.Tensor] | None = None, text_length: int | None = None) -> str:
    """The trained ``model.*`` weights (+ `extra`) in the run's base checkpoint, saved with its processor as a
    ``save_pretrained`` folder (safetensors) at `out_dir`: what the family's artray loader reads. Beside them,
    ``artray_export.json`` records how it was trained (:func:`write_export_record`), with the base checkpoint's
    image preprocessing (its own export record's, else its processor's: what the trainers prepare images with,
    `recorded_image_preprocessing`)."""
    path = resolve_model_path(cfg.model, cfg.storage_options())
    model = from_pretrained(model_cls, path)
    sd = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict({**sd, **(extra or {})}, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit {path}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.save_pretrained(out_dir, safe_serialization=True)
    processor = processor_cls.from_pretrained(path)
    processor.save_pretrained(out_dir)
    write_export_record(cfg, out_dir, text_length, recorded_image_preprocessing(path, processor.image_processor))
    return out_dir


def export_checkpoint(checkpoint, cfg, trainer_cls) -> str:
    """Consolidate a Ray Train checkpoint and write the family's export under ``<output>/<name>/export``."""
    dest = storage.join(cfg.output, cfg.name, "export")
    with checkpoint.as_directory() as d:
        sd = consolidated_state_dict(d, cfg.zero_stage)
    local = dest if not storage.is_s3(dest) else tempfile.mkdtemp(prefix="artray-export-")
    try:
        path = trainer_cls.export(cfg, sd, local)
        if storage.is_s3(dest):
            for name in sorted(os.listdir(local)):
                with open(os.path.join(local, name), "rb") as f:
                    storage.write_bytes_atomic(storage.join(dest, name), f.read(), cfg.storage_options())
            path = storage.join(dest, os.path.basename(path))
    finally:
        if storage.is_s3(dest):
            shutil.rmtree(local, ignore_errors=True)
    return path
