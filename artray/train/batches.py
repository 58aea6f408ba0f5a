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
