"""Property-based tests (hypothesis) of every native corpus loader and of the job-config loader.

Inputs are generated malformed: broken JSON/JSONL/CSV/TSV, bad base64, wrong types, duplicate
ids, non-UTF-8 bytes, lone-surrogate escapes, empty and over-long captions, unknown splits,
paths that leave the folder, corrupt images — then mutated byte-wise. For each input,
`artray corpus import` (run in-process, no Ray) must either

* stop with a `UserError` whose message names the input file, writing no corpus; or
* finish with every input row accounted for: imported, or named (file + row) by at least
  one failure row — a repeated row by its own `duplicate_id` failure — and nothing imported
  that was not in the input; the artworks and texts tables agree with each other and with
  the manifest's counts.

Any other exception is a bug. The oracles only *find* rows (their id and line), they do not
re-implement the loaders' rules. Budgets are small (see SETTINGS): the file runs in ~15 s on an idle 2-core machine, ~1-2 min on a busy one.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from artray import corpus
from artray import images as imaging
from artray.config import ConfigError, load_config, parse_overrides
from artray.corpora.importer import ImportConfig, import_corpus
from artray.errors import UserError
from artray.schema import SPLITS

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])
MAX_CAPTION = 60
MAX_PIXELS = 64 * 64  # small, so a 100x100 image is a "decompression bomb"
COMMON = {"max_caption_chars": MAX_CAPTION, "max_image_pixels": MAX_PIXELS, "shard_rows": 3}


def _encode(fmt: str, size=(16, 12), color="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


JPEG, PNG = _encode("JPEG"), _encode("PNG", color="blue")
IMAGES = {
    "jpeg": JPEG,
    "png": PNG,
    "truncated": JPEG[: len(JPEG) // 2],
    "garbage": b"\xff\xd8\xff\xe0 not an image at all",
    "empty": b"",
    "bomb": _encode("PNG", size=(100, 100)),  # over MAX_PIXELS
}

# Text that is awkward for every layer: CJK, NUL, zero-width space, tab/newline, quotes, and
# lone surrogates (JSON can carry them as escapes; UTF-8, Arrow and tokenizers cannot).
ALPHABET = st.one_of(st.characters(codec="utf-8", max_codepoint=0x9FFF),
                     st.sampled_from(["\ud800", "\udfff", "\x00", "\u200b", "\t", "\n", '"', "红", " "]))
short_text = st.one_of(st.text(ALPHABET, max_size=12), st.sampled_from(["\ud800", "x\udfffy", "a/b", "\x00", ""]))
caption = st.one_of(
    st.text(ALPHABET, min_size=1, max_size=40),
    st.sampled_from(["", "   ", "\n\t", "a red field", "红色圆形", "a \ud800 red field"]),
    st.integers(min_value=1, max_value=50).map(lambda n: "long " * (n + MAX_CAPTION // 5)),  # over the limit
)
junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
caption_or_junk = st.one_of(caption, caption, junk)
split_value = st.one_of(st.sampled_from(["train", "val", "test", "valid", "validation", " TEST ", "dev"]),
                        st.sampled_from(["tset", "holdout", ""]), junk)


def sometimes(rare: st.SearchStrategy, usual: st.SearchStrategy, one_in: int = 6) -> st.SearchStrategy:
    """`rare` about once in `one_in` draws, else `usual` (st.one_of picks its branches evenly)."""
    return st.integers(0, one_in - 1).flatmap(lambda i: rare if i == one_in - 1 else usual)


def dumps(value) -> str:
    return json.dumps(value, ensure_ascii=True)  # lone surrogates become \\udXXX escapes, as in the wild


def json_object(pairs: list[tuple[str, object]]) -> str:
    """A JSON object from (key, value) pairs: repeated keys are kept, as a hand-edited file may have."""
    return "{" + ", ".join(f"{dumps(k)}: {v if isinstance(v, RawJson) else dumps(v)}" for k, v in pairs) + "}"


class RawJson(str):
    """Already-serialised JSON, inserted verbatim by `json_object`."""


@st.composite
def mutated(draw, raw: bytes) -> bytes:
    """`raw`, or `raw` truncated / with bytes inserted or overwritten (non-UTF-8, NUL, separators)."""
    how = ["keep"] * 5 + ["truncate", "insert", "overwrite"]
    how = how[draw(st.integers(0, len(how) - 1))]  # integers shrink to 0: "keep" is the simple case
    if how == "keep" or not raw:
        return raw
    at = draw(st.integers(0, len(raw) - 1))
    if how == "truncate":
        return raw[:at]
    chunk = draw(st.one_of(st.binary(min_size=1, max_size=4),
                           st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\t", b"\n", b'"', b",", b"{", b"]", b"\r\n"])))
    return raw[:at] + chunk + raw[at + (len(chunk) if how == "overwrite" else 0):]


def safe_file_name(name: str) -> bool:
    """Whether a test may create a file called `name` (the loaders must cope with the others)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return name not in ("", ".", "..") and "/" not in name and "\x00" not in name and len(name.encode()) < 200


