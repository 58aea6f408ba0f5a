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
import posixpath
import re

import pyarrow as pa

from artray import storage
from artray.corpora import splits
from artray.corpora.import_config import CorpusImportError, ImportConfig
from artray.corpora.json_input import parse_json_line
from artray.corpora.sink import ImportPlan, ImportSink, bad_unicode

METADATA_NAMES = ("metadata.csv", "metadata.parquet", "metadata.jsonl")
_ESCAPED = re.compile("[\udc80-\udcff]")  # how surrogateescape decodes a byte that is not UTF-8
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif")


def _records_from_table(uri: str, options) -> list[tuple[int, dict]]:
    """(row number, record) pairs from a CSV/Parquet/JSONL metadata file.

    A JSONL line that is not a JSON object becomes an ``__error__`` record (a failure row);
    a CSV or Parquet file that cannot be parsed at all is a `CorpusImportError`."""
    if uri.endswith(".parquet"):
        try:
            return list(enumerate(storage.read_parquet(uri, options).to_pylist(), start=1))
        except (pa.ArrowException, ValueError, storage.StorageError) as exc:  # missing, not Parquet, corrupt
            raise CorpusImportError(f"{uri} cannot be read as Parquet ({exc.__cause__ or exc}); re-export it") from exc
    if uri.endswith(".jsonl"):
        out = []
        for lineno, raw in enumerate(storage.iter_lines(uri, options), start=1):
            if raw.strip():
                try:
                    rec = parse_json_line(raw)
                except ValueError as exc:
                    rec = {"__error__": f"not valid JSON ({type(exc).__name__}: {str(exc)[:200]})"}
                if not isinstance(rec, dict):
                    rec = {"__error__": f"the line is a JSON {type(rec).__name__}, not an object of columns"}
                out.append((lineno, rec))
        return out
    # Bytes that are not UTF-8 survive decoding as lone surrogates (surrogateescape): the rows holding them
    # become failure rows, like every other bad row, instead of refusing the whole file.
    reader = csv.DictReader(io.StringIO(storage.read_bytes(uri, options).decode("utf-8-sig", "surrogateescape")))
    out = []
    try:
        for row in reader:
            column = next((k for k, v in row.items() if _escaped_bytes(v)), None)
            if column is not None or (None in row and _escaped_bytes(row[None])):
                where = f"column {column!r}" if column is not None else "a field past the header's columns"
                row = {"__error__": f"the row is not UTF-8 text ({where} holds a byte that is not UTF-8); "
                                    f"re-save {posixpath.basename(uri)} as UTF-8", "__reason__": "bad_encoding"}
            out.append((reader.line_num, row))
    except csv.Error as exc:  # a NUL byte, a field over csv's size limit
        raise CorpusImportError(f"{uri} line {reader.reader.line_num}: not valid CSV ({exc}); fix the file") from exc
    return out


def _escaped_bytes(value) -> bool:
    """True if `value` (a CSV field, or the list of fields past the header) holds a byte that was not UTF-8."""
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, str) and _ESCAPED.search(v) for v in values)


def bad_path(path: str) -> str | None:
    """Why `path` may not name an image of the collection, or None: paths stay inside the folder."""
    if "\x00" in path or bad_unicode(path):
        return "holds a NUL byte or invalid Unicode"
    norm = posixpath.normpath(path.replace("\\", "/"))
    if norm == ".." or norm.startswith(("/", "../")):
        return "points outside the collection's folder; give a path relative to it"
    return None


def _records_from_sidecars(src: str, options) -> list[tuple[str, dict]]:
    files = storage.list_files(src, options=options)
    names = {storage.basename(u) for u in files}
    out = []
    for uri in files:
        name = storage.basename(uri)
        stem, dot, ext = name.rpartition(".")
        if dot and f".{ext.lower()}" in IMAGE_EXTS:
            rec = {"file_name": name, "caption": None}
            if f"{stem}.txt" in names:
                txt = storage.join(src, f"{stem}.txt")
                try:
                    rec["caption"] = storage.read_bytes(txt, options).decode("utf-8-sig")
                except UnicodeDecodeError as exc:
                    rec = {"__error__": f"caption file {txt} is not UTF-8 text ({exc.reason}); re-save it as UTF-8",
                           "__reason__": "bad_caption"}
            out.append((name, rec))
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
                sink.fail(rec.get("__reason__", "bad_line"), rec["__error__"], file=where, row=row)
                continue
            path = rec.get(image_col)
            if not path:
                sink.fail("missing_image", f"row has no {image_col!r}; fill it in {where}", file=where, row=row)
                continue
            key = artwork_id(rec)
            problem = bad_path(str(path))
            if problem:
                sink.fail("bad_path", f"image path {str(path)!r} {problem}; fix {where}", key=key, file=where, row=row)
                continue
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
