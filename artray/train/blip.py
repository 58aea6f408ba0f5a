"""BLIP retrieval family: image–text contrastive (ITC) + image–text matching (ITM) with hard negatives
mined in the batch, on transformers' `BlipForImageTextRetrieval`.

ITC embeddings are the normalised ``vision_proj`` of the vision CLS token and ``text_proj`` of
the unimodal text encoder's CLS token (what :mod:`artray.models.blip` embeds with). Each
positive pair gets one hard negative text and one hard negative image, drawn from this
worker's batch with probability ∝ softmax of the ITC similarity (BLIP's rule; BLIP's
``negative_all_rank`` would mine across workers). BLIP reads few text tokens (35 in the SIGIR
work): ``max_length`` is a config value and the share of texts it cut is reported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from artray.models.pretrained import TrainedImagePreprocessor, from_pretrained
from artray.models.resolve import resolve_model_path
from artray.train.config import TrainConfig
from artray.train.export import save_pretrained_export
from artray.train.losses import symmetric_infonce


class BlipRetrievalModule(nn.Module):
    """The BLIP model plus a learnable ITC temperature (as ``logit_scale``; not part of the export)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def _image(self, pixel_values):
        return self.model.vision_model(pixel_values=pixel_values).last_hidden_state

    def _text(self, input_ids, attention_mask, image_embeds=None):
        kw = {}
        if image_embeds is not None:
            kw = {"encoder_hidden_states": image_embeds,
                  "encoder_attention_mask": torch.ones(image_embeds.shape[:2], dtype=torch.long,
                                                       device=image_embeds.device)}
        return self.model.text_encoder(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, itm=False):
        out = {"logit_scale": self.logit_scale}
        if pixel_values is not None:
            vision = self._image(pixel_values)
            out["vision"] = vision
            out["img"] = self.model.vision_proj(vision[:, 0, :])
        if input_ids is not None:
            out["txt"] = self.model.text_proj(self._text(input_ids, attention_mask)[:, 0, :])
        if itm and input_ids.shape[0] == 1:  # a lone pair has no in-batch negative: positive term only
            out["itm_logits"] = self.model.itm_head(self._text(input_ids, attention_mask, out["vision"])[:, 0, :])
            out["itm_labels"] = torch.ones(1, dtype=torch.long, device=input_ids.device)
        elif itm:
            img = F.normalize(out["img"].float(), dim=-1)
            txt = F.normalize(out["txt"].float(), dim=-1)
            with torch.no_grad():
                sim = img @ txt.T
                eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
                w_i2t = F.softmax(sim, dim=1).masked_fill(eye, 0) + 1e-9 * (~eye)
                w_t2i = F.softmax(sim.T, dim=1).masked_fill(eye, 0) + 1e-9 * (~eye)
                neg_txt = torch.multinomial(w_i2t, 1).squeeze(1)
                neg_img = torch.multinomial(w_t2i, 1).squeeze(1)
            vision = out["vision"]
            images = torch.cat([vision, vision, vision[neg_img]])
            ids = torch.cat([input_ids, input_ids[neg_txt], input_ids])
            mask = torch.cat([attention_mask, attention_mask[neg_txt], attention_mask])
            # rows: (image, its text), (image, hard negative text), (hard negative image, text)
            out["itm_logits"] = self.model.itm_head(self._text(ids, mask, images)[:, 0, :])
            n = input_ids.shape[0]
            out["itm_labels"] = torch.cat([torch.ones(n), torch.zeros(2 * n)]).long().to(input_ids.device)
        return out


class BlipRetrievalTrainer:
    """BLIP retrieval's training hooks: ITC over all workers' batches + ITM with in-batch hard negatives."""

    def __init__(self, cfg: TrainConfig):
        from transformers import BlipProcessor

        self.cfg = cfg
        self.path = resolve_model_path(cfg.model, cfg.storage_options())
        self.processor = BlipProcessor.from_pretrained(self.path)
        # images as the base checkpoint was trained (an export's record), else as its processor says
        self._prepare = TrainedImagePreprocessor(self.path, self.processor.image_processor, cfg.model)
        self.cut = [0, 0]

    def build_module(self) -> nn.Module:
        from transformers import BlipForImageTextRetrieval

        model = from_pretrained(BlipForImageTextRetrieval, self.path)
        if self.cfg.freeze_vision:
            for p in model.vision_model.parameters():
                p.requires_grad_(False)
        return BlipRetrievalModule(model)

    def pixels(self, images) -> torch.Tensor:
        return self._prepare([im.convert("RGB") for im in images])

    def tokens(self, texts: list[str]) -> dict:
        tok = self.processor.tokenizer
        enc = tok(texts, padding="max_length", truncation=True, max_length=self.cfg.max_length, return_tensors="pt")
        self.cut[0] += len(texts)
        self.cut[1] += sum(len(ids) > self.cfg.max_length for ids in tok(texts, truncation=False)["input_ids"])
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def train_batch(self, images, captions: list[str]) -> dict:
        return {"pixel_values": self.pixels(images), **self.tokens(captions), "itm": True}

    def image_batch(self, images) -> dict:
        return {"pixel_values": self.pixels(images)}

    def text_batch(self, texts: list[str]) -> dict:
        return self.tokens(texts)

    def loss(self, out: dict, gather: bool = True) -> torch.Tensor:
        itc = symmetric_infonce(out["img"], out["txt"], out["logit_scale"], self.cfg.label_smoothing,
                                gather and self.cfg.gather_features)
        if "itm_logits" not in out:
            return itc
        return itc + F.cross_entropy(out["itm_logits"].float(), out["itm_labels"])

    def truncation(self) -> dict:
        return {"texts": self.cut[0], "truncated": self.cut[1], "max_length": self.cfg.max_length}

    @classmethod
    def export(cls, cfg: TrainConfig, state_dict: dict[str, torch.Tensor], out_dir: str) -> str:
        """A ``save_pretrained`` folder that :func:`artray.models.blip.load_blip_retrieval` loads; its record keeps
        the image preprocessing the run trained with (the base checkpoint's)."""
        from transformers import BlipForImageTextRetrieval, BlipProcessor

        return save_pretrained_export(cfg, BlipForImageTextRetrieval, BlipProcessor, state_dict, out_dir,
                                      text_length=cfg.max_length)
