"""Validation inside the loop: retrieval recall and contrastive val loss, or the family's own (captioners).

Every rank runs the same validation over the full validation set in the same order, so
ZeRO-3's parameter gathering stays in lockstep; rank 0's numbers are the ones reported.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from artray.evaluate import retrieval_metrics as rm
from artray.train.batches import decode_images, to_device


def _move(batch: dict, engine, dtype) -> dict:
    return to_device(batch, engine.device, dtype)


def recall(text_emb: torch.Tensor, image_emb: torch.Tensor, relevant: list[set[int]]) -> dict:
    """val_r1/5/10 (text→image R@K), val_i2t_r1/5/10 (image→text; images with no text left out) and
    val_mean_recall (their mean), by the evaluation's own metrics (:mod:`artray.evaluate.retrieval_metrics`)."""
    sim = (F.normalize(text_emb.float(), dim=-1) @ F.normalize(image_emb.float(), dim=-1).T).cpu().numpy()
    sim = np.nan_to_num(sim, nan=-1.0, posinf=1.0, neginf=-1.0)  # a diverged model ranks last, not crashes
    texts = [t for t, rel in enumerate(relevant) if rel]
    t2i = rm.retrieval_metrics(sim[texts], [sorted(relevant[t]) for t in texts])
    texts_of: dict[int, list[int]] = {}
    for t, rel in enumerate(relevant):
        for i in rel:
            texts_of.setdefault(i, []).append(t)
    images = sorted(texts_of)
    i2t = rm.retrieval_metrics(sim.T[images], [texts_of[i] for i in images])
    out = {f"val_r{k}": t2i[f"R@{k}"] * len(texts) / max(1, len(relevant)) for k in rm.RECALL_KS}
    out.update({f"val_i2t_r{k}": i2t[f"R@{k}"] for k in rm.RECALL_KS})
    # mean of R@1/5/10 in both directions: a steadier signal than R@1 alone on a small val set
    out["val_mean_recall"] = sum(out.values()) / len(out)
    return out


@torch.no_grad()
def retrieval_metrics(cfg, family, engine, arts: list[dict], texts: list[dict], dtype) -> dict:
    """val_r1/5/10 (text→image R@k), val_i2t_r1/5/10 (image→text), val_mean_recall (their mean) and
    val_loss (each image with its first caption)."""
    bs = cfg.batch_size
    img_emb, txt_emb, losses = [], [], []
    for i in range(0, len(arts), bs):
        chunk = arts[i:i + bs]
        images = decode_images([a["image"] for a in chunk], cfg.max_image_pixels)
        img_emb.append(engine(**_move(family.image_batch(images), engine, dtype))["img"])
        if len(chunk) > 1:  # a contrastive loss needs two pairs
            pair = family.train_batch(images, [a["captions"][0] for a in chunk])
            losses.append(float(family.loss(engine(**_move(pair, engine, dtype)), gather=False)))
    for i in range(0, len(texts), bs):
        chunk = [t["text"] for t in texts[i:i + bs]]
        txt_emb.append(engine(**_move(family.text_batch(chunk), engine, dtype))["txt"])
    index = {a["artwork_id"]: j for j, a in enumerate(arts)}
    relevant = [{index[a] for a in t["artwork_ids"] if a in index} for t in texts]
    out = recall(torch.cat(txt_emb), torch.cat(img_emb), relevant)
    out["val_loss"] = sum(losses) / max(1, len(losses))
    return out


def validate(cfg, family, engine, arts: list[dict], texts: list[dict], dtype) -> dict:
    was_training = engine.module.training
    engine.eval()
    try:
        if cfg.is_retrieval:
            return retrieval_metrics(cfg, family, engine, arts, texts, dtype)
        return family.validate(engine, arts, texts, dtype)
    finally:
        if was_training:
            engine.train()