def printable(value: str) -> str:
    """How failure rows spell a value with lone surrogates (backslash escapes)."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


# --- the contract ----------------------------------------------------------------------------


class Outcome:
    def __init__(self, dest: Path):
        self.artworks = corpus.read_artworks(str(dest)).to_pylist()
        self.texts = corpus.read_texts(str(dest)).to_pylist()
        self.failures = corpus.read_failures(str(dest)).to_pylist()
        self.ids = {a["artwork_id"] for a in self.artworks}
        self.text_ids = {t["text_id"] for t in self.texts}
        self.failed = defaultdict(list)  # (file, row) → reasons
        self.failed_rows = defaultdict(list)  # row → reasons, for formats whose rows are keys
        for f in self.failures:
            self.failed[(f["file"], f["row"])].append(f["reason"])
            self.failed_rows[f["row"]].append(f["reason"])


def run_import(fmt: str, src: Path, inputs: list[Path], **kw) -> Outcome | None:
    """Import `src`; check the contract that holds for every input; None if it was refused."""
    dest = src.parent / "out"
    try:
        manifest = import_corpus(ImportConfig(format=fmt, src=str(src), dest=str(dest), **COMMON, **kw))
    except UserError as exc:  # anything else propagates: an uncaught crash fails the test
        assert any(p.name in str(exc) for p in inputs), f"the error does not name the input file: {exc}"
        assert corpus.read_manifest(str(dest)) is None, "a refused import must not leave a corpus"
        return None
    out = Outcome(dest)
    counts = manifest["counts"]
    assert (counts["artworks"], counts["texts"], counts["failed"]) == (len(out.artworks), len(out.texts),
                                                                       len(out.failures))
    assert len(out.ids) == len(out.artworks) and len(out.text_ids) == len(out.texts), "ids must be unique"
    root = str(src)
    for f in out.failures:
        assert f["reason"] and len(f["detail"]) > 10 and f["stage"] == "import"
        assert f["row"] is not None, f"a failure row must name the row: {f}"  # "" is a key too
        assert f["file"] and f["file"].startswith(root), f"a failure row must name an input file: {f}"
    by_id = {a["artwork_id"]: a for a in out.artworks}
    for a in out.artworks:
        assert a["split"] in SPLITS and a["captions"] and len(a["captions"]) == len(a["text_ids"])
        assert all(c.strip() and len(c) <= MAX_CAPTION for c in a["captions"])
        if a["image"] is not None:
            info = imaging.probe(a["image"], MAX_PIXELS)  # an imported image decodes
            assert (info.width, info.height) == (a["width"], a["height"])
    for t in out.texts:
        assert t["text"].strip() and t["artwork_ids"] and t["split"] in SPLITS
        for aid in t["artwork_ids"]:  # both directions of the text ↔ artwork relation agree
            art = by_id[aid]
            assert art["split"] == t["split"] and t["text_id"] in art["text_ids"]
            assert art["captions"][art["text_ids"].index(t["text_id"])] == t["text"]
    for a in out.artworks:
        assert set(a["text_ids"]) <= out.text_ids
    return out


def assert_rows_accounted(rows: list[tuple[object, object]], imported: set, failed: dict) -> None:
    """`rows`: (key, label) per input row, key None when the row cannot even be read.

    A row whose key was not imported must have a failure naming its label; of the rows sharing
    an imported key, all but one must."""
    by_key = defaultdict(list)
    for key, label in rows:
        by_key[key].append(label)
    for key, labels in by_key.items():
        unfailed = [label for label in labels if label not in failed]
        allowed = 1 if key is not None and key in imported else 0
        assert len(unfailed) <= allowed, f"rows {unfailed} (key {key!r}) vanished without a failure row"
    assert imported <= {key for key, _ in rows}, "imported rows that were not in the input"


def assert_duplicates_reported(keys: list[str], out: Outcome) -> None:
    """Formats keyed by a JSON object key: each repeat of a key has its own duplicate_id row."""
    for key, n in Counter(keys).items():
        assert out.failed_rows[printable(key)].count("duplicate_id") >= n - 1, f"repeats of {key!r} went unreported"


def top_level_pairs(raw: bytes) -> list[tuple[str, object]] | None:
    """The oracle: the (key, value) pairs of a JSON object file, None if it is not one."""
    try:
        data = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=lambda p: ("pairs", p))
    except (ValueError, RecursionError):
        return None
    return data[1] if isinstance(data, tuple) else None


# --- Artpedia: artpedia.json + images/<id>.<ext> --------------------------------------------------

artpedia_key = st.one_of(st.sampled_from(["1", "2", "3", "42"]), short_text)
sentences = st.one_of(st.lists(caption_or_junk, max_size=3), caption, junk)
# A valid entry with up to two fields replaced: mostly-good rows reach the deep checks (and the writer).
artpedia_field = {
    "split": split_value, "visual_sentences": sentences, "contextual_sentences": sentences,
    "title": st.one_of(short_text, junk), "img_url": st.one_of(st.just(""), junk),
    "year": st.one_of(st.integers(-3000, 3000), st.sampled_from([2**31, -(2**31) - 1, 10**12]),
                      st.floats(allow_nan=False), short_text, st.booleans()),
}
artpedia_entry = st.tuples(
    st.fixed_dictionaries({"split": st.sampled_from(["train", "val", "test", "validation"]),
                           "visual_sentences": st.lists(st.sampled_from(["A red field.", "红色圆形"]), min_size=1,
                                                        max_size=2),
                           "img_url": st.just("https://upload.wikimedia.org/x.jpg"), "title": st.just("T"),
                           "year": st.just(1600)}),
    st.lists(st.sampled_from(sorted(artpedia_field)), max_size=2, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: artpedia_field[n] for n in names})),
).map(lambda parts: {**parts[0], **parts[1]})


@st.composite
def artpedia_input(draw):
    rows = draw(st.lists(st.tuples(artpedia_key, sometimes(junk, artpedia_entry),
                                   st.sampled_from([None, None, *IMAGES]), st.sampled_from([None, None, "split"])),
                         max_size=7))
    pairs, images = [], {}
    for key, entry, image, dup_field in rows:
        text = dumps(entry)
        if isinstance(entry, dict) and dup_field:  # a field written twice inside one entry
            text = "{" + f'"{dup_field}": "test", ' + text[1:] if len(entry) else text
        pairs.append((key, RawJson(text)))
        if image and safe_file_name(key):
            images[f"{key}.jpg"] = IMAGES[image]
    raw = draw(mutated(json_object(pairs).encode("utf-8")))
    return raw, images, draw(st.sampled_from(["visual", "contextual", "both"]))


@SETTINGS
@given(artpedia_input())
def test_artpedia_loader_fuzzed(case):
    raw, images, caption_source = case
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "artpedia")
        (src / "images").mkdir(parents=True)
        (src / "artpedia.json").write_bytes(raw)
        for name, data in images.items():
            (src / "images" / name).write_bytes(data)
        out = run_import("artpedia", src, [src / "artpedia.json"], caption_source=caption_source)
        pairs = top_level_pairs(raw)
        if pairs is None:
            assert out is None, "a file that is not a JSON object must be refused"
            return
        assert out is not None, "a JSON object index must import (bad entries become failure rows)"
        keys = [k for k, _ in pairs]
        assert {f["row"] for f in out.failures} <= {printable(k) for k in keys}, "a failure names no input row"
        assert_duplicates_reported(keys, out)
        assert_rows_accounted([(k, printable(k)) for k in set(keys)], out.ids, out.failed_rows)


# --- ArtCap: ArtCap.json (file name → captions) + ArtCap_Images_Dataset/ + optional split file ------

artcap_name = st.one_of(st.sampled_from(["a.jpg", "b.png", "a.png", "c.jpg", "noext", "sub/d.jpg", "../e.jpg",
                                         "", ".", "f\x00.jpg", "g\ud800.jpg", "h.JPG"]), short_text)


@st.composite
def artcap_input(draw):
    rows = draw(st.lists(st.tuples(artcap_name, st.one_of(st.lists(caption_or_junk, max_size=5), junk),
                                   st.sampled_from([None, *IMAGES, "jpeg", "jpeg"])), max_size=7))
    raw = draw(mutated(json_object([(n, caps) for n, caps, _ in rows]).encode("utf-8")))
    images = {n: IMAGES[im] for n, _, im in rows if im and safe_file_name(n)}
    split_file = None
    kind = draw(st.sampled_from([None, None, "csv", "json"]))
    if kind:
        entries = [(n.rsplit(".", 1)[0] if draw(st.booleans()) else n, draw(split_value)) for n, _, _ in rows]
        if kind == "csv":
            buf = io.StringIO()
            csv.writer(buf).writerows([("file_name", "split"), *[(k, str(v)) for k, v in entries]])
            text = buf.getvalue().encode("utf-8", "backslashreplace")
        else:
            text = json_object(entries).encode("utf-8")
        split_file = (f"split.{kind}", draw(mutated(text)))
    return raw, images, split_file


@SETTINGS
@given(artcap_input())
def test_artcap_loader_fuzzed(case):
    raw, images, split_file = case
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "artcap")
        (src / "ArtCap_Images_Dataset").mkdir(parents=True)
        (src / "ArtCap.json").write_bytes(raw)
        for name, data in images.items():
            (src / "ArtCap_Images_Dataset" / name).write_bytes(data)
        inputs, kw = [src / "ArtCap.json"], {"split_ratios": (0.5, 0.25, 0.25)}
        if split_file:
            (src / split_file[0]).write_bytes(split_file[1])
            inputs.append(src / split_file[0])
            kw["split_file"] = str(src / split_file[0])
        out = run_import("artcap", src, inputs, **kw)
        pairs = top_level_pairs(raw)
        if pairs is None:
            assert out is None, "a file that is not a JSON object must be refused"
            return
        if out is None:
            assert split_file, "a JSON object index with no split file must import"
            return
        names = [n for n, _ in pairs]
        assert_duplicates_reported(names, out)
        claimed = {Path(a["image_uri"]).name for a in out.artworks}  # the entry each artwork came from
        assert all(a["artwork_id"] == Path(a["image_uri"]).name.rsplit(".", 1)[0] for a in out.artworks)
        assert_rows_accounted([(printable(n), printable(n)) for n in set(names)], claimed, out.failed_rows)


# --- CulTi / Chinese-CLIP: {split}_imgs.tsv (id TAB base64) + {split}_texts.jsonl -----------------

image_id = st.sampled_from(["1", "2", "3", "10", "x", ""])


@st.composite
def tsv_line(draw) -> bytes:
    key = draw(image_id).encode()
    data = IMAGES[draw(st.sampled_from([*IMAGES, "jpeg", "png", "png"]))]
    kind = draw(st.sampled_from(["b64", "b64", "b64", "urlsafe", "junk", "three", "no_tab", "bad_id", "blank"]))
    return {
        "b64": key + b"\t" + base64.b64encode(data),
        "urlsafe": key + b"\t" + base64.urlsafe_b64encode(data),
        "junk": key + b"\tnot-base64!!" + draw(st.binary(max_size=6)),
        "three": key + b"\t" + base64.b64encode(data) + b"\textra",
        "no_tab": key + b" " + base64.b64encode(data),
        "bad_id": b"\xff\xfe" + key + b"\t" + base64.b64encode(data),
        "blank": b"   ",
    }[kind]


@st.composite
def jsonl_line(draw) -> bytes:
    text_id = draw(st.one_of(st.integers(0, 6), st.sampled_from(["7", "t"]), junk, st.just("\ud800")))
    ids = draw(st.one_of(st.lists(st.one_of(image_id, st.integers(1, 3)), max_size=3), junk))
    record = {"text_id": text_id, "text": draw(caption_or_junk), "image_ids": ids}
    kind = draw(st.sampled_from(["record", "record", "record", "missing_key", "not_object", "broken", "latin1"]))
    if kind == "missing_key":
        record.pop(draw(st.sampled_from(sorted(record))))
    line = {"not_object": dumps([record]), "broken": dumps(record)[:-2]}.get(kind, dumps(record)).encode()
    return "红色, café".encode("latin-1", "replace") + line if kind == "latin1" else line


@st.composite
def cnclip_input(draw):
    splits = draw(st.lists(st.sampled_from(["train", "valid", "test", "val", "train"]), min_size=1, max_size=3,
                           unique=True))
    files = {}
    for split in splits:
        files[f"{split}_imgs.tsv"] = b"\n".join(draw(st.lists(tsv_line(), max_size=5)))
        files[f"{split}_texts.jsonl"] = b"\n".join(draw(st.lists(jsonl_line(), max_size=5)))
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(files)))
        files[name] = draw(mutated(files[name]))
    if draw(st.integers(0, 9)) == 0:
        files.pop(draw(st.sampled_from(sorted(files))))  # a split with only one of its two files
    return files


def _lines(raw: bytes) -> list[tuple[int, bytes]]:
    return [(i, line.rstrip(b"\r")) for i, line in enumerate(raw.split(b"\n"), start=1) if line.strip()]


def _text_key(line: bytes):
    """Oracle: the text id a JSONL line names, None if it is not a readable record."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or not {"text_id", "text", "image_ids"} <= set(obj):
        return None
    tid = obj["text_id"]
    return str(tid) if isinstance(tid, (int, str)) and not isinstance(tid, bool) else None


