"""Decoding checks and resizing of encoded images, shared by every stage that touches pixels.

Pillow's decompression-bomb guard is enforced explicitly: the pixel count is read from
the header *before* decoding, so a 30000×30000 PNG is refused without allocating it.
Every image artray decodes goes through here (never a bare ``Image.open``).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

# Pillow's own default bomb limit; artray makes it explicit and configurable per stage.
DEFAULT_MAX_PIXELS = 89_478_485

# Downscaling filters by name. "area" (pixel-area averaging, OpenCV's INTER_AREA and
# img2dataset's default) costs 0.55x the CPU of "lanczos" per image at the sizes artray
# shrinks to (bench/resize.py); "lanczos" keeps slightly more fine detail.
RESAMPLE_FILTERS = {
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageError(ValueError):
    """An image that cannot be used; `reason` is the failure code written to `_failures`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError("empty_image", "the image is 0 bytes; re-download or replace the file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError("decompression_bomb", str(exc)) from exc
    except Exception as exc:  # PIL raises many types for garbage input
        raise ImageError("undecodable_image", f"not a readable image file ({type(exc).__name__})") from exc
    w, h = im.size
    if w * h > max_pixels:
        raise ImageError(
            "decompression_bomb",
            f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels}; "
            "raise max_image_pixels if this image is trusted",
        )
    return im


def _load(im: Image.Image) -> None:
    try:
        im.load()
    except Exception as exc:  # truncated files, bad CRCs, ...
        raise ImageError("undecodable_image", f"image data is corrupt or truncated ({exc})") from exc


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `data` (pixel count checked from the header first), keeping its mode."""
    im = _open_checked(data, max_pixels)
    _load(im)
    return im


def header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Size and format read from the header alone (no pixels decoded), refusing more than `max_pixels`."""
    im = _open_checked(data, max_pixels)
    return ImageInfo(im.width, im.height, (im.format or "unknown").lower())


def probe(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Fully decode `data` once to prove it is a usable image; return its size and format."""
    im = decode(data, max_pixels)
    return ImageInfo(im.width, im.height, (im.format or "unknown").lower())


def fit_long_side(
    data: bytes,
    max_side: int | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    quality: int = 95,
    resample: str = "area",
) -> tuple[bytes, ImageInfo]:
    """Shrink `data` so its long side is at most `max_side` (never enlarge), keeping aspect.

    Images already small enough are returned byte-for-byte unchanged. Resized images are
    re-encoded as JPEG (PNG if they have transparency). `resample` names a RESAMPLE_FILTERS entry.
    """
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"unknown resample filter {resample!r}; use one of {sorted(RESAMPLE_FILTERS)}")
    im = _open_checked(data, max_pixels)
    info = ImageInfo(im.width, im.height, (im.format or "unknown").lower())
    if not max_side or max(im.size) <= max_side:
        _load(im)
        return data, info
    scale = max_side / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    if im.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (still >= the target): a 6000 px
        # Wikimedia original then costs a fraction of a full decode before the final resize.
        im.draft(im.mode, size)
    _load(im)
    has_alpha = im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info)
    im = im.convert("RGBA" if has_alpha else "RGB").resize(size, RESAMPLE_FILTERS[resample])
    out = io.BytesIO()
    if has_alpha:
        im.save(out, format="PNG")
        fmt = "png"
    else:
        im.save(out, format="JPEG", quality=quality)
        fmt = "jpeg"
    return out.getvalue(), ImageInfo(size[0], size[1], fmt)


def to_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `data` to an RGB PIL image (for models)."""
    return decode(data, max_pixels).convert("RGB")
