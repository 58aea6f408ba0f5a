"""CulTi / Chinese-CLIP format: `{split}_imgs.tsv` (image_id TAB base64 image) and
`{split}_texts.jsonl` ({"text_id", "text", "image_ids"}).

Several texts may describe one image and one text may describe several images; both
directions are kept (artwork rows list their texts, text rows list their artworks).
Chinese-CLIP names the validation split `valid`; any known split spelling is accepted.
"""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict

from artray import storage
from artray.corpora.import_config import CorpusImportError, ImportConfig
from artray.corpora.json_input import parse_json_line
from artray.corpora.sink import ImportPlan, ImportSink, bad_unicode
from artray.schema import normalise_split

IMGS_SUFFIX = "_imgs.tsv"
TEXTS_SUFFIX = "_texts.jsonl"


def _split_files(src: str, options) -> dict[str, dict[str, str]]:
    """{split: {"imgs": uri, "texts": uri}} from the file names in `src`."""
    found: dict[str, dict[str, str]] = defaultdict(dict)
    for uri in storage.list_files(src, options=options):
        name = storage.basename(uri)
        for suffix, kind in ((IMGS_SUFFIX, "imgs"), (TEXTS_SUFFIX, "texts")):
            if name.endswith(suffix):
                prefix = name[: -len(suffix)]
                split = normalise_split(prefix)
                if split is None:
                    raise CorpusImportError(
                        f"{uri}: '{prefix}' is not a split name; rename it to train/valid/test{suffix}")
                if kind in found[split]:  # e.g. valid_imgs.tsv and val_imgs.tsv: one would be ignored
                    raise CorpusImportError(f"{found[split][kind]} and {uri} are both the {split} {kind} file; "
                                            "merge them or move one away")
                found[split][kind] = uri
    if not found:
        raise CorpusImportError(f"no *{IMGS_SUFFIX} / *{TEXTS_SUFFIX} files in {src}; pass the folder that holds "
                                "the Chinese-CLIP / CulTi split files")
    for split, files in found.items():
        if set(files) != {"imgs", "texts"}:
            (uri,) = files.values()
            missing = ({"imgs", "texts"} - set(files)).pop()
            raise CorpusImportError(f"{uri} has no matching {missing} file for split {split} in {src} "
                                    f"(*{TEXTS_SUFFIX if missing == 'texts' else IMGS_SUFFIX}); add it or move {uri} away")
    return dict(found)


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _parse_texts(uri: str, split: str, options, problems: list, texts: list) -> None:
    for lineno, raw in enumerate(storage.iter_lines(uri, options), start=1):
        if not raw.strip():
            continue
        try:
            obj = parse_json_line(raw)
            if not isinstance(obj, dict):
                raise TypeError(f"the line is a JSON {type(obj).__name__}, not an object")
            text_id, text, image_ids = obj["text_id"], obj["text"], obj["image_ids"]
            if not _is_id(text_id) or bad_unicode(text_id):
                raise TypeError("text_id must be a number or a string of valid Unicode")
            if not isinstance(image_ids, list) or not all(_is_id(i) for i in image_ids):
                raise TypeError("image_ids must be a list of ids")
        except (ValueError, KeyError, TypeError) as exc:  # ValueError: not UTF-8 / not JSON
            detail = (f"not a valid text record ({type(exc).__name__}: {str(exc)[:200]}); each line must be "
                      '{"text_id": ..., "text": "...", "image_ids": [...]}')
            problems.append(("bad_line", detail, None, uri, lineno))
            continue
        texts.append((str(text_id), text, [str(i) for i in image_ids], split, uri, lineno))


