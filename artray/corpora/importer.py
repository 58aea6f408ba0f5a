"""`artray corpus import`: a native corpus (Artpedia, ArtCap, CulTi/Chinese-CLIP, a folder)
→ an artray corpus (artworks + texts + `_failures` + `_manifest.json`) at a URI.

Each format module only *reads*, into an `ImportSink` (`sink.py`), which owns the validation
every format shares and the writing; this module picks the format's reader and writes the
manifest. A bad row becomes a failure row naming its file and row; a file that cannot be
parsed at all stops the import before anything is written. The pieces the formats share
(`import_config`, `json_input`, `sink`) import no format, so nothing imports back here.
"""

from __future__ import annotations

import time

from artray import corpus, storage
from artray.corpora import artcap, artpedia, cnclip, folder
from artray.corpora.import_config import FORMATS, STAGE, CorpusImportError, ImportConfig
from artray.corpora.sink import ImportSink
from artray.corpora.splits import SplitFileError
from artray.manifest import build_manifest

__all__ = ["FORMATS", "CorpusImportError", "ImportConfig", "import_corpus"]


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
