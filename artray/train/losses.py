"""Contrastive losses shared by the CLIP-like families: symmetric InfoNCE over all workers' batches and
Long-CLIP's primary-component matching. (Validation recall uses :mod:`artray.evaluate.retrieval_metrics`.)"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(all workers' rows concatenated, offset of this worker's rows); gradients flow back to each rank."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(x.contiguous())
    return torch.cat(parts, dim=0), dist.get_rank() * x.shape[0]


def symmetric_infonce(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                      label_smoothing: float = 0.0, gather: bool = True) -> torch.Tensor:
    """(CE(image→text) + CE(text→image)) / 2 on normalised features; local rows against all gathered rows."""
    img, txt = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
    scale = logit_scale.float().exp().reshape(())
    if gather:
        all_img, offset = gather_with_grad(img)
        all_txt, _ = gather_with_grad(txt)
    else:
        all_img, all_txt, offset = img, txt, 0
    labels = torch.arange(img.shape[0], device=img.device) + offset
    logits_i2t = scale * img @ all_txt.T
    logits_t2i = scale * txt @ all_img.T
    return (F.cross_entropy(logits_i2t, labels, label_smoothing=label_smoothing)
            + F.cross_entropy(logits_t2i, labels, label_smoothing=label_smoothing)) / 2


def pca_reconstruct(x: torch.Tensor, dim: int) -> torch.Tensor:
    """`x` projected on its top-`dim` principal components and mapped back (Long-CLIP's ``PCA``).

    The basis is computed without gradient (eigenvectors of near-equal eigenvalues have
    unstable gradients); the projection itself is differentiable in `x`.
    """
    x = x.float()
    mean = x.mean(dim=0, keepdim=True)
    centred = x - mean
    with torch.no_grad():
        _, vecs = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        basis = vecs[:, -min(dim, vecs.shape[1]):]
    return centred @ basis @ basis.T + mean


def first_sentence(caption: str) -> str:
    """Long-CLIP's short caption: the text before the first '. '."""
    return caption.split(". ")[0]
