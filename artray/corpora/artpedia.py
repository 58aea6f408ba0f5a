"""Artpedia (`artpedia.json`: id → title, img_url, year, visual/contextual sentences, split).

The caption is the visual sentences joined (both source works do this); contextual
sentences (history, not the picture) are kept in their own column and can be chosen
with `caption_source`. Images come from `img_url` (run `artray corpus ingest`) or, if
already downloaded, from an image folder with files named `<id>.<ext>`.
"""

from __future__ import annotations

from artray import storage
from artray.corpora.import_config import CorpusImportError, ImportConfig
from artray.corpora.json_input import load_json
from artray.corpora.sink import ImportPlan, ImportSink

INDEX = "artpedia.json"
INT32 = (-(2**31), 2**31 - 1)  # the schema's year column
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff", ".webp", ".bmp")


def _sentences(value) -> list | None:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return value
    return None


def _image_index(images_dir: str | None, options) -> dict[str, str]:
    """Map artwork id → image URI for files named `<id>.<ext>` in `images_dir`."""
    if not images_dir or not storage.exists(images_dir, options):
        return {}
    out = {}
    for uri in storage.list_files(images_dir, options=options):
        name = storage.basename(uri)
        stem, dot, ext = name.rpartition(".")
        if dot and f".{ext.lower()}" in IMAGE_EXTS:
            out.setdefault(stem, uri)
    return out


def read(cfg: ImportConfig) -> ImportPlan:
    opts = cfg.storage_options()
    index = cfg.src if cfg.src.endswith(".json") else storage.join(cfg.src, INDEX)
    root = cfg.src.rsplit("/", 1)[0] if cfg.src.endswith(".json") else cfg.src
    data, duplicates = load_json(index, opts)
    if not isinstance(data, dict):
        raise CorpusImportError(f"{index} must be a JSON object keyed by artwork id (Artpedia's format), "
                                f"found a {type(data).__name__}")
    image_files = _image_index(cfg.images or storage.join(root, "images"), opts)

    def emit(sink: ImportSink) -> None:
        for key in duplicates:
            sink.fail("duplicate_id", f"artwork id {key!r} appears more than once in {index}; the first one was kept",
                      key=key, file=index, row=key)
        for key, entry in data.items():
            _emit_one(sink, str(key), entry, index, image_files)

    return ImportPlan("artpedia", emit, {"index": index, "local_images": len(image_files)})


def _emit_one(sink: ImportSink, key: str, entry, index: str, image_files: dict[str, str]) -> None:
    if not isinstance(entry, dict):
        sink.fail("bad_entry", f"entry {key!r} is a {type(entry).__name__}, not an object; fix it in {index}",
                  key=key, file=index, row=key)
        return
    if getattr(entry, "duplicate_keys", ()):
        sink.fail("duplicate_field", f"entry {key!r} has field(s) {sorted(set(entry.duplicate_keys))} more than once "
                  f"in {index}; the first of each was kept", key=key, file=index, row=key)
    split = sink.split(entry.get("split"), key=key, file=index, row=key)
    visual = _sentences(entry.get("visual_sentences"))
    contextual = _sentences(entry.get("contextual_sentences"))
    if visual is None or contextual is None:
        sink.fail("bad_field", f"visual_sentences/contextual_sentences of {key!r} must be lists of strings; fix {index}",
                  key=key, file=index, row=key)
        return
    if split is None:
        return
    visual = sink.clean_captions(visual, key=key, file=index, row=key)
    contextual = sink.clean_captions(contextual, key=key, file=index, row=key)
    chosen = {"visual": visual, "contextual": contextual, "both": visual + contextual}[sink.cfg.caption_source]
    caption = " ".join(chosen)
    if len(caption) > sink.cfg.max_caption_chars:
        sink.fail("caption_too_long", f"joined caption of {key!r} has {len(caption)} characters, over "
                  f"max_caption_chars={sink.cfg.max_caption_chars}", key=key, file=index, row=key)
        return
    img_url = entry.get("img_url") if isinstance(entry.get("img_url"), str) else None
    image = width = height = image_uri = None
    if key in image_files:
        checked = sink.read_image(image_files[key], key=key, row=key)
        if checked is None:
            return
        image, info = checked
        width, height, image_uri = info.width, info.height, image_files[key]
    elif not img_url:
        sink.fail("missing_image", f"artwork {key!r} has no img_url and no local image file; add one", key=key,
                  file=index, row=key)
        return
    year = entry.get("year")
    accepted = sink.add_artwork(
        file=index, row=key, artwork_id=key, split=split, captions=[caption] if caption else [],
        text_ids=[key] if caption else [], image=image, image_uri=image_uri, img_url=img_url,
        width=width, height=height, title=entry.get("title") if isinstance(entry.get("title"), str) else None,
        year=year if isinstance(year, int) and not isinstance(year, bool) and INT32[0] <= year <= INT32[1] else None,
        visual_sentences=visual, contextual_sentences=contextual,
    )
    if accepted:
        sink.add_text(text_id=key, text=caption, artwork_ids=[key], split=split, file=index, row=key)