@SETTINGS
@given(cnclip_input())
def test_cnclip_loader_fuzzed(files):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "culti")
        src.mkdir()
        for name, data in files.items():
            (src / name).write_bytes(data)
        out = run_import("cnclip", src, [src / n for n in files] or [src])
        splits = {n.split("_")[0] for n in files}
        complete = all(f"{s}_imgs.tsv" in files and f"{s}_texts.jsonl" in files for s in splits)
        if out is None:
            assert not complete or {"val", "valid"} <= splits, "a complete set of split files must import"
            return
        for name, data in files.items():
            uri = str(src / name)
            split = {"valid": "val"}.get(name.split("_")[0], name.split("_")[0])
            if name.endswith("_imgs.tsv"):
                rows, imported = [], {a["artwork_id"] for a in out.artworks if a["split"] == split}
                for lineno, line in _lines(data):
                    parts = line.split(b"\t")
                    try:
                        key = parts[0].decode("utf-8").strip() if len(parts) == 2 else None
                    except UnicodeDecodeError:
                        key = None
                    rows.append((key, (uri, str(lineno))))
            else:
                rows = [(_text_key(line), (uri, str(lineno))) for lineno, line in _lines(data)]
                imported = {t["text_id"] for t in out.texts if t["split"] == split}
            assert_rows_accounted(rows, imported, out.failed)


