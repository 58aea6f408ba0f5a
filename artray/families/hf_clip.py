"""transformers ``CLIPModel`` checkpoints (evaluation and serving; no trainer): hub id, folder or s3://."""

from __future__ import annotations

from pathlib import Path

from artray.encoders import Encoder, pooled
from artray.families.base import config_json


class HFClipEncoder(Encoder):
    family = "hf_clip"

    def __init__(self, checkpoint: str, bundle):
        super().__init__(checkpoint, bundle.device, bundle.dtype)
        self.model, self.processor = bundle.model, bundle.processor
        self.max_length = self.model.config.text_config.max_position_embeddings
        self._set_dim()

    def _images(self, images):
        pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(self.device, self.dtype)
        return pooled(self.model.get_image_features(pixel_values=pixels))

    def _texts(self, texts):
        tok = self.processor.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                       return_tensors="pt").to(self.device)
        return pooled(self.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask))


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
