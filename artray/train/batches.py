"""Turning stored rows into model inputs on a worker: decoded images and tensors on the engine's device.
Shared by the loop, validation and the captioners' validation."""

from __future__ import annotations


def decode_images(blobs: list[bytes], max_pixels: int):
    """Decoded training images; the decompression-bomb limit is checked from each header first."""
    from artray.images import decode

    return [decode(b, max_pixels) for b in blobs]


def to_device(batch: dict, device, dtype) -> dict:
    """`batch` with floating tensors moved to `device` in `dtype`, other tensors moved as they are."""
    import torch

    return {k: (v if not torch.is_tensor(v) else v.to(device, dtype) if v.is_floating_point() else v.to(device))
            for k, v in batch.items()}
