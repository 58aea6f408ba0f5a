"""Decoding, checking and resizing of encoded images: the one path from file bytes to the pixels a viewer shows.

Pillow's decompression-bomb guard is enforced explicitly: the pixel count is read from
the header *before* decoding, so a 30000×30000 PNG is refused without allocating it, and
the limit cited is the configured one. Every image artray decodes goes through here
(never a bare ``Image.open`` or ``convert("RGB")``): `to_rgb` turns any Pillow mode into
the RGB a viewer shows —

* EXIF orientation applied (an orientation-6 phone photo stands upright; sizes are
  reported after it, by `header` and `probe` too);
* 16-bit and 32-bit grayscale (``I;16``, ``I``: scanned archives) scaled to 8 bits, not
  clipped (65535 → 255); float (``F``) scaled from 0..1, or from its own range if outside it;
* an embedded ICC profile (Adobe RGB, ProPhoto, CMYK press profiles, gray) converted to
  sRGB; CMYK without a profile converted the naive way, as Pillow does;
* transparency (RGBA, LA, palette or grayscale/RGB with a transparent colour) composited
  on a stated background, white by default (img2dataset's choice), instead of showing
  whatever colour sits under the transparent pixels.
"""

from __future__ import annotations

import functools
import io
import re
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageCms

# Pillow's own default bomb limit; artray makes it explicit and configurable per stage.
DEFAULT_MAX_PIXELS = 89_478_485

# Where transparent pixels are composited: white, as img2dataset does.
WHITE = (255, 255, 255)

# Downscaling filters by name. "area" (pixel-area averaging, OpenCV's INTER_AREA and
# img2dataset's default) costs 0.55x the CPU of "lanczos" per image at the sizes artray
# shrinks to (bench/resize.py); "lanczos" keeps slightly more fine detail.
RESAMPLE_FILTERS = {
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# EXIF orientation → the transpose that shows the image upright (5-8 swap width and height).
_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")
_PILLOW_LIMIT_LOCK = threading.Lock()


class ImageError(ValueError):
    """An image that cannot be used; `reason` is the failure code written to `_failures`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageInfo:
    width: int  # as shown, after EXIF orientation
    height: int
    format: str


def _bomb(pixels: int, max_pixels: int, size: str = "") -> ImageError:
    return ImageError("decompression_bomb", f"image is {size}{pixels} pixels, above the limit of {max_pixels}; "
                      "raise max_image_pixels if this image is trusted")


def _pillow_open(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data))


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError("empty_image", "the image is 0 bytes; re-download or replace the file")
    try:
        im = _pillow_open(data)
    except Image.DecompressionBombError as exc:
        # Pillow's own hard limit (2x Image.MAX_IMAGE_PIXELS) fired first: cite the configured limit,
        # and open anyway when the configured limit allows the image (a trusted gigapixel scan).
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else None
        if pixels is None or pixels > max_pixels:
            raise _bomb(pixels, max_pixels) if pixels else ImageError("decompression_bomb", str(exc)) from exc
        with _PILLOW_LIMIT_LOCK:
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
            try:
                return _open_checked(data, max_pixels)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except Exception as exc:  # PIL raises many types for garbage input
        raise ImageError("undecodable_image", f"not a readable image file ({type(exc).__name__})") from exc
    w, h = im.size
    if w * h > max_pixels:
        raise _bomb(w * h, max_pixels, f"{w}x{h} = ")
    return im


def _load(im: Image.Image) -> None:
    try:
        im.load()
    except Exception as exc:  # truncated files, bad CRCs, ...
        raise ImageError("undecodable_image", f"image data is corrupt or truncated ({exc})") from exc


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8; 1 if none or unreadable), read without decoding pixels.

    A PNG's eXIf chunk is seen when it precedes the pixel data (where writers put it)."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # a malformed EXIF block: viewers show such images as stored
        return 1
    return value if value in _TRANSPOSES else 1


def _shown_size(im: Image.Image) -> tuple[int, int]:
    w, h = im.size
    return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)


def _eight_bit(im: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float grayscale image as 8-bit L (LA when it has a transparent value), scaled."""
    a = np.asarray(im)
    if im.mode == "F":
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        scaled = a * 255.0 if lo >= 0 and hi <= 1 else (a - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)
    else:
        scaled = a.astype(np.float32) * (255.0 / 65535.0)  # I;16 range; "I" from 16-bit sources too
    out = Image.fromarray(np.clip(np.nan_to_num(scaled) + 0.5, 0, 255).astype(np.uint8), "L")
    trns = im.info.get("transparency")
    if isinstance(trns, int) and im.mode != "F":
        out.putalpha(Image.fromarray(np.where(a == trns, 0, 255).astype(np.uint8), "L"))
    return out


@functools.lru_cache(maxsize=32)
def _srgb_transform(icc: bytes, mode: str):
    """A cached transform from the embedded profile `icc` (for pixels in `mode`) to sRGB, or None: the profile
    is sRGB already, does not describe `mode`'s colour space, or cannot be read (then the pixels are used as is)."""
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = src.profile.xcolor_space.strip()
        if {"RGB": "RGB", "L": "GRAY", "CMYK": "CMYK"}.get(mode) != space:
            return None
        if mode == "RGB" and "srgb" in (ImageCms.getProfileDescription(src) or "").lower().replace(" ", ""):
            return None
        # NOCACHE: lcms's one-pixel cache is not thread-safe, and ingest's threads share cached transforms.
        return ImageCms.buildTransform(src, ImageCms.createProfile("sRGB"), mode, "RGB", flags=ImageCms.Flags.NOCACHE)
    except Exception:  # a broken profile must not cost the image
        return None


def _srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """`im` (no alpha) as sRGB RGB: through its ICC profile when it has one that matters."""
    if icc and im.mode in ("RGB", "L", "CMYK"):
        transform = _srgb_transform(icc, im.mode)
        if transform is not None:
            return ImageCms.applyTransform(im, transform)
    return im if im.mode == "RGB" else im.convert("RGB")


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or ("transparency" in im.info and im.mode in ("P", "L", "RGB", "1"))


def viewer_image(im: Image.Image, background: tuple[int, int, int] | None = WHITE) -> Image.Image:
    """`im` (loaded, any mode) as a viewer shows it: upright, 8-bit, sRGB; "RGB" with transparency composited on
    `background`, or "RGBA" keeping the alpha when `background` is None (what ingest stores as PNG).

    A converted image carries no metadata (no orientation tag or profile left to apply twice); an image already
    as shown (RGB, upright, sRGB) is returned as is, so calling this on its own output changes nothing."""
    source, out = im, _viewer_pixels(im, background)
    if out is not source:
        out.info = {}
    return out


def _viewer_pixels(im: Image.Image, background: tuple[int, int, int] | None) -> Image.Image:
    icc = im.info.get("icc_profile")
    method = _TRANSPOSES.get(_orientation(im))
    if method is not None:
        im = im.transpose(method)
    if im.mode in _HIGH_DEPTH:
        im = _eight_bit(im)
    alpha = None
    if _has_alpha(im):
        with_alpha = im.convert("LA" if im.mode in ("L", "LA", "La", "1") else "RGBA")
        alpha = with_alpha.getchannel("A")
        im = with_alpha.convert(with_alpha.mode[:-1])
        if alpha.getextrema() == (255, 255):  # fully opaque: nothing to composite
            alpha = None if background is not None else alpha
    rgb = _srgb(im, icc)
    if alpha is None:
        return rgb
    if background is None:
        rgb.putalpha(alpha)
        return rgb
    return Image.composite(rgb, Image.new("RGB", rgb.size, tuple(background)), alpha)


def _decoded(data: bytes, max_pixels: int, background: tuple[int, int, int]) -> tuple[Image.Image, str]:
    im = _open_checked(data, max_pixels)
    fmt = (im.format or "unknown").lower()
    _load(im)
    try:
        return viewer_image(im, background), fmt
    except Exception as exc:  # an exotic mode Pillow cannot convert
        raise ImageError("undecodable_image", f"cannot convert the {im.mode} image to RGB ({exc})") from exc


def to_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Decode `data` (pixel count checked from the header first) to the RGB image a viewer shows (see the module
    docstring): upright, 8-bit sRGB, transparency composited on `background` (white by default)."""
    return _decoded(data, max_pixels, background)[0]


def decode(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """The same as `to_rgb`: every decode in artray yields the viewer's RGB (the source mode is never handed out,
    so no caller can saturate a 16-bit scan or drop an orientation with a bare ``convert("RGB")``)."""
    return to_rgb(data, max_pixels, background)


def header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Size (after EXIF orientation) and format read from the header alone (no pixels decoded),
    refusing more than `max_pixels`."""
    im = _open_checked(data, max_pixels)
    return ImageInfo(*_shown_size(im), (im.format or "unknown").lower())


