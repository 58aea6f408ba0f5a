"""BLIP retrieval (``BlipForImageTextRetrieval``): ITC embeddings for search, the ITM head for re-ranking.
Loader: :mod:`artray.models.blip`; training (ITC + ITM with hard negatives): :mod:`artray.train.blip`.
"blip-retrieval" is accepted as another spelling of this family's name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from artray.encoders import Encoder, PretrainedEncoder
from artray.families.base import config_json

PRESETS: dict[str, dict] = {
    # SIGIR 2025's BLIP fine-tuning (jcgohr/BLIP configs/artpedia_*): ITC + ITM with hard negatives,
    # AdamW 5e-6, wd 0.05, cosine to 0, 6 epochs, batch 16/GPU, text cut to 35 tokens.
    "blip": {"loss": "itc_itm", "optimizer": "adamw", "lr": 5e-6, "weight_decay": 0.05,
             "schedule": "cosine", "warmup_steps": 0, "epochs": 6, "batch_size": 16, "max_length": 35,
             "grad_clip": None, "select_metric": "val_r1"},
}


class BlipEncoder(PretrainedEncoder):
    family = "blip"
    default_text_length = 35  # a checkpoint artray did not train: the SIGIR work's length

    def _images(self, images):
        from artray.models.blip import blip_image_embeds

        return blip_image_embeds(self.bundle, self._pixels(images))

    def _texts(self, texts):
        from artray.models.blip import blip_text_embeds

        tok = self._tokens(texts)
        return blip_text_embeds(self.bundle, tok.input_ids, tok.attention_mask)

    def itm_logits(self, images: list, texts: list[str], image_index: list[int] | None = None) -> np.ndarray:
        """ITM logits (no match, match) of texts[i] with images[image_index[i]] (default: images[i]),
        float32 (len(texts), 2); each image is encoded once per micro-batch of texts."""
        import torch

        from artray.models.blip import blip_itm_logits

        index = list(range(len(texts))) if image_index is None else list(image_index)
        if len(index) != len(texts) or any(not 0 <= i < len(images) for i in index):
            raise ValueError(f"itm_logits: {len(texts)} texts need as many image indexes into {len(images)} images")
        out = []
        for start in range(0, len(texts), self.max_batch):
            chunk = index[start:start + self.max_batch]
            used = sorted(set(chunk))
            pixels = self._pixels([images[i] for i in used])
            tok = self._tokens(texts[start:start + self.max_batch])
            local = [used.index(i) for i in chunk]
            out.append(blip_itm_logits(self.bundle, pixels, tok.input_ids, tok.attention_mask, local).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 2), np.float32)


class BlipFamily:
    name = "blip"
    kind = "retrieval"
    description = "BLIP retrieval: ITC features, ITM re-ranking (BlipForImageTextRetrieval)"
    presets = PRESETS
    context_length = BlipEncoder.default_text_length  # the SIGIR work truncates BLIP's text to 35 tokens
    rerankers = frozenset({"laclip", "itm"})
    trainer = "artray.train.blip:BlipRetrievalTrainer"
    tiny = {"blip-retrieval": "artray.scaffold.tiny.blip:build_retrieval"}

    def load(self, checkpoint, device="cpu", dtype=None, storage_options=None):
        from artray.models.blip import load_blip_retrieval

        return load_blip_retrieval(checkpoint, device, dtype, storage_options)

    def load_encoder(self, checkpoint, device="cpu", dtype=None, storage_options=None) -> Encoder:
        return BlipEncoder(checkpoint, self.load(checkpoint, device, dtype, storage_options))

    def sniff(self, path: Path) -> bool:
        cfg = config_json(path) or {}
        arch = cfg.get("architectures") or []
        return cfg.get("model_type") == "blip" and (not arch or "BlipForImageTextRetrieval" in arch)


BLIP = BlipFamily()
