"""Captioner families (the ICCV work): GIT and BLIP captioning with the language-modelling loss.

Validation decodes every val image with beam search (``num_beams``, ``max_new_tokens``, ``length_penalty``) and
scores the captions with CIDEr (pycocoevalcap's scorer, lower-cased whitespace tokens; the
Java PTB tokenizer is not needed) against the artwork's captions, plus the val LM loss;
``select_metric`` keeps the best by ``cider`` or ``val_loss``.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from artray.models.pretrained import TrainedImagePreprocessor, from_pretrained
from artray.models.resolve import resolve_model_path
from artray.train.batches import decode_images, to_device
from artray.train.config import TrainConfig
from artray.train.export import save_pretrained_export


class CaptionerModule(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask, labels):
        out = self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return {"loss": out.loss}


def _words(text: str) -> str:
    return " ".join(re.findall(r"[\w']+", text.lower()))


def cider(candidates: list[str], references: list[list[str]]) -> float:
    """Corpus CIDEr-D of `candidates` against `references` (pycocoevalcap)."""
    from pycocoevalcap.cider.cider import Cider

    gts = {i: [_words(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [_words(c) or "empty"] for i, c in enumerate(candidates)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


class CaptionerTrainer:
    """A captioner's training hooks: LM loss on (image, caption); validation by beam-search CIDEr and val loss.
    Subclasses name the transformers model and processor classes."""

    model_class = ""  # transformers class names
    processor_class = ""

    @classmethod
    def classes(cls):
        import transformers

        return getattr(transformers, cls.model_class), getattr(transformers, cls.processor_class)

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.path = resolve_model_path(cfg.model, cfg.storage_options())
        self.model_cls, processor_cls = self.classes()
        self.processor = processor_cls.from_pretrained(self.path)
        # images as the base checkpoint was trained (an export's record), else as its processor says
        self._prepare = TrainedImagePreprocessor(self.path, self.processor.image_processor, cfg.model)

    def build_module(self) -> nn.Module:
        model = from_pretrained(self.model_cls, self.path)
        if self.cfg.grad_checkpointing:
            model.gradient_checkpointing_enable()
        return CaptionerModule(model)

    def pixels(self, images) -> torch.Tensor:
        return self._prepare([im.convert("RGB") for im in images])

    def train_batch(self, images, captions: list[str]) -> dict:
        tok = self.processor.tokenizer
        enc = tok(captions, padding=True, truncation=True, max_length=self.cfg.context_length or 128,
                  return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return {"pixel_values": self.pixels(images), "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"], "labels": labels}

    def loss(self, out: dict, gather: bool = True) -> torch.Tensor:
        return out["loss"]

    @torch.no_grad()
    def validate(self, engine, arts: list[dict], texts: list[dict], dtype) -> dict:
        bs, losses, generated = self.cfg.batch_size, [], []
        model = engine.module.model
        for i in range(0, len(arts), bs):
            chunk = arts[i:i + bs]
            images = decode_images([a["image"] for a in chunk], self.cfg.max_image_pixels)
            batch = to_device(self.train_batch(images, [a["captions"][0] for a in chunk]), engine.device, dtype)
            losses.append(float(engine(**batch)["loss"]))
            ids = model.generate(pixel_values=batch["pixel_values"], num_beams=self.cfg.num_beams,
                                 max_new_tokens=self.cfg.max_new_tokens, length_penalty=self.cfg.length_penalty)
            generated += self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)
        refs = [a["captions"] for a in arts]
        return {"val_loss": sum(losses) / max(1, len(losses)), "cider": cider(generated, refs),
                "example": generated[0] if generated else ""}

    @classmethod
    def export(cls, cfg: TrainConfig, state_dict: dict[str, torch.Tensor], out_dir: str) -> str:
        """A ``save_pretrained`` folder that ``load_git_captioner`` / ``load_blip_captioner`` loads."""
        model_cls, processor_cls = cls.classes()
        return save_pretrained_export(cfg, model_cls, processor_cls, state_dict, out_dir)


class GitCaptionerTrainer(CaptionerTrainer):
    model_class, processor_class = "AutoModelForCausalLM", "AutoProcessor"


class BlipCaptionerTrainer(CaptionerTrainer):
    model_class, processor_class = "BlipForConditionalGeneration", "BlipProcessor"
