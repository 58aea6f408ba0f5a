"""The one way artray opens a transformers checkpoint: resolve → ``from_pretrained`` → ``to(device).eval()``.

Every family's loader (BLIP retrieval and captioning, Chinese-CLIP, GIT, transformers CLIP) and
every trainer goes through these two functions, so s3:// resolution, the safetensors-only rule of
:mod:`artray.models.weights` and the dtype handling are written once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from artray.models.resolve import resolve_model_path
from artray.models.weights import pretrained_kwargs
from artray.storage import StorageOptions

if TYPE_CHECKING:
    import torch


@dataclass
class PretrainedBundle:
    """A transformers model in eval mode, its processor, and where/how it runs."""

    model: Any
    processor: Any
    device: str
    dtype: torch.dtype
    path: str = ""  # the local folder it was loaded from (an s3:// checkpoint's cache)


def from_pretrained(model_cls, path: str, dtype: torch.dtype | None = None):
    """``model_cls.from_pretrained(path)`` in `dtype` (default fp32), safetensors only unless opted in."""
    import torch

    return model_cls.from_pretrained(path, dtype=dtype or torch.float32, **pretrained_kwargs(path))


def load_pretrained(model_cls, processor_cls, name_or_path: str, device: str = "cpu",
                    dtype: torch.dtype | None = None,
                    storage_options: StorageOptions | None = None) -> PretrainedBundle:
    """`name_or_path` (hub id, local folder or s3:// URI) as an eval-mode `model_cls` on `device` with its
    `processor_cls` processor. `model_cls`/`processor_cls` are transformers classes or their names."""
    import torch
    import transformers

    if isinstance(model_cls, str):
        model_cls = getattr(transformers, model_cls)
    if isinstance(processor_cls, str):
        processor_cls = getattr(transformers, processor_cls)
    path = resolve_model_path(name_or_path, storage_options)
    dtype = dtype or torch.float32
    model = from_pretrained(model_cls, path, dtype).to(device).eval()
    return PretrainedBundle(model=model, processor=processor_cls.from_pretrained(path), device=device, dtype=dtype,
                            path=str(path))


# What an artray export records about how it was trained, beside its weights (`artray.train.export`):
# family, text_length, image_preprocessing, base model, preset; for a single weights file also `weights`
# (its file name: the record speaks for that file only).
EXPORT_RECORD = "artray_export.json"
# The transformers image-processor settings an export records (`image_processor_record`); the encoder passes
# them back to the same image processor, so images are resized, cropped and normalised as in training.
IMAGE_PROCESSOR_KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
                        "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb")


def export_record(path: str) -> dict:
    """The training record of an artray export at local folder `path` ({} for any other checkpoint)."""
    import json
    import os

    try:
        with open(os.path.join(path, EXPORT_RECORD), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def file_export_record(uri: str, local_path: str, storage_options: StorageOptions | None = None) -> dict:
    """The training record of a single weights file (`uri`, at `local_path` once resolved): the
    ``artray_export.json`` beside it when that record names this file ({} otherwise)."""
    import os

    from artray import storage

    if storage.is_s3(uri):
        try:
            record = storage.read_json(storage.join(storage.dirname(uri), EXPORT_RECORD),
                                       storage_options or storage.DEFAULT_OPTIONS) or {}
        except (storage.StorageError, ValueError):
            record = {}
    else:
        record = export_record(os.path.dirname(os.path.abspath(local_path)))
    return record if record.get("weights") == os.path.basename(local_path) else {}


def image_processor_record(image_processor) -> dict:
    """How a transformers image processor prepares images, as an export records it (``library: transformers``
    + its settings; JSON-able)."""
    settings = image_processor.to_dict()
    out = {"library": "transformers"}
    for key in IMAGE_PROCESSOR_KEYS:
        value = settings.get(key)
        if value is not None:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def image_processor_kwargs(preprocessing: dict | None, where: str) -> dict:
    """The keyword arguments that make a transformers image processor prepare images as `preprocessing`
    (an export's ``image_preprocessing``) says; {} for None (the processor's own settings)."""
    if not preprocessing:
        return {}
    if preprocessing.get("library") != "transformers":
        raise ValueError(f"{where}: image_preprocessing is for {preprocessing.get('library')!r}, not a transformers "
                         "image processor: the record does not belong to this checkpoint; fix or remove it")
    return {k: v for k, v in preprocessing.items() if k in IMAGE_PROCESSOR_KEYS}


def recorded_image_preprocessing(path: str, image_processor) -> dict:
    """The image preprocessing the transformers checkpoint at local `path` was trained with: its export record's,
    else its `image_processor`'s own (what an untrained checkpoint was published with). Encoders prepare images
    this way, and trainers that start from the checkpoint too (so fine-tuning an export keeps its preprocessing)."""
    return export_record(path).get("image_preprocessing") or image_processor_record(image_processor)


class TrainedImagePreprocessor:
    """A transformers checkpoint's image processor, preparing images as the checkpoint was trained
    (`recorded_image_preprocessing`): the one way encoders, trainers and captioners turn images into pixels."""

    def __init__(self, path: str, image_processor, where: str):
        self.image_processor = image_processor
        self.preprocessing = recorded_image_preprocessing(path, image_processor)
        self._kwargs = image_processor_kwargs(self.preprocessing, where)

    @classmethod
    def of(cls, bundle: PretrainedBundle, where: str) -> "TrainedImagePreprocessor":
        """The preprocessor of a loaded checkpoint."""
        return cls(bundle.path, bundle.processor.image_processor, where)

    def __call__(self, images: list) -> "torch.Tensor":
        return self.image_processor(images, return_tensors="pt", **self._kwargs)["pixel_values"]


def text_length(bundle: PretrainedBundle, default: int | None) -> int:
    """Text tokens an encoder keeps: what the checkpoint was trained with (its export record), else the
    family's published length (`default`; None: every position), never more than the text tower's positions."""
    positions = bundle.model.config.text_config.max_position_embeddings
    wanted = export_record(bundle.path).get("text_length") or default or positions
    return min(int(wanted), positions)
