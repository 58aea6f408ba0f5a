"""Where format readers put their rows: validation every format shares (ids unique, splits known,
captions non-empty and bounded, images decodable) and the sharded writing of accepted rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from artray import corpus, storage
from artray import images as imaging
from artray.corpora.import_config import STAGE, ImportConfig
from artray.schema import (
    ARTWORK_SCHEMA,
    FAILURE_SCHEMA,
    TEXT_SCHEMA,
    failure_row,
    normalise_split,
)


@dataclass
class ImportPlan:
    """What a format reader found: its source name and a function that emits rows to a sink."""

    source: str
    emit: Callable[["ImportSink"], None]
    manifest_extra: dict = field(default_factory=dict)


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
