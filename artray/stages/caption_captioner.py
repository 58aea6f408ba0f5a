"""Captioner checkpoints in `artray caption`: which model kind a `model` is, and captioning with a GIT/BLIP captioner.

Method (A) fine-tuned GIT-base and BLIP-base captioners and decoded the test split with beam
search (4 beams, length_penalty 0.6). `model_kind` tells such a checkpoint from an MLLM before
any Ray work: an artray export names its family in ``artray_export.json``; any other checkpoint
is recognised by the captioner families' own ``sniff`` (``config.json``: model_type ``git``, or
``blip`` with ``BlipForConditionalGeneration``). Only the two small JSON files are read — from a
local folder, an ``s3://`` folder or the hub — never the weights. Anything else is an MLLM.

`CaptionerGenerator` is what an actor runs for a captioner: the family's loader (transformers
``AutoProcessor`` + ``GitForCausalLM`` / ``BlipForConditionalGeneration``), then batched,
unconditional ``generate`` from the pixels alone (no prompt, so the row's ``prompt`` is empty).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from artray import families, storage
from artray.models.pretrained import EXPORT_RECORD
from artray.stages.caption_config import MLLM

META_FILES = ("config.json", EXPORT_RECORD)


def _family_of(folder: Path) -> str:
    """The captioner family of a local checkpoint folder, or MLLM."""
    captioners = families.names("captioner")
    try:
        record = json.loads((folder / EXPORT_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    if record.get("family") in captioners:
        return record["family"]
    found = [n for n in captioners if families.get(n).sniff(folder)]
    return found[0] if found else MLLM


def _hub_folder(repo_id: str) -> Path | None:
    """The hub snapshot folder holding `repo_id`'s config.json (downloaded alone), or None when unreachable."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "config.json")
        return Path(cached if isinstance(cached, str) else hf_hub_download(repo_id, "config.json")).parent
    except Exception:  # offline, no such repo, not a repo id: the MLLM loader will say what is wrong
        return None


def model_kind(model: str, opts: storage.StorageOptions) -> str:
    """'git-captioner', 'blip-captioner' (a captioner family), or 'mllm' for every other `model`."""
    local = model.removeprefix("file://")
    if storage.is_s3(model):
        with tempfile.TemporaryDirectory(prefix="artray-sniff-") as tmp:
            for name in META_FILES:
                data = storage.read_json(storage.join(model, name), opts)
                if data is not None:
                    (Path(tmp) / name).write_text(json.dumps(data), encoding="utf-8")
            return _family_of(Path(tmp))
    if Path(local).exists():
        return _family_of(Path(local))
    folder = _hub_folder(model) if model.count("/") == 1 else None
    return _family_of(folder) if folder else MLLM


class CaptionerGenerator:
    """A GIT or BLIP captioner on one actor: (images, preset names) → (text, generated tokens, hit
    max_new_tokens) each, like `MLLMGenerator`; the presets change nothing (unconditional captioning)."""

    def __init__(self, family: str, model: str, device: str, dtype, options: storage.StorageOptions, kwargs: dict):
        self.bundle = families.get(family, kind="captioner").load(model, device, dtype, options)
        config = self.bundle.model.generation_config
        tok = self.bundle.processor.tokenizer
        eos = config.eos_token_id if isinstance(config.eos_token_id, (list, tuple)) else [config.eos_token_id]
        self.eos = {int(e) for e in eos if e is not None} | ({tok.sep_token_id} - {None})
        self.bos = config.bos_token_id
        # Padding comes from the checkpoint's generation config (BLIP's generate sets pad_token_id itself).
        self.kwargs = {k: v for k, v in kwargs.items() if k != "pad_token_id"}
        self.revision = getattr(self.bundle.model.config, "_commit_hash", None)

    def __call__(self, images: list, presets: list[str] | None = None) -> list[tuple[str, int, bool]]:
        import torch

        b = self.bundle
        pixels = b.processor(images=images, return_tensors="pt")["pixel_values"].to(b.device, b.dtype)
        with torch.inference_mode():
            out = b.model.generate(pixel_values=pixels, **self.kwargs)
        results = []
        for ids in out.tolist():
            ids = ids[1:] if ids and ids[0] == self.bos else ids  # both families start from their BOS token
            stop = next((i for i, t in enumerate(ids) if t in self.eos), None)
            kept = ids if stop is None else ids[:stop]
            text = b.processor.tokenizer.decode(kept, skip_special_tokens=True).strip()
            results.append((text, len(kept) + (stop is not None),
                            stop is None and len(ids) >= self.kwargs["max_new_tokens"]))
        return results