def probe(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Fully decode `data` once, to the viewer's RGB, to prove it is a usable image; return its shown size and format."""
    rgb, fmt = _decoded(data, max_pixels, WHITE)
    return ImageInfo(rgb.width, rgb.height, fmt)


def fit_long_side(
    data: bytes,
    max_side: int | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    quality: int = 95,
    resample: str = "area",
) -> tuple[bytes, ImageInfo]:
    """Shrink `data` so its long side (as shown, after EXIF orientation) is at most `max_side` (never enlarge),
    keeping aspect.

    Images already small enough are returned byte-for-byte unchanged (their orientation tag, bit depth and
    profile with them: `to_rgb` reads them right). Resized images are re-encoded from the viewer's pixels
    (`viewer_image`: upright, 8-bit sRGB, so nothing depends on metadata that is not copied) as JPEG, or as
    PNG keeping the alpha when they have transparency. `resample` names a RESAMPLE_FILTERS entry.
    """
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"unknown resample filter {resample!r}; use one of {sorted(RESAMPLE_FILTERS)}")
    im = _open_checked(data, max_pixels)
    fmt = (im.format or "unknown").lower()
    shown = _shown_size(im)
    if not max_side or max(shown) <= max_side:
        _load(im)
        return data, ImageInfo(*shown, fmt)
    scale = max_side / max(shown)
    size = (max(1, round(shown[0] * scale)), max(1, round(shown[1] * scale)))
    if im.format == "JPEG":
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale (still >= the target): a 6000 px
        # Wikimedia original then costs a fraction of a full decode before the final resize.
        im.draft(im.mode, size if shown == im.size else size[::-1])
    _load(im)
    try:
        im = viewer_image(im, background=None).resize(size, RESAMPLE_FILTERS[resample])
    except Exception as exc:
        raise ImageError("undecodable_image", f"cannot convert the {im.mode} image to RGB ({exc})") from exc
    out = io.BytesIO()
    if im.mode == "RGBA":
        im.save(out, format="PNG")
        fmt = "png"
    else:
        im.save(out, format="JPEG", quality=quality)
        fmt = "jpeg"
    return out.getvalue(), ImageInfo(size[0], size[1], fmt)