# --- a folder: images + metadata.csv / .jsonl / .parquet, or <name>.txt sidecars ----------------------

folder_path = st.sampled_from(["a.jpg", "b.png", "sub/c.jpg", "a.jpg", "../d.jpg", "/etc/hostname", "",
                               "e\x00.jpg", "f\ud800.jpg", "missing.jpg", "g.jpg"])


@st.composite
def folder_input(draw):
    kind = draw(st.sampled_from(["csv", "jsonl", "parquet", "sidecar"]))
    with_split = draw(st.booleans())
    records = []
    for _ in range(draw(st.integers(0, 6))):
        rec = {"file_name": draw(st.one_of(folder_path, folder_path, junk)),
               "caption": draw(st.one_of(caption, st.lists(caption_or_junk, max_size=3), junk))}
        if with_split:
            rec["split"] = draw(split_value)
        if draw(st.integers(0, 5)) == 0:
            rec["title"] = draw(st.one_of(short_text, junk))
        records.append(rec)
    images = {p: IMAGES[draw(st.sampled_from([*IMAGES, "jpeg", "jpeg"]))]
              for p in ("a.jpg", "b.png", "sub/c.jpg", "g.jpg") if draw(st.booleans())}
    if kind == "jsonl":
        lines = [dumps(r).encode() for r in records]
        lines += draw(st.lists(st.sampled_from([b"[1, 2]", b"3", b'"s"', b'{"file_name": "a.jpg",', b"\xff\xfe{}"]),
                               max_size=2))
        return kind, {"metadata.jsonl": draw(mutated(b"\n".join(draw(st.permutations(lines)))))}, images
    if kind == "csv":
        buf = io.StringIO()
        cols = ["file_name", "caption"] + (["split"] if with_split else [])
        writer = csv.writer(buf)
        writer.writerow(cols)
        for r in records:
            writer.writerow(["" if r.get(c) is None else dumps(r[c]) if isinstance(r[c], list) else str(r[c])
                             for c in cols])
        return kind, {"metadata.csv": draw(mutated(buf.getvalue().encode("utf-8", "backslashreplace")))}, images
    if kind == "parquet":
        table = pa.Table.from_pylist([{k: None if v is None else printable(dumps(v) if not isinstance(v, str) else v)
                                       for k, v in r.items()} for r in records]
                                     or [{"file_name": None, "caption": None}])
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return kind, {"metadata.parquet": draw(st.sampled_from([buf.getvalue(), buf.getvalue()[:-9]]))}, images
    sidecars, images = {}, {k: v for k, v in images.items() if "/" not in k}
    for name in images:
        if draw(st.booleans()):
            text = draw(caption)
            sidecars[name.rsplit(".", 1)[0] + ".txt"] = draw(st.sampled_from(
                [text.encode("utf-8", "backslashreplace"), text.encode("utf-8", "backslashreplace") + b"\xff"]))
    return kind, sidecars, images


