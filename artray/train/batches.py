"""Turning stored rows into model inputs on a worker: decoded images and tensors on the engine's device.
Shared by the loop, validation and the captioners' validation."""

from __future__ import annotations


def decode_images(blobs: list[bytes], max_pixels: int):
    """Decoded training images; the decompression-bomb limit is checked from each header first."""
    from artray.images import decode

    return [decode(b, max_pixels) for b in blobs]


def to_device(batch: dict, device, dtype) -> dict:
    """`batch` with floating tensors moved to `device` in `dtype`, other tensors moved as they are. The copies
    do not block the host (from pinned memory, see :func:`pin`, they overlap the GPU's work)."""
    import torch

    return {k: (v if not torch.is_tensor(v) else v.to(device, dtype, non_blocking=True) if v.is_floating_point()
                else v.to(device, non_blocking=True))
            for k, v in batch.items()}


def pin(batch: dict) -> dict:
    """`batch` with its tensors in page-locked memory, so the copy to a GPU can run asynchronously."""
    import torch

    return {k: (v.pin_memory() if torch.is_tensor(v) else v) for k, v in batch.items()}


def batches_ahead(cfg, device) -> int:
    """Batches prepared ahead of the training step: `prefetch_batches`, or by default 2 on a GPU worker (its CPU
    threads idle while the GPU steps) and 0 on a CPU worker, where torch's intra-op threads already use the
    worker's CPUs and a collate thread would only compete with them (in-line, the CPU loop measured as fast
    or faster: bench/RESULTS.md "train (CPU, tiny)")."""
    import torch

    if cfg.prefetch_batches is not None:
        return cfg.prefetch_batches
    return 2 if torch.device(device).type == "cuda" else 0


def train_batches(shard, cfg, collate, ahead: int, epoch: int):
    """One epoch of this worker's collated batches, ``collate(pyarrow batch)`` each, in the shard's locally
    shuffled order (seeded per epoch). `ahead` > 0: prepared by that many of Ray Data's collate threads, a
    batch or more ahead; their output keeps the shard's order only because the train dataset runs with
    ``preserve_order`` (`artray.train.run`: without it two threads hand a short last batch out early, and
    ranks gather batches of different sizes). 0: each batch is prepared here, in the training thread."""
    shuffle = {"local_shuffle_buffer_size": max(4 * cfg.batch_size, 64), "local_shuffle_seed": cfg.seed + epoch}
    if ahead:
        return shard.iter_torch_batches(batch_size=cfg.batch_size, collate_fn=collate, prefetch_batches=ahead,
                                        **shuffle)
    return map(collate, shard.iter_batches(batch_size=cfg.batch_size, batch_format="pyarrow", prefetch_batches=1,
                                           **shuffle))
