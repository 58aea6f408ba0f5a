"""Captioner checkpoints in `artray caption`: which model kind a `model` is, and captioning with a GIT/BLIP captioner.

Method (A) fine-tuned GIT-base and BLIP-base captioners and decoded the test split with beam
search (4 beams, length_penalty 0.6). `model_kind` tells such a checkpoint from an MLLM before
any Ray work: an artray export names its family in ``artray_export.json``; any other checkpoint
is recognised by the captioner families' own ``sniff`` (``config.json``: model_type ``git``, or
``blip`` with ``BlipForConditionalGeneration``). Only the two small JSON files are read — from a
local folder, an ``s3://`` folder or the hub (the local Hugging Face cache first; one short look-up,
and a hub out of reach is an error at once) — never the weights. Anything else is an MLLM.

`CaptionerGenerator` is what an actor runs for a captioner: the family's loader (transformers
``AutoProcessor`` + ``GitForCausalLM`` / ``BlipForConditionalGeneration``), then batched,
unconditional ``generate`` from the pixels alone (no prompt, so the row's ``prompt`` is empty).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from artray import families, storage
from artray.models.pretrained import EXPORT_RECORD, TrainedImagePreprocessor
from artray.stages.caption_config import MLLM, CaptionError

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


HUB_TIMEOUT_S = 5.0  # one look-up of a hub id's config.json, no retries: an offline machine answers at once


def _hub_folder(repo_id: str) -> Path | None:
    """The local folder holding hub repo `repo_id`'s config.json: the Hugging Face cache's copy, else that file
    alone downloaded after one short look-up. None when the hub has no such repo or file (or `repo_id` is not
    a repo id): then it is no captioner, and the MLLM loader says what is wrong. A hub that cannot be reached
    (HF_HUB_OFFLINE, no network) with nothing cached is a `CaptionError` at once, not ~20 s of retries."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HFValidationError, RepositoryNotFoundError

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except HFValidationError:  # not a repo id at all
        return None
    if isinstance(cached, str):
        return Path(cached).parent
    if cached is not None:  # the cache remembers that the repo has no config.json
        return None
    where = (f"model {repo_id!r} is not a local path or an s3:// URI, and its config.json is not in the Hugging Face "
             f"cache ({constants.HF_HUB_CACHE})")
    fix = (f"download it first where the hub is reachable (`hf download {repo_id}`, into the cache every node "
           "reads: HF_HOME), or give a local folder or an s3:// copy")
    if constants.is_offline_mode():
        raise CaptionError(f"{where}, and HF_HUB_OFFLINE is set: artray cannot tell whether it is a GIT/BLIP "
                           f"captioner or an MLLM, nor could the actors load it. {fix}")
    try:  # one HEAD request (no retries), then the small file itself
        get_hf_file_metadata(hf_hub_url(repo_id, "config.json"), timeout=HUB_TIMEOUT_S)
    except (RepositoryNotFoundError, EntryNotFoundError):
        return None
    except Exception as exc:  # noqa: BLE001  connection refused, DNS, timeout, 5xx: the hub is out of reach
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CaptionError(f"{where}, and the hub ({constants.ENDPOINT}) cannot be reached ({detail}): artray "
                           f"cannot tell whether it is a GIT/BLIP captioner or an MLLM. {fix}; set HF_HUB_OFFLINE=1 "
                           "on machines without network") from exc
    return Path(hf_hub_download(repo_id, "config.json", etag_timeout=HUB_TIMEOUT_S)).parent


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
        # images as the checkpoint was trained (a captioner export's record), else as its processor says
        self.pixels = TrainedImagePreprocessor.of(self.bundle, model)

    def __call__(self, images: list, presets: list[str] | None = None) -> list[tuple[str, int, bool]]:
        import torch

        b = self.bundle
        with torch.inference_mode():
            out = b.model.generate(pixel_values=self.pixels(images).to(b.device, b.dtype), **self.kwargs)
        results = []
        for ids in out.tolist():
            ids = ids[1:] if ids and ids[0] == self.bos else ids  # both families start from their BOS token
            stop = next((i for i, t in enumerate(ids) if t in self.eos), None)
            kept = ids if stop is None else ids[:stop]
            text = b.processor.tokenizer.decode(kept, skip_special_tokens=True).strip()
            results.append((text, len(kept) + (stop is not None),
                            stop is None and len(ids) >= self.kwargs["max_new_tokens"]))
        return results
