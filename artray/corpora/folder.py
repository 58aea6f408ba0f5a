"""A museum's own collection: a folder of images plus captions, from either

* a metadata table in the folder (`metadata.csv` / `.parquet` / `.jsonl`, or `metadata=`)
  with an image-path column (relative to the folder), a caption column (text, or a list
  of texts), and optional id and split columns; or
* sidecar files: `<name>.txt` next to each `<name>.jpg` (img2dataset's layout).

Without a split column or split file, a seeded split with `split_ratios` is made.
"""

from __future__ import annotations

import csv
import io
import json

from artray import storage
from artray.corpora import splits
from artray.corpora.importer import (
    CorpusImportError,
    ImportConfig,
    ImportPlan,
    ImportSink,
)

METADATA_NAMES = ("metadata.csv", "metadata.parquet", "metadata.jsonl")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")


def _records_from_table(uri: str, options) -> list[tuple[int, dict]]:
    """(row number, record) pairs from a CSV/Parquet/JSONL metadata file."""
    if uri.endswith(".parquet"):
        return list(enumerate(storage.read_parquet(uri, options).to_pylist(), start=1))
    if uri.endswith(".jsonl"):
        out = []
        for lineno, raw in enumerate(storage.iter_lines(uri, options), start=1):
            if raw.strip():
                try:
                    out.append((lineno, json.loads(raw.decode("utf-8"))))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    out.append((lineno, {"__error__": f"not valid JSON ({exc})"}))
        return out
    text = storage.read_bytes(uri, options).decode("utf-8-sig")
    return [(i, row) for i, row in enumerate(csv.DictReader(io.StringIO(text)), start=2)]


def _records_from_sidecars(src: str, options) -> list[tuple[str, dict]]:
    files = storage.list_files(src, options=options)
    names = {storage.basename(u) for u in files}
    out = []
    for uri in files:
        name = storage.basename(uri)
        stem, dot, ext = name.rpartition(".")
        if dot and f".{ext.lower()}" in IMAGE_EXTS:
            caption = None
            if f"{stem}.txt" in names:
                caption = storage.read_bytes(storage.join(src, f"{stem}.txt"), options).decode("utf-8", "replace")
            out.append((name, {"file_name": name, "caption": caption}))
    return out


def read(cfg: ImportConfig) -> ImportPlan:
    opts = cfg.storage_options()
    if not storage.exists(cfg.src, opts):
        raise CorpusImportError(f"{cfg.src} does not exist; pass the collection's folder")
    meta_uri = storage.join(cfg.src, cfg.metadata) if cfg.metadata else next(
        (storage.join(cfg.src, n) for n in METADATA_NAMES if storage.exists(storage.join(cfg.src, n), opts)), None)
    if meta_uri:
        records = _records_from_table(meta_uri, opts)
        image_col, caption_col = cfg.image_column, cfg.caption_column
    else:
        records = _records_from_sidecars(cfg.src, opts)
        image_col, caption_col = "file_name", "caption"
        if not records:
            raise CorpusImportError(f"{cfg.src} has no metadata file ({', '.join(METADATA_NAMES)}) and no images "
                                    "with .txt captions beside them")
    first = next((r for _, r in records if "__error__" not in r), {})
    if meta_uri and first and image_col not in first:
        raise CorpusImportError(f"{meta_uri} has no column {image_col!r} (columns: {sorted(first)}); "
                                "set image_column to the column holding image paths")
    has_split_col = bool(meta_uri) and cfg.split_column in first and not cfg.split_file

    def artwork_id(rec: dict) -> str:
        if cfg.id_column and rec.get(cfg.id_column) not in (None, ""):
            return str(rec[cfg.id_column])
        return str(rec.get(image_col) or "").rsplit(".", 1)[0]

    assigned: dict[str, str] = {}
    if has_split_col:
        split_info = {"method": "column", "column": cfg.split_column}
    else:
        ids = sorted({artwork_id(r) for _, r in records if "__error__" not in r and r.get(image_col)})
        assigned, split_info = splits.assign(ids, cfg.split_file, cfg.split_ratios, cfg.split_seed, opts)
    where = meta_uri or cfg.src

    def emit(sink: ImportSink) -> None:
        for row, rec in records:
            if "__error__" in rec:
                sink.fail("bad_line", rec["__error__"], file=where, row=row)
                continue
            path = rec.get(image_col)
            if not path:
                sink.fail("missing_image", f"row has no {image_col!r}; fill it in {where}", file=where, row=row)
                continue
            key = artwork_id(rec)
            if has_split_col:
                split = sink.split(rec.get(cfg.split_column), key=key, file=where, row=row)
            else:
                split = splits.lookup(assigned, key, str(path))
                if split is None:
                    sink.fail("no_split", f"{path!r} is not in split file {cfg.split_file}; add it", key=key,
                              file=cfg.split_file, row=row)
            if split is None:
                continue
            raw = rec.get(caption_col)
            if isinstance(raw, str) and raw.strip().startswith("[") and meta_uri and meta_uri.endswith(".csv"):
                try:
                    raw = json.loads(raw)
                except json.JSONDecodeError:
                    pass
            captions = sink.clean_captions(raw if isinstance(raw, list) else [raw] if raw is not None else [],
                                           key=key, file=where, row=row)
            image_uri = storage.join(cfg.images or cfg.src, str(path))
            checked = sink.read_image(image_uri, key=key, row=row, file=where)
            if checked is None:
                continue
            text_ids = [f"{key}#{i}" for i in range(len(captions))]
            if sink.add_artwork(file=where, row=row, artwork_id=key, split=split, captions=captions, text_ids=text_ids,
                                image=checked[0], image_uri=image_uri, width=checked[1].width,
                                height=checked[1].height, title=rec.get("title") if isinstance(rec.get("title"), str) else None):
                for tid, text in zip(text_ids, captions):
                    sink.add_text(text_id=tid, text=text, artwork_ids=[key], split=split, file=where, row=row)

    return ImportPlan("folder", emit, {"metadata": meta_uri, "split": split_info})
