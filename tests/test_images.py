"""Shrinking images to a long side: every filter keeps the aspect ratio, the filter is the user's
choice (config, YAML, CLI flag), and an unknown one is refused with the choices. And the one decode
path (`artray.images.to_rgb`) shows every kind of file as a viewer does: real 16-bit PNG/TIFF scans,
EXIF-rotated JPEGs, RGBA and palette transparency, ICC profiles, CMYK."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageCms

from artray import images

from artray.cli import build_parser
from artray.config import ConfigError, config_from_args, load_config
from artray.images import RESAMPLE_FILTERS, fit_long_side
from artray.stages.ingest import IngestConfig


def _jpeg(width: int, height: int) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def test_each_filter_shrinks_to_the_long_side_and_keeps_the_aspect_ratio():
    source = _jpeg(1200, 800)
    outputs = {}
    for name in RESAMPLE_FILTERS:
        data, info = fit_long_side(source, 576, resample=name)
        with Image.open(io.BytesIO(data)) as im:
            assert im.size == (info.width, info.height) == (576, 384) and im.format == "JPEG"
        outputs[name] = data
    assert len(set(outputs.values())) == len(RESAMPLE_FILTERS), "the filters gave identical images"
    assert fit_long_side(source, 576)[0] == outputs["area"], "area (img2dataset's filter) is the default"
    small = _jpeg(400, 300)
    assert fit_long_side(small, 576, resample="lanczos")[0] == small, "never enlarged, bytes kept"


def test_an_unknown_filter_is_refused_naming_the_choices(tmp_path):
    with pytest.raises(ValueError, match="area.*bicubic.*lanczos"):
        fit_long_side(_jpeg(100, 80), 50, resample="nearest")
    path = tmp_path / "ingest.yaml"
    path.write_text("input: a\noutput: b\nresample: nearest\n")
    with pytest.raises(ConfigError, match="resample"):
        load_config(IngestConfig, str(path))
    args = build_parser().parse_args(["corpus", "ingest", "a", "b", "--resample", "lanczos"])
    assert config_from_args(IngestConfig, args, {"input": args.input, "output": args.output}).resample == "lanczos"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["corpus", "ingest", "a", "b", "--resample", "nearest"])


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kw)
    return out.getvalue()


def _plain(data: bytes) -> Image.Image:
    """The file as stored, opened without artray (what a reader of the corpus without artray sees)."""
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


RAMP16 = np.tile(np.linspace(0, 65535, 512), (64, 1)).astype(np.uint16)  # dark to light, 16 bits per pixel


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_scans_are_scaled_not_saturated(fmt):
    """Were: Pillow opens them as mode I;16 and convert("RGB") clips every value over 255 to white, so
    embed, augment, caption, serve and training saw a white image, and ingest stored a white JPEG."""
    data = _encode(Image.fromarray(RAMP16), fmt)
    assert _plain(data).mode.startswith("I;16")
    rgb = np.asarray(images.to_rgb(data))
    assert rgb.shape == (64, 512, 3) and rgb[:, 0].max() == 0 and rgb[:, -1].min() == 255
    assert abs(rgb.mean() - 127.5) < 1.5 and abs(int(rgb[0, 256, 0]) - 128) <= 1  # linear: mid-ramp is mid-gray
    assert images.decode(data).mode == "RGB"  # the train loaders' entry point: the same pixels
    shrunk, info = images.fit_long_side(data, 128)
    stored = np.asarray(_plain(shrunk).convert("L"))
    assert (info.width, info.height) == (128, 16) and abs(stored.mean() - 127.5) < 3
    assert images.fit_long_side(data, 1000)[0] == data  # not shrunk: the 16-bit source kept as is


def _rotated_jpeg(orientation: int = 6) -> bytes:
    """60x40 as stored: top half red, bottom half blue; EXIF orientation 6 shows it 40x60, red on the right."""
    im = Image.new("RGB", (60, 40), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 60, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(im, "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_applied_and_sizes_are_recorded_as_shown():
    data = _rotated_jpeg()
    shown = images.ImageInfo(40, 60, "jpeg")
    assert images.header(data) == images.probe(data) == shown  # header alone: no pixels decoded
    rgb = images.to_rgb(data)
    assert rgb.size == (40, 60) and rgb.getpixel((35, 30))[0] > 240 and rgb.getpixel((5, 30))[2] > 240
    assert images.to_rgb(_rotated_jpeg(1)).size == (60, 40)
    assert images.fit_long_side(data, 100) == (data, shown)  # kept as is, tag included: to_rgb reads it right
    shrunk, info = images.fit_long_side(data, 30)
    stored = _plain(shrunk)  # re-encoded from upright pixels: nothing depends on a tag that is not copied
    assert (info.width, info.height) == stored.size == (20, 30) and 0x0112 not in stored.getexif()
    assert stored.getpixel((17, 15))[0] > 200 and stored.getpixel((2, 15))[2] > 200
    assert images.viewer_image(rgb) is rgb  # applying the path to its own output changes nothing


def test_transparency_is_composited_on_white_not_on_the_hidden_colour():
    """Were: convert("RGB") dropped alpha, showing the colour stored under transparent pixels."""
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent, red underneath
    rgba.paste((0, 0, 0, 128), (0, 0, 5, 10))  # half-transparent black
    data = _encode(rgba, "PNG")
    rgb = images.to_rgb(data)
    assert rgb.getpixel((8, 5)) == (255, 255, 255) and all(126 <= c <= 128 for c in rgb.getpixel((2, 5)))
    assert images.to_rgb(data, background=(0, 0, 0)).getpixel((8, 5)) == (0, 0, 0)  # the background is stated
    palette = Image.new("P", (10, 10))
    palette.putpalette([255, 0, 0, 0, 200, 0])  # index 0 (red) is the transparent one
    palette.paste(1, (0, 0, 5, 10))
    for fmt in ("PNG", "GIF"):
        rgb = images.to_rgb(_encode(palette, fmt, transparency=0))
        assert (rgb.getpixel((8, 5)), rgb.getpixel((2, 5))) == ((255, 255, 255), (0, 200, 0)), fmt
    gray = Image.new("L", (10, 10), 7)
    assert images.to_rgb(_encode(gray, "PNG", transparency=7)).getpixel((1, 1)) == (255, 255, 255)
    shrunk, info = images.fit_long_side(_encode(rgba.resize((100, 100)), "PNG"), 50)
    assert info.format == "png" and _plain(shrunk).mode == "RGBA"  # ingest keeps the alpha it stores


def _swapped_profile() -> bytes:
    """An RGB ICC profile whose red and blue primaries are swapped (lcms's sRGB, edited): stored red shows blue."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", icc[128:132])[0]
    entry = {bytes(icc[132 + 12 * i:136 + 12 * i]): 132 + 12 * i for i in range(count)}
    red, blue = entry[b"rXYZ"], entry[b"bXYZ"]
    icc[red + 4:red + 12], icc[blue + 4:blue + 12] = icc[blue + 4:blue + 12], icc[red + 4:red + 12]
    return bytes(icc).replace("sRGB".encode("utf-16-be"), "sBGR".encode("utf-16-be"))


def test_icc_profiles_and_cmyk_are_converted_to_srgb():
    stored = Image.new("RGB", (8, 8), (200, 30, 30))
    shown = images.to_rgb(_encode(stored, "PNG", icc_profile=_swapped_profile())).getpixel((1, 1))
    assert shown[2] > 150 and shown[0] < 80  # the profile, not the raw numbers, decides the colour
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert images.to_rgb(_encode(stored, "PNG", icc_profile=srgb)).getpixel((1, 1)) == (200, 30, 30)
    cmyk = images.to_rgb(_encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.mode == "RGB" and cmyk.getpixel((1, 1))[0] > 240 and max(cmyk.getpixel((1, 1))[1:]) < 20


def _png_claiming(width: int, height: int) -> bytes:
    import zlib

    data = bytearray(_encode(Image.new("RGB", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_the_pixel_limit_cited_is_the_configured_one():
    """Were: over Pillow's own hard limit, Pillow's message (and its 178956970-pixel limit) came through."""
    with pytest.raises(images.ImageError, match=r"10000000000 pixels, above the limit of 4000000; raise max_image"):
        images.probe(_png_claiming(100_000, 100_000), 4_000_000)
    # A configured limit above Pillow's is honoured (a trusted gigapixel scan), header only: nothing allocated.
    assert images.header(_png_claiming(15_000, 13_000), 300_000_000).width == 15_000
    assert Image.MAX_IMAGE_PIXELS == images.DEFAULT_MAX_PIXELS  # Pillow's global is left as it was
