"""`artray corpus import`: a native corpus (Artpedia, ArtCap, CulTi/Chinese-CLIP, a folder)
→ an artray corpus (artworks + texts + `_failures` + `_manifest.json`) at a URI.

Each format module only *reads*; this module owns validation that every format shares
(ids unique, splits known, captions non-empty and bounded, images decodable) and the
writing. A bad row becomes a failure row naming its file and row; a file that cannot be
parsed at all stops the import before anything is written.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from artray import corpus, storage
from artray import images as imaging
from artray.config import JobConfig
from artray.corpora.splits import SplitFileError
from artray.errors import UserError
from artray.manifest import build_manifest
from artray.schema import (
    ARTWORK_SCHEMA,
    FAILURE_SCHEMA,
    TEXT_SCHEMA,
    failure_row,
    normalise_split,
)

STAGE = "import"
FORMATS = ("artpedia", "artcap", "cnclip", "folder")


class CorpusImportError(UserError, ValueError):
    """The input cannot be imported at all; the message names the file and the fix."""


@dataclass
class ImportPlan:
    """What a format reader found: its source name and a function that emits rows to a sink."""

    source: str
    emit: Callable[["ImportSink"], None]
    manifest_extra: dict = field(default_factory=dict)


class JsonObject(dict):
    """A parsed JSON object that remembers which of its keys appeared more than once."""

    duplicate_keys: tuple[str, ...] = ()


def _keep_first(pairs) -> JsonObject:
    """`object_pairs_hook`: keep the first of duplicate keys and record the others."""
    obj, dups = JsonObject(), []
    for k, v in pairs:
        if k in obj:
            dups.append(k)
            continue
        obj[k] = v
    obj.duplicate_keys = tuple(dups)
    return obj


def line_of(raw: bytes, offset: int) -> int:
    """The 1-based line number of byte `offset` in `raw`."""
    return raw.count(b"\n", 0, offset) + 1


def parse_json_line(raw: bytes):
    """One JSON value from one line of a JSONL file; ValueError (with the cause) if it is not one.

    Beyond `json.JSONDecodeError`: bytes that are not UTF-8, nesting too deep for Python's
    parser and integers over Python's digit limit — all bad input, never a crash.
    """
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_keep_first)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc


def load_json(uri: str, options) -> tuple[object, list[str]]:
    """Parse a JSON index file; returns the data and the top-level keys that appear twice.

    Python's json silently keeps the last of duplicate keys; corpora keyed by id must not.
    Every object of the result is a `JsonObject`, so a reader can report repeated fields too.
    """
    try:
        raw = storage.read_bytes(uri, options)
    except storage.StorageError as exc:
        raise CorpusImportError(f"{exc}; pass the path of the dataset's index file or folder") from exc
    try:
        data = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_keep_first)
    except UnicodeDecodeError as exc:
        raise CorpusImportError(f"{uri} is not UTF-8 text (line {line_of(raw, exc.start)}: {exc.reason}); "
                                "re-save it as UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise CorpusImportError(
            f"{uri} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}. "
            f"Fix the file (python -m json.tool {uri} shows the spot) and re-run"
        ) from exc
    except (RecursionError, ValueError) as exc:  # nesting too deep; an integer over Python's digit limit
        raise CorpusImportError(f"{uri} cannot be read as JSON ({type(exc).__name__}: {str(exc)[:200]}); "
                                "fix the file and re-run") from exc
    return data, list(getattr(data, "duplicate_keys", ()))


def bad_unicode(value) -> bool:
    """True if `value` (a string, or a list of them) holds lone surrogates, which UTF-8 cannot store.

    JSON allows them as escapes (``"\\ud800"``); Parquet, Arrow and tokenizers refuse them.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, (list, tuple)):
        return any(bad_unicode(v) for v in value)
    return False


def _printable(value):
    """`value` made storable: lone surrogates become backslash escapes (for failure rows)."""
    if isinstance(value, str) and bad_unicode(value):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