def _folder_rows(kind: str, files: dict[str, bytes], images: dict, src: Path):
    """Oracle: (rows, must_import): (artwork id, (file, row)) per metadata row, and whether the
    metadata is readable with a file_name column (then the import must not be refused)."""
    if kind == "sidecar":
        return [(n.rsplit(".", 1)[0], (str(src), n)) for n in images], bool(images)
    name, raw = next(iter(files.items()))
    uri, records = str(src / name), []
    try:
        if kind == "jsonl":
            for lineno, line in _lines(raw):
                try:
                    rec = json.loads(line.decode("utf-8"))
                except (ValueError, RecursionError):
                    rec = None
                records.append((lineno, rec if isinstance(rec, dict) else None))
        elif kind == "parquet":
            records = list(enumerate(pq.read_table(io.BytesIO(raw)).to_pylist(), start=1))
        else:
            # a row holding a byte that is not UTF-8 is that row's failure, not the file's
            reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig", "surrogateescape")))
            records = [(reader.line_num, r) for r in reader]
    except (ValueError, csv.Error, pa.ArrowException):
        return None, False
    first = next((r for _, r in records if r is not None), None)
    rows = [((str(r["file_name"]).rsplit(".", 1)[0] if r and r.get("file_name") else None), (uri, str(n)))
            for n, r in records]
    return rows, first is not None and "file_name" in first


