"""Model family name → its class (a plain dict, no registry). A family owns its module, collation,
objective, validation (captioners) and export; the loop and the trainer know none of them."""

from __future__ import annotations

from artray.train.config import TrainConfig


def family_class(name: str):
    if name == "longclip":
        from artray.train.longclip import LongClipFamily
        return LongClipFamily
    if name == "cnclip":
        from artray.train.cnclip import CNClipFamily
        return CNClipFamily
    if name == "blip-retrieval":
        from artray.train.blip import BlipRetrievalFamily
        return BlipRetrievalFamily
    if name in ("git-captioner", "blip-captioner"):
        from artray.train.captioner import CaptionerFamily
        return CaptionerFamily
    raise ValueError(f"unknown family {name!r}")


def make_family(cfg: TrainConfig):
    return family_class(cfg.family)(cfg)
