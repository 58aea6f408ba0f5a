"""The config of `artray corpus import` and its error: what every format reader is given."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from artray import images as imaging
from artray.config import JobConfig
from artray.errors import UserError

STAGE = "import"
FORMATS = ("artpedia", "artcap", "cnclip", "folder")


class CorpusImportError(UserError, ValueError):
    """The input cannot be imported at all; the message names the file and the fix."""


class ImportConfig(JobConfig):
    """Turns a corpus in its native format into an artray corpus (`artray corpus import`)."""

    format: Literal["artpedia", "artcap", "cnclip", "folder"] = Field(description="native format of SRC")
    src: str = Field(description="input: file or folder (local path or s3://)")
    dest: str = Field(description="output corpus URI (local path or s3://)")
    images: str | None = Field(None, description="image folder, if not the format's default place")
    language: str | None = Field(None, description="language code; default en (zh for cnclip)")
    caption_source: Literal["visual", "contextual", "both"] = Field(
        "visual", description="Artpedia: which sentences make the caption (the source works use visual)")
    split_file: str | None = Field(None, description="ArtCap/folder: JSON or CSV mapping id/file name to split")
    split_seed: int = Field(0, description="seed of the split made when there is no split file/column")
    split_ratios: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="train/val/test shares of the split made when there is no split file/column")
    metadata: str | None = Field(None, description="folder: metadata file (csv/parquet/jsonl) inside SRC")
    image_column: str = Field("file_name", description="folder: metadata column with the image's file name")
    caption_column: str = Field("caption", description="folder: metadata column with the caption")
    id_column: str | None = Field(None, description="folder: metadata column with the artwork id "
                                                    "(default: the image's file name without extension)")
    split_column: str = Field("split", description="folder: metadata column with train/val/test, if present")
    max_image_pixels: int = Field(imaging.DEFAULT_MAX_PIXELS,
                                  description="images with more pixels than this are recorded as failures")
    max_caption_chars: int = Field(20_000, description="captions longer than this are recorded as failures")
    shard_rows: int = Field(500, description="artwork rows per Parquet shard")
    overwrite: bool = Field(False, description="replace an output that another stage wrote")