class ImportConfig(JobConfig):
    """Config of `artray corpus import`."""

    format: Literal["artpedia", "artcap", "cnclip", "folder"] = Field(description="native format of SRC")
    src: str = Field(description="input: file or folder (local path or s3://)")
    dest: str = Field(description="output corpus URI (local path or s3://)")
    images: str | None = Field(None, description="image folder, if not the format's default place")
    language: str | None = Field(None, description="language code; default en (zh for cnclip)")
    caption_source: Literal["visual", "contextual", "both"] = Field(
        "visual", description="Artpedia: which sentences make the caption (source works: visual)")
    split_file: str | None = Field(None, description="ArtCap/folder: JSON or CSV mapping id/file name to split")
    split_seed: int = Field(0, description="seed of the split made when there is no split file/column")
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    metadata: str | None = Field(None, description="folder: metadata file (csv/parquet/jsonl) inside SRC")
    image_column: str = "file_name"
    caption_column: str = "caption"
    id_column: str | None = None
    split_column: str = "split"
    max_image_pixels: int = imaging.DEFAULT_MAX_PIXELS
    max_caption_chars: int = Field(20_000, description="captions longer than this are recorded as failures")
    shard_rows: int = 500
    overwrite: bool = Field(False, description="replace an output that another stage wrote")


class ImportSink:
    """Validates rows shared by all formats and writes the accepted ones as shards."""

    def __init__(self, cfg: ImportConfig, language: str, source: str):
        self.cfg = cfg
        self.language = language
        self.source = source
        opts = cfg.storage_options()
        self.artworks = corpus.ShardWriter(storage.join(cfg.dest, corpus.ARTWORKS), ARTWORK_SCHEMA, cfg.shard_rows, options=opts)
        self.texts = corpus.ShardWriter(storage.join(cfg.dest, corpus.TEXTS), TEXT_SCHEMA, max(cfg.shard_rows, 5000), options=opts)
        self.failures = corpus.ShardWriter(storage.join(cfg.dest, corpus.FAILURES), FAILURE_SCHEMA, 10_000, options=opts)
        self.artwork_split: dict[str, str] = {}
        self.seen_text_ids: set[str] = set()
        self.split_counts: Counter = Counter()
        self.text_split_counts: Counter = Counter()
        self.reasons: Counter = Counter()
        self.captions_in = 0

    def fail(self, reason: str, detail: str, *, key=None, file=None, row=None) -> None:
        self.reasons[reason] += 1
        self.failures.add(failure_row(STAGE, reason, _printable(detail), key=_printable(key), file=_printable(file),
                                      row=_printable(row)))

    def split(self, value, *, key, file, row) -> str | None:
        split = normalise_split(value)
        if split is None:
            self.fail("unknown_split", f"split {value!r} is not train, val or test; fix it in {file}",
                      key=key, file=file, row=row)
        return split

    def clean_captions(self, captions: list, *, key, file, row) -> list[str]:
        """Captions that are non-empty strings within the length limit; others become failures."""
        kept = []
        for i, cap in enumerate(captions):
            self.captions_in += 1
            if not isinstance(cap, str):
                self.fail("bad_caption", f"caption #{i} is {type(cap).__name__}, not text; fix it in {file}",
                          key=key, file=file, row=row)
                continue
            cap = " ".join(cap.split())
            if not cap:
                continue
            if bad_unicode(cap):
                self.fail("bad_caption", f"caption #{i} holds invalid Unicode (a lone surrogate escape such as "
                          f"\\ud800); fix it in {file}", key=key, file=file, row=row)
                continue
            if len(cap) > self.cfg.max_caption_chars:
                self.fail("caption_too_long",
                          f"caption #{i} has {len(cap)} characters, over max_caption_chars={self.cfg.max_caption_chars}; "
                          "shorten it or raise the limit", key=key, file=file, row=row)
                continue
            kept.append(cap)
        return kept

    def read_image(self, uri: str, *, key, row, file=None) -> tuple[bytes, imaging.ImageInfo] | None:
        """The bytes and size of the image at `uri`, or None (and a failure row) if unusable.

        The failure row names `file` and `row` (the index entry), or the image file itself if
        `file` is None."""
        try:
            data = storage.read_bytes(uri, self.cfg.storage_options())
        except storage.StorageError:
            self.fail("missing_image", f"image file {uri} does not exist or cannot be read; add it or remove the entry",
                      key=key, file=file or uri, row=row)
            return None
        return self.check_image(data, key=key, file=file or uri, row=row, image=uri)

    def check_image(self, data: bytes, *, key, file, row, image=None) -> tuple[bytes, imaging.ImageInfo] | None:
        try:
            return data, imaging.probe(data, self.cfg.max_image_pixels)
        except imaging.ImageError as exc:
            self.fail(exc.reason, f"{exc.detail}; replace the image at {image or file}", key=key, file=file, row=row)
            return None

    def add_artwork(self, *, file, row, **fields) -> bool:
        """Write one artwork row unless its id repeats; returns whether it was accepted."""
        key = fields["artwork_id"]
        if not key:
            self.fail("missing_id", f"entry has no id; give every artwork an id in {file}", file=file, row=row)
            return False
        bad = sorted(name for name, value in fields.items() if bad_unicode(value))
        if bad:
            self.fail("bad_text", f"{', '.join(bad)} of artwork {key!r} hold invalid Unicode (a lone surrogate "
                      f"escape such as \\ud800); fix {file}", key=key, file=file, row=row)
            return False
        if key in self.artwork_split:
            self.fail("duplicate_id", f"artwork id {key!r} appears more than once in {file}; the first one was kept",
                      key=key, file=file, row=row)
            return False
        if not fields.get("captions"):
            self.fail("empty_caption", f"artwork {key!r} has no caption; add one in {file}", key=key, file=file, row=row)
            return False
        from artray.schema import artwork_row  # local: keeps the public surface small

        self.artworks.add(artwork_row(language=self.language, source=self.source, **fields))
        self.artwork_split[key] = fields["split"]
        self.split_counts[fields["split"]] += 1
        return True

    def add_text(self, *, text_id: str, text: str, artwork_ids: list[str], split: str, file, row) -> bool:
        if bad_unicode(text_id) or bad_unicode(text):
            self.fail("bad_text", f"text {text_id!r} holds invalid Unicode (a lone surrogate escape such as "
                      f"\\ud800); fix {file}", key=text_id, file=file, row=row)
            return False
        if text_id in self.seen_text_ids:
            self.fail("duplicate_id", f"text id {text_id!r} appears more than once in {file}; the first one was kept",
                      key=text_id, file=file, row=row)
            return False
        kept = [a for a in artwork_ids if a in self.artwork_split]
        missing = [a for a in artwork_ids if a not in self.artwork_split]
        if missing:
            self.fail("dangling_reference", f"text {text_id!r} points at artworks {missing} that were not imported "
                      "(absent, or failed: see their own failure rows)", key=text_id, file=file, row=row)
        if not kept:
            return False
        self.texts.add({"text_id": text_id, "split": split, "text": text, "artwork_ids": kept,
                        "language": self.language, "source": self.source})
        self.seen_text_ids.add(text_id)
        self.text_split_counts[split] += 1
        return True

    def close(self) -> None:
        for writer in (self.artworks, self.texts, self.failures):
            writer.flush()


