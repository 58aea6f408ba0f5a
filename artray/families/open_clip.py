"""open_clip models (evaluation and serving; no trainer): ``hf-hub:org/name``, ``local-dir:/path``,
``ViT-B-32@laion2b_s34b_b79k`` (architecture@pretrained tag) or an OpenAI-layout state dict file."""

from __future__ import annotations

from pathlib import Path

from artray.encoders import Encoder
from artray.families.base import is_state_dict_file
from artray.storage import StorageOptions


def load_open_clip(checkpoint: str, device: str = "cpu", dtype=None, storage_options: StorageOptions | None = None):
    """A bundle with ``model`` (eval mode), ``preprocess`` and ``tokenizer`` of an open_clip checkpoint; a single
    state dict file (OpenAI / Long-CLIP layout) loads through :func:`artray.models.longclip.load_longclip`."""
    import torch

    from artray.models.longclip import LongClipBundle, load_longclip
    from artray.models.weights import PICKLE_SUFFIXES, check_weights_path

    if checkpoint.endswith((*PICKLE_SUFFIXES, ".safetensors")):
        return load_longclip(checkpoint, device, dtype, storage_options)
    import open_clip

    name, pretrained = checkpoint, None
    if "@" in checkpoint and not checkpoint.startswith(("hf-hub:", "local-dir:")):
        name, pretrained = checkpoint.split("@", 1)
        check_weights_path(pretrained)  # a local weights file; tags pass
    elif checkpoint.startswith("local-dir:"):
        check_weights_path(checkpoint.removeprefix("local-dir:"))
    dtype = dtype or torch.float32
    precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device,
                                                                 precision=precision)
    tokenizer = open_clip.get_tokenizer(name)
    return LongClipBundle(model=model.eval(), preprocess=preprocess, tokenizer=tokenizer,
                          context_length=int(getattr(tokenizer, "context_length", 77)), device=device, dtype=dtype)


class OpenClipEncoder(Encoder):
    """Any open_clip CLIP bundle (``model.encode_image/encode_text``, ``preprocess``, ``tokenizer``)."""

    def __init__(self, family: str, checkpoint: str, bundle):
        super().__init__(checkpoint, bundle.device, bundle.dtype)
        self.family = family
        self.model, self.preprocess, self.tokenizer = bundle.model, bundle.preprocess, bundle.tokenizer
        self._set_dim()

    def _images(self, images):
        import torch

        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device, self.dtype)
        return self.model.encode_image(pixels)

    def _texts(self, texts):
        return self.model.encode_text(self.tokenizer(texts).to(self.device))


class OpenClipFamily:
    name = "open_clip"
    kind = "retrieval"
    description = "open_clip CLIP (hf-hub:, local-dir:, arch@pretrained or an OpenAI-layout state dict file)"
    presets: dict[str, dict] = {}
    context_length = 77
    rerankers = frozenset({"laclip"})
    trainer = None
    tiny = {"clip-77": "artray.scaffold.tiny.clip:build"}

    def load(self, checkpoint, device="cpu", dtype=None, storage_options=None):
        return load_open_clip(checkpoint, device, dtype, storage_options)

    def load_encoder(self, checkpoint, device="cpu", dtype=None, storage_options=None) -> Encoder:
        return OpenClipEncoder(self.name, checkpoint, self.load(checkpoint, device, dtype, storage_options))

    def sniff(self, path: Path) -> bool:
        return (path.is_dir() and (path / "open_clip_config.json").exists()) or is_state_dict_file(path)


OPEN_CLIP = OpenClipFamily()