@SETTINGS
@given(folder_input())
def test_folder_loader_fuzzed(case):
    kind, files, images = case
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "collection")
        src.mkdir()
        for name, data in {**files, **images}.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
        out = run_import("folder", src, [src / n for n in files] + [src], split_ratios=(0.5, 0.25, 0.25))
        rows, must_import = _folder_rows(kind, files, images, src)
        if out is None:
            assert not must_import, "readable metadata with a file_name column must import"
            return
        assert rows is not None, "unreadable metadata must be refused"
        assert_rows_accounted(rows, {a["artwork_id"] for a in out.artworks}, out.failed)
        for a in out.artworks:  # nothing outside the collection's folder is ever read
            assert Path(a["image_uri"]).resolve().is_relative_to(src.resolve())


# --- images, and the job-config loader -----------------------------------------------------------


@SETTINGS
@given(st.one_of(st.sampled_from(list(IMAGES.values())).flatmap(mutated), st.binary(max_size=64)),
       st.sampled_from([None, 8, 1000]))
def test_image_decoding_raises_only_image_error(data, max_side):
    """Every image path (import, ingest, embed, serve) goes through these three functions."""
    for call in (lambda: imaging.probe(data, MAX_PIXELS), lambda: imaging.fit_long_side(data, max_side, MAX_PIXELS),
                 lambda: imaging.to_rgb(data, MAX_PIXELS)):
        try:
            call()
        except imaging.ImageError as exc:
            assert exc.reason in ("empty_image", "undecodable_image", "decompression_bomb") and exc.detail


yaml_doc = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"format: artpedia\nsrc: [1, 2\n", b"format: artpedia\nsrc: a\ndest: b\nshard_rows: many\n",
                     b"- 1\n- 2\n", b"\xff\xfeformat: x", b"[" * 2000, b"a: " + b"1" * 5000, b"format: {a: b}\n",
                     b"format: folder\nsrc: a\ndest: b\nsplit_ratios: [1, 0]\n", b"&a [*a]",
                     b"&a {format: *a}"]),
)


@SETTINGS
@given(yaml_doc, st.lists(st.sampled_from(["k=[1,", "format=artpedia", "a.b.c=1", "src=", "x", "k={", "k=" + "[" * 500,
                                            "shard_rows=1" + "0" * 5000]), max_size=2))
def test_job_config_loader_raises_only_config_error(doc, overrides):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "job.yaml")
        path.write_bytes(doc)
        try:
            load_config(ImportConfig, str(path), parse_overrides(overrides))
        except ConfigError as exc:
            assert "job.yaml" in str(exc) or "--set" in str(exc) or "invalid ImportConfig" in str(exc)