def _prepare_dest(cfg: ImportConfig) -> None:
    """Make `dest` ready: re-importing replaces a previous import; other outputs need --overwrite."""
    opts = cfg.storage_options()
    previous = corpus.read_manifest(cfg.dest, opts)
    has_files = any(storage.list_files(storage.join(cfg.dest, d), options=opts)
                    for d in (corpus.ARTWORKS, corpus.TEXTS, corpus.FAILURES))
    if has_files and not cfg.overwrite and (previous or {}).get("stage") != STAGE:
        what = f"the output of stage {previous['stage']!r}" if previous else "shards of an unfinished or foreign job"
        raise CorpusImportError(f"{cfg.dest} already holds {what}; choose another dest or pass --overwrite to replace it")
    for d in (corpus.MANIFEST, corpus.ARTWORKS, corpus.TEXTS, corpus.FAILURES):
        storage.delete(storage.join(cfg.dest, d), opts)


def import_corpus(cfg: ImportConfig) -> dict:
    """Run the import described by `cfg`; returns the corpus summary also written to the manifest."""
    from artray.corpora import artcap, artpedia, cnclip, folder

    readers = {"artpedia": artpedia.read, "artcap": artcap.read, "cnclip": cnclip.read, "folder": folder.read}
    started = time.time()
    language = cfg.language or ("zh" if cfg.format == "cnclip" else "en")
    try:
        plan = readers[cfg.format](cfg)  # parses index files up front: a malformed one fails before any write
    except SplitFileError as exc:
        raise CorpusImportError(str(exc)) from exc
    _prepare_dest(cfg)
    sink = ImportSink(cfg, language, source=plan.source)
    plan.emit(sink)
    sink.close()
    counts = {
        "artworks": sink.artworks.rows_written,
        "artworks_per_split": dict(sorted(sink.split_counts.items())),
        "texts": sink.texts.rows_written,
        "texts_per_split": dict(sorted(sink.text_split_counts.items())),
        "captions_in": sink.captions_in,
        "failed": sink.failures.rows_written,
        "failure_reasons": dict(sorted(sink.reasons.items())),
    }
    manifest = build_manifest(STAGE, cfg.model_dump(mode="json"), counts, started,
                              format=cfg.format, source=plan.source, language=language, **plan.manifest_extra)
    corpus.write_manifest(cfg.dest, manifest, cfg.storage_options())
    return manifest
