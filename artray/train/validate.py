"""Validation inside the loop: retrieval recall and contrastive val loss, or the family's own (captioners).

Every rank runs the same validation over the full validation set in the same order, so
ZeRO-3's parameter gathering stays in lockstep; rank 0's numbers are the ones reported.
"""

from __future__ import annotations

import torch

from artray.train.loop import _images, _to_device
from artray.train.losses import image_to_text_recall, recall_at_k


def _move(batch: dict, engine, dtype) -> dict:
    return _to_device(batch, engine.device, dtype)


@torch.no_grad()
def retrieval_metrics(cfg, family, engine, arts: list[dict], texts: list[dict], dtype) -> dict:
    """val_r1/5/10 (text→image R@k), val_i2t_r1/5/10 (image→text), val_mean_recall (their mean) and
    val_loss (each image with its first caption)."""
    bs = cfg.batch_size
    img_emb, txt_emb, losses = [], [], []
    for i in range(0, len(arts), bs):
        chunk = arts[i:i + bs]
        images = _images([a["image"] for a in chunk], cfg.max_image_pixels)
        img_emb.append(engine(**_move(family.image_batch(images), engine, dtype))["img"])
        if len(chunk) > 1:  # a contrastive loss needs two pairs
            pair = family.train_batch(images, [a["captions"][0] for a in chunk])
            losses.append(float(family.loss(engine(**_move(pair, engine, dtype)), gather=False)))
    for i in range(0, len(texts), bs):
        chunk = [t["text"] for t in texts[i:i + bs]]
        txt_emb.append(engine(**_move(family.text_batch(chunk), engine, dtype))["txt"])
    index = {a["artwork_id"]: j for j, a in enumerate(arts)}
    relevant = [{index[a] for a in t["artwork_ids"] if a in index} for t in texts]
    img, txt = torch.cat(img_emb), torch.cat(txt_emb)
    out = {f"val_r{k}": recall_at_k(txt, img, relevant, k) for k in (1, 5, 10)}
    out.update({f"val_i2t_r{k}": image_to_text_recall(txt, img, relevant, k) for k in (1, 5, 10)})
    # mean of R@1/5/10 in both directions: a steadier signal than R@1 alone on a small val set
    out["val_mean_recall"] = sum(out.values()) / len(out)
    out["val_loss"] = sum(losses) / max(1, len(losses))
    return out


def validate(cfg, family, engine, arts: list[dict], texts: list[dict], dtype) -> dict:
    was_training = engine.module.training
    engine.eval()
    try:
        if getattr(family, "retrieval", False):
            return retrieval_metrics(cfg, family, engine, arts, texts, dtype)
        return family.validate(engine, arts, texts, dtype)
    finally:
        if was_training:
            engine.train()
