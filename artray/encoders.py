"""One encoder interface over every retrieval family artray runs.

``load_encoder(family, checkpoint, device, dtype)`` returns an :class:`Encoder` whose
``encode_images(list[PIL.Image])`` and ``encode_texts(list[str])`` give float32 numpy
arrays of L2-normalised rows, so an inner product is a cosine for every family. The
embed job, the index, the Serve deployments and the evaluation all go through it, which
is what keeps a gallery and its queries in the same space.

Families (a plain dict, ``FAMILIES``):

- ``blip``      BLIP ITC features (``BlipForImageTextRetrieval``; hub id, folder or s3://)
- ``longclip``  a Long-CLIP state dict file (248 tokens) in open_clip; a 77-token OpenAI one too
- ``cnclip``    Chinese-CLIP (transformers)
- ``open_clip`` ``hf-hub:org/name``, ``local-dir:/path``, ``ViT-B-32@laion2b_s34b_b79k``
                (architecture@pretrained tag) or an OpenAI-layout state dict file
- ``hf_clip``   transformers ``CLIPModel`` (hub id, folder or s3://)

Weight files from user paths load as safetensors; pickle checkpoints need the opt-in of
``artray.models.weights`` (``ARTRAY_ALLOW_PICKLE=1``).

``Encoder.identity()`` says which weights produced a vector: family, checkpoint, dim and
a *fingerprint* (the embeddings of a fixed synthetic image and text). Two encoders agree
only if their fingerprints do, which catches a checkpoint overwritten in place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from artray.errors import UserError
from artray.models.weights import PICKLE_SUFFIXES, check_weights_path, pretrained_kwargs
from artray.storage import StorageOptions

FAMILIES_HELP = "blip, longclip, cnclip, open_clip or hf_clip"
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
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]


def probe_image() -> Image.Image:
    """A fixed 64×64 synthetic picture (gradients and a square) for fingerprints."""
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

    @torch.no_grad()
    def _run(self, fn, items: list) -> np.ndarray:
        if not items:
            return np.zeros((0, self.dim), np.float32)
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


class BlipEncoder(Encoder):
    family = "blip"

    def __init__(self, checkpoint, device, dtype, storage_options=None):
        from artray.models.blip import load_blip_retrieval

        super().__init__(checkpoint, device, dtype)
        self.bundle = load_blip_retrieval(checkpoint, device, dtype, storage_options)
        cfg = self.bundle.model.config.text_config
        self.max_length = min(self.bundle.processor.tokenizer.model_max_length, cfg.max_position_embeddings)
        self._set_dim()

    def _images(self, images):
        from artray.models.blip import blip_image_embeds

        pixels = self.bundle.processor(images=images, return_tensors="pt").pixel_values
        return blip_image_embeds(self.bundle, pixels)

    def _texts(self, texts):
        from artray.models.blip import blip_text_embeds

        tok = self.bundle.processor.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                              return_tensors="pt")
        return blip_text_embeds(self.bundle, tok.input_ids, tok.attention_mask)

    def itm_logits(self, images: list[Image.Image], texts: list[str], image_index: list[int] | None = None) -> np.ndarray:
        """ITM logits (no match, match) of texts[i] with images[image_index[i]] (default: images[i]),
        float32 (len(texts), 2); each image is encoded once per micro-batch of texts."""
        from artray.models.blip import blip_itm_logits

        index = list(range(len(texts))) if image_index is None else list(image_index)
        if len(index) != len(texts) or any(not 0 <= i < len(images) for i in index):
            raise ValueError(f"itm_logits: {len(texts)} texts need as many image indexes into {len(images)} images")
        out = []
        for start in range(0, len(texts), self.max_batch):
            chunk = index[start:start + self.max_batch]
            used = sorted(set(chunk))
            pixels = self.bundle.processor(images=[images[i] for i in used], return_tensors="pt").pixel_values
            tok = self.bundle.processor.tokenizer(texts[start:start + self.max_batch], padding=True, truncation=True,
                                                  max_length=self.max_length, return_tensors="pt")
            local = [used.index(i) for i in chunk]
            out.append(blip_itm_logits(self.bundle, pixels, tok.input_ids, tok.attention_mask, local).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 2), np.float32)


class OpenClipEncoder(Encoder):
    """open_clip models: Long-CLIP and OpenAI-layout state dict files, hub/local/named models."""

    family = "open_clip"

    def __init__(self, checkpoint, device, dtype, storage_options=None):
        super().__init__(checkpoint, device, dtype)
        if self.family == "longclip" or checkpoint.endswith((*PICKLE_SUFFIXES, ".safetensors")):
            from artray.models.longclip import load_longclip

            bundle = load_longclip(checkpoint, device, dtype, storage_options)
            self.model, self.preprocess, self.tokenizer = bundle.model, bundle.preprocess, bundle.tokenizer
        else:
            import open_clip

            name, pretrained = checkpoint, None
            if "@" in checkpoint and not checkpoint.startswith(("hf-hub:", "local-dir:")):
                name, pretrained = checkpoint.split("@", 1)
                check_weights_path(pretrained)  # a local weights file; tags pass
            elif checkpoint.startswith("local-dir:"):
                check_weights_path(checkpoint.removeprefix("local-dir:"))
            precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=device, precision=precision)
            self.model.eval()
            self.tokenizer = open_clip.get_tokenizer(name)
        self._set_dim()

    def _images(self, images):
        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device, self.dtype)
        return self.model.encode_image(pixels)

    def _texts(self, texts):
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


class LongClipEncoder(OpenClipEncoder):
    family = "longclip"


def _pooled(out) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features; the embedding is its pooler_output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class CNClipEncoder(Encoder):
    family = "cnclip"

    def __init__(self, checkpoint, device, dtype, storage_options=None):
        from artray.models.cnclip import load_cnclip

        super().__init__(checkpoint, device, dtype)
        self.bundle = load_cnclip(checkpoint, device, dtype, storage_options)
        cfg = self.bundle.model.config.text_config
        self.max_length = min(self.bundle.processor.tokenizer.model_max_length, cfg.max_position_embeddings)
        self._set_dim()

    def _images(self, images):
        from artray.models.cnclip import cnclip_image_embeds

        pixels = self.bundle.processor(images=images, return_tensors="pt").pixel_values
        return cnclip_image_embeds(self.bundle, pixels)

    def _texts(self, texts):
        from artray.models.cnclip import cnclip_text_embeds

        tok = self.bundle.processor.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                              return_tensors="pt")
        return cnclip_text_embeds(self.bundle, tok.input_ids, tok.attention_mask, tok.get("token_type_ids"))


class HFClipEncoder(Encoder):
    family = "hf_clip"

    def __init__(self, checkpoint, device, dtype, storage_options=None):
        from transformers import CLIPModel, CLIPProcessor

        from artray.models.resolve import resolve_model_path

        super().__init__(checkpoint, device, dtype)
        path = resolve_model_path(checkpoint, storage_options)
        self.model = CLIPModel.from_pretrained(path, dtype=dtype, **pretrained_kwargs(path)).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(path)
        self.max_length = self.model.config.text_config.max_position_embeddings
        self._set_dim()

    def _images(self, images):
        pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(self.device, self.dtype)
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def _texts(self, texts):
        tok = self.processor.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                       return_tensors="pt").to(self.device)
        return _pooled(self.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask))


FAMILIES: dict[str, type[Encoder]] = {
    "blip": BlipEncoder, "longclip": LongClipEncoder, "cnclip": CNClipEncoder,
    "open_clip": OpenClipEncoder, "hf_clip": HFClipEncoder,
}
Family = Literal["blip", "longclip", "cnclip", "open_clip", "hf_clip"]


def canonical_checkpoint(checkpoint: str) -> str:
    """`checkpoint` as recorded with vectors: an existing local path made absolute, anything else as is."""
    from pathlib import Path

    if "://" in checkpoint or checkpoint.startswith(("hf-hub:", "local-dir:")) or not Path(checkpoint).exists():
        return checkpoint
    return str(Path(checkpoint).resolve())


def load_encoder(family: str, checkpoint: str, device: str = "auto", dtype: str = "auto",
                 storage_options: StorageOptions | None = None) -> Encoder:
    """Load `checkpoint` as a `family` encoder on `device` ("auto": CUDA if present) in `dtype`
    ("auto": fp16 on CUDA, fp32 on CPU)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown encoder family {family!r}: use {FAMILIES_HELP}")
    device = resolve_device(device)
    return FAMILIES[family](canonical_checkpoint(checkpoint), device, resolve_dtype(dtype, device), storage_options)


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
