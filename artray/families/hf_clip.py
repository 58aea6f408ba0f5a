"""transformers ``CLIPModel`` checkpoints (evaluation and serving; no trainer): hub id, folder or s3://."""

from __future__ import annotations

from pathlib import Path

from artray.encoders import Encoder, PretrainedEncoder, pooled
from artray.families.base import config_json


class HFClipEncoder(PretrainedEncoder):
    family = "hf_clip"  # texts keep every position of the text tower (77 for OpenAI's CLIP)

    def _images(self, images):
        pixels = self._pixels(images).to(self.device, self.dtype)
        return pooled(self.bundle.model.get_image_features(pixel_values=pixels))

    def _texts(self, texts):
        tok = self._tokens(texts).to(self.device)
        return pooled(self.bundle.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask))


class HFClipFamily:
    name = "hf_clip"
    kind = "retrieval"
    description = "transformers CLIPModel (hub id, folder or s3://)"
    presets: dict[str, dict] = {}
    context_length = 77
    rerankers = frozenset({"laclip"})
    trainer = None
    tiny = {"hf-clip": "artray.scaffold.tiny.hf_clip:build"}

    def load(self, checkpoint, device="cpu", dtype=None, storage_options=None):
        from artray.models.pretrained import load_pretrained

        return load_pretrained("CLIPModel", "CLIPProcessor", checkpoint, device, dtype, storage_options)

    def load_encoder(self, checkpoint, device="cpu", dtype=None, storage_options=None) -> Encoder:
        return HFClipEncoder(checkpoint, self.load(checkpoint, device, dtype, storage_options))

    def sniff(self, path: Path) -> bool:
        return (config_json(path) or {}).get("model_type") == "clip"


HF_CLIP = HFClipFamily()
