"""One encoder interface over every retrieval family artray runs.

An :class:`Encoder`'s ``encode_images(list[PIL.Image])`` and ``encode_texts(list[str])`` give
float32 numpy arrays of L2-normalised rows, so an inner product is a cosine for every family.
The embed job, the index, the Serve deployments and the evaluation all go through it, which
is what keeps a gallery and its queries in the same space.

The families (``blip``, ``longclip``, ``clip``, ``cnclip``, ``open_clip``, ``hf_clip``: the retrieval
kind of :mod:`artray.families`) each define their ``Encoder`` subclass in
``artray/families/<name>.py``; this module holds what they share, and knows no family:
``artray.families.load_encoder(family, checkpoint, device, dtype)`` picks the family from the
registry and loads its encoder. Importing it does not import torch (the CLI builds its parser
from configs that name these types).

Weight files from user paths load as safetensors; pickle checkpoints need the opt-in of
``artray.models.weights`` (``ARTRAY_ALLOW_PICKLE=1``).

``Encoder.identity()`` says which weights produced a vector: family, checkpoint, dim and
a *fingerprint* (the embeddings of a fixed synthetic image and text). Two encoders agree
only if their fingerprints do, which catches a checkpoint overwritten in place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Literal

import numpy as np

from artray.errors import UserError

if TYPE_CHECKING:
    import torch
    from PIL import Image

Device = Literal["auto", "cpu", "cuda"]
DType = Literal["auto", "float32", "float16", "bfloat16"]
# Long enough to reach past position 20 (where Long-CLIP's stretched positions begin) and past 77.
PROBE_TEXT = ("a painting of a large red circle above a small blue square on a yellow ground, with a black "
              "horizontal stripe across the bottom, a green triangle at the upper left, a white star in the centre "
              "and a purple diamond at the lower right, oil on canvas, nineteen twenty three; 一幅画，红色的圆形在蓝色方形之上")
# Cosine two fingerprints must reach: same dtype → the same weights up to kernel noise;
# across dtypes (fp16 GPU index, fp32 CPU queries) half-precision rounding is allowed for.
SAME_DTYPE_MIN_COSINE = 0.999
CROSS_DTYPE_MIN_COSINE = 0.99


class EncoderMismatchError(UserError, ValueError):
    """Vectors made by one encoder were about to meet queries from another."""


def resolve_device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def probe_image() -> Image.Image:
    """A fixed 64×64 synthetic picture (gradients and a square) for fingerprints."""
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64]
    arr = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    arr[16:40, 20:44] = (200, 35, 35)
    return Image.fromarray(arr, "RGB")


class Encoder(ABC):
    """A loaded image/text encoder; subclasses implement ``_images`` and ``_texts``."""

    family: str = ""

    def __init__(self, checkpoint: str, device: str, dtype: torch.dtype, max_batch: int = 64):
        self.checkpoint, self.device, self.dtype, self.max_batch = checkpoint, device, dtype, max_batch
        self.dim = 0

    @abstractmethod
    def _images(self, images: list[Image.Image]) -> torch.Tensor:
        """Unnormalised embeddings of one micro-batch of RGB images."""

    @abstractmethod
    def _texts(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised embeddings of one micro-batch of texts."""

    def _run(self, fn, items: list) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if not items:
            return np.zeros((0, self.dim), np.float32)
        with torch.no_grad():
            chunks = [fn(items[i:i + self.max_batch]) for i in range(0, len(items), self.max_batch)]
            return F.normalize(torch.cat(chunks).float(), dim=-1).cpu().numpy()

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) float32, unit rows. Images must be RGB (see ``artray.images.to_rgb``)."""
        return self._run(self._images, images)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, unit rows; texts longer than the model's context are truncated."""
        return self._run(self._texts, texts)

    def identity(self) -> dict:
        """Family, checkpoint, dim, dtype and the fingerprint of these weights (JSON-able)."""
        return {
            "family": self.family, "checkpoint": self.checkpoint, "dim": self.dim,
            "dtype": str(self.dtype).removeprefix("torch."),
            "fingerprint": {
                "image": [round(float(v), 6) for v in self.encode_images([probe_image()])[0]],
                "text": [round(float(v), 6) for v in self.encode_texts([PROBE_TEXT])[0]],
            },
        }

    def _set_dim(self) -> None:
        self.dim = int(self._run(self._texts, ["x"]).shape[1])


def canonical_checkpoint(checkpoint: str) -> str:
    """`checkpoint` as recorded with vectors: an existing local path made absolute, anything else as is."""
    from pathlib import Path

    if "://" in checkpoint or checkpoint.startswith(("hf-hub:", "local-dir:")) or not Path(checkpoint).exists():
        return checkpoint
    return str(Path(checkpoint).resolve())


class PretrainedEncoder(Encoder):
    """An encoder over a transformers model + processor (`artray.models.pretrained.PretrainedBundle`) that
    prepares inputs as the checkpoint was trained: images through its image processor with the settings its
    export record names (``image_preprocessing``; else the processor's own), texts tokenised at the record's
    ``text_length``, else at the family's published `default_text_length` (None: all the text tower's positions)."""

    default_text_length: int | None = None

    def __init__(self, checkpoint: str, bundle):
        from artray.models.pretrained import TrainedImagePreprocessor, text_length

        super().__init__(checkpoint, bundle.device, bundle.dtype)
        self.bundle = bundle
        self.max_length = text_length(bundle, self.default_text_length)
        self._prepare = TrainedImagePreprocessor.of(bundle, checkpoint)
        self.preprocessing = self._prepare.preprocessing
        self._set_dim()

    def _pixels(self, images: list[Image.Image]):
        return self._prepare(images)

    def _tokens(self, texts: list[str]):
        return self.bundle.processor.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                               return_tensors="pt")


def pooled(out) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features; the embedding is its pooler_output."""
    return out if not hasattr(out, "pooler_output") else out.pooler_output


def _cosine(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if va.shape != vb.shape:
        return -1.0
    return float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb) + 1e-12))


def check_same_encoder(recorded: dict, current: dict, what: str) -> None:
    """Raise `EncoderMismatchError` unless `current` (an ``identity()``) is the encoder `recorded` says
    made `what`: same family, checkpoint and dim, and fingerprints that agree."""
    for key in ("family", "checkpoint", "dim"):
        if recorded.get(key) != current.get(key):
            raise EncoderMismatchError(
                f"{what} was made by {recorded.get('family')}:{recorded.get('checkpoint')} (dim {recorded.get('dim')}), "
                f"not {current.get('family')}:{current.get('checkpoint')} (dim {current.get('dim')}): "
                "its vectors and this encoder's are not comparable. Embed and index again with this checkpoint, "
                "or use the index built for it")
    fp_old, fp_new = recorded.get("fingerprint") or {}, current.get("fingerprint") or {}
    if not fp_old or not fp_new:
        return
    floor = SAME_DTYPE_MIN_COSINE if recorded.get("dtype") == current.get("dtype") else CROSS_DTYPE_MIN_COSINE
    worst = min(_cosine(fp_old.get(k, []), fp_new.get(k, [])) for k in ("image", "text"))
    if worst < floor:
        raise EncoderMismatchError(
            f"{what} was made by {recorded['family']}:{recorded['checkpoint']}, but the weights now at that "
            f"checkpoint embed differently (fingerprint cosine {worst:.4f} < {floor}): the checkpoint was "
            "overwritten since. Embed and index again, or restore the original weights")
