"""ArtCap (`ArtCap.json`: image file name → 5 captions, plus `ArtCap_Images_Dataset/`).

ArtCap has no official split: pass `split_file` (JSON or CSV, id or file name → split),
else a deterministic seeded split with `split_ratios` is made and recorded in the
manifest. The artwork id is the image file name without its extension.
"""

from __future__ import annotations

from artray import storage
from artray.corpora import splits
from artray.corpora.import_config import CorpusImportError, ImportConfig
from artray.corpora.json_input import load_json
from artray.corpora.sink import ImportPlan, ImportSink, bad_unicode

INDEX = "ArtCap.json"
IMAGES = "ArtCap_Images_Dataset"


def bad_file_name(name: str) -> str | None:
    """Why `name` cannot be a file in the image folder (a path, empty, a NUL byte...), or None."""
    if name in ("", ".", ".."):
        return "is not a file name"
    if "/" in name or "\\" in name:
        return "is a path, not a file name inside the image folder"
    if "\x00" in name or bad_unicode(name):
        return "holds a NUL byte or invalid Unicode"
    return None


def read(cfg: ImportConfig) -> ImportPlan:
    opts = cfg.storage_options()
    index = cfg.src if cfg.src.endswith(".json") else storage.join(cfg.src, INDEX)
    root = cfg.src.rsplit("/", 1)[0] if cfg.src.endswith(".json") else cfg.src
    images_dir = cfg.images or storage.join(root, IMAGES)
    data, duplicates = load_json(index, opts)
    if not isinstance(data, dict):
        raise CorpusImportError(f"{index} must be a JSON object mapping image file name to its captions "
                                f"(ArtCap's format), found a {type(data).__name__}")
    ids = {name: name.rsplit(".", 1)[0] for name in data}
    assigned, split_info = splits.assign(sorted(set(ids.values())), cfg.split_file, cfg.split_ratios,
                                         cfg.split_seed, opts)

    def emit(sink: ImportSink) -> None:
        for name in duplicates:
            sink.fail("duplicate_id", f"image {name!r} appears more than once in {index}; the first one was kept",
                      key=ids.get(name, name), file=index, row=name)
        for name, captions in data.items():
            key = ids[name]
            problem = bad_file_name(name)
            if problem:
                sink.fail("bad_file_name", f"image {name!r} {problem}; ArtCap keys are the images' file names in "
                          f"{IMAGES}/; fix {index}", key=key, file=index, row=name)
                continue
            if not isinstance(captions, list):
                sink.fail("bad_entry", f"captions of {name!r} must be a list of strings; fix {index}",
                          key=key, file=index, row=name)
                continue
            split = splits.lookup(assigned, key, name)
            if split is None:
                sink.fail("no_split", f"{name!r} is not in split file {cfg.split_file}; add it", key=key,
                          file=cfg.split_file, row=name)
                continue
            kept = sink.clean_captions(captions, key=key, file=index, row=name)
            if not kept:
                sink.fail("empty_caption", f"image {name!r} has no non-empty caption; add one in {index}",
                          key=key, file=index, row=name)
                continue
            checked = sink.read_image(storage.join(images_dir, name), key=key, row=name, file=None)
            if checked is None:
                continue
            image, info = checked
            text_ids = [f"{key}#{i}" for i in range(len(kept))]
            if sink.add_artwork(file=index, row=name, artwork_id=key, split=split, captions=kept, text_ids=text_ids,
                                image=image, image_uri=storage.join(images_dir, name),
                                width=info.width, height=info.height):
                for tid, text in zip(text_ids, kept):
                    sink.add_text(text_id=tid, text=text, artwork_ids=[key], split=split, file=index, row=name)

    return ImportPlan("artcap", emit, {"index": index, "split": split_info})