def read(cfg: ImportConfig) -> ImportPlan:
    opts = cfg.storage_options()
    files = _split_files(cfg.src, opts)
    problems: list = []
    parsed: list = []
    for split, pair in sorted(files.items()):
        _parse_texts(pair["texts"], split, opts, problems, parsed)
    texts, repeated, first_line = [], [], {}  # the first record of each text id counts; a repeat is a failure
    for record in parsed:
        text_id, uri, lineno = record[0], record[4], record[5]
        if text_id in first_line:
            repeated.append((text_id, uri, lineno, first_line[text_id]))
        else:
            first_line[text_id] = f"{uri} line {lineno}"
            texts.append(record)
    texts_of_image: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # image id → (text id, text, split)
    for text_id, text, image_ids, split, _uri, _line in texts:
        for image_id in image_ids:
            texts_of_image[image_id].append((text_id, text, split))

    def emit(sink: ImportSink) -> None:
        for reason, detail, key, uri, lineno in problems:
            sink.fail(reason, detail, key=key, file=uri, row=lineno)
        for text_id, uri, lineno, first in repeated:
            sink.fail("duplicate_id", f"text id {text_id!r} appears more than once (first at {first}); the first "
                      "one was kept", key=text_id, file=uri, row=lineno)
        cleaned: dict[str, str] = {}
        for text_id, text, _ids, _split, uri, lineno in texts:
            kept = sink.clean_captions([text], key=text_id, file=uri, row=lineno)
            if kept:
                cleaned[text_id] = kept[0]
            else:
                sink.fail("empty_caption", f"text {text_id!r} is empty; fix {uri}", key=text_id, file=uri, row=lineno)
        for split, pair in sorted(files.items()):
            _emit_images(sink, pair["imgs"], split, texts_of_image, cleaned, opts)
        for text_id, _text, image_ids, split, uri, lineno in texts:
            if text_id in cleaned and not image_ids:
                sink.fail("dangling_reference", f"text {text_id!r} lists no image_ids; add the images it describes "
                          f"in {uri}", key=text_id, file=uri, row=lineno)
                continue
            same_split = [i for i in image_ids if sink.artwork_split.get(i, split) == split]
            if len(same_split) < len(image_ids):
                sink.fail("cross_split_reference", f"text {text_id!r} ({split}) points at images of another split: "
                          f"{sorted(set(image_ids) - set(same_split))}; fix {uri}", key=text_id, file=uri, row=lineno)
            if text_id in cleaned and same_split:
                sink.add_text(text_id=text_id, text=cleaned[text_id], artwork_ids=same_split, split=split,
                              file=uri, row=lineno)

    return ImportPlan("culti", emit, {"splits": {s: f for s, f in sorted(files.items())}})


def _emit_images(sink: ImportSink, uri: str, split: str, texts_of_image, cleaned: dict[str, str], options) -> None:
    for lineno, raw in enumerate(storage.iter_lines(uri, options), start=1):
        if not raw.strip():
            continue
        parts = raw.split(b"\t")
        if len(parts) != 2:
            sink.fail("bad_line", f"expected 'image_id<TAB>base64', found {len(parts)} tab-separated fields",
                      file=uri, row=lineno)
            continue
        try:
            image_id = parts[0].decode("utf-8").strip()
        except UnicodeDecodeError as exc:
            sink.fail("bad_line", f"the image id is not UTF-8 text ({exc.reason}); fix it", file=uri, row=lineno)
            continue
        try:
            payload = parts[1].strip()
            # Standard base64 (Chinese-CLIP's README) or URL-safe (what its own loader decodes).
            data = base64.urlsafe_b64decode(payload) if (b"-" in payload or b"_" in payload) else \
                base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            sink.fail("bad_base64", f"image data is not valid base64 ({exc}); re-encode it", key=image_id,
                      file=uri, row=lineno)
            continue
        checked = sink.check_image(data, key=image_id, file=uri, row=lineno, image=f"line {lineno} of {uri}")
        if checked is None:
            continue
        own = [tid for tid, _text, s in texts_of_image.get(image_id, []) if s == split and tid in cleaned]
        own = list(dict.fromkeys(own))
        if not own:
            sink.fail("empty_caption", f"no text in {split}_texts.jsonl points at image {image_id!r}", key=image_id,
                      file=uri, row=lineno)
            continue
        sink.add_artwork(file=uri, row=lineno, artwork_id=image_id, split=split, captions=[cleaned[t] for t in own],
                         text_ids=own, image=data, width=checked[1].width, height=checked[1].height)
