"""Shrinking images to a long side: every filter keeps the aspect ratio, the filter is the user's
choice (config, YAML, CLI flag), and an unknown one is refused with the choices."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

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
