"""The bundled sample corpora: native formats read the way a user's own loader would,
counts that match samples.json, determinism, CulTi's many-to-many links, and captions
that are true of the pixels."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from artray.scaffold.sample_corpora import make_samples
from artray.scaffold.sample_scenes import PALETTE

SPLITS = ("train", "val", "test")
PREFIX = {"train": "train", "val": "valid", "test": "test"}
ARTPEDIA_KEYS = {"title", "img_url", "year", "visual_sentences", "contextual_sentences", "split"}

# An independent reader of the caption vocabulary: phrase -> grid cell (row, col).
POS_EN = {"upper left": (0, 0), "top left": (0, 0), "top centre": (0, 1), "upper right": (0, 2),
          "top right": (0, 2), "centre left": (1, 0), "middle left": (1, 0), "centre": (1, 1),
          "middle": (1, 1), "centre right": (1, 2), "middle right": (1, 2), "lower left": (2, 0),
          "bottom left": (2, 0), "bottom centre": (2, 1), "lower right": (2, 2), "bottom right": (2, 2)}
POS_ZH = {"左上方": (0, 0), "左上角": (0, 0), "上方正中": (0, 1), "右上方": (0, 2), "右上角": (0, 2),
          "左侧中部": (1, 0), "正中": (1, 1), "中央": (1, 1), "右侧中部": (1, 2), "左下方": (2, 0),
          "左下角": (2, 0), "下方正中": (2, 1), "右下方": (2, 2), "右下角": (2, 2)}
COL_ZH = {"红色": "red", "蓝色": "blue", "绿色": "green", "黄色": "yellow", "白色": "white",
          "黑色": "black", "橙色": "orange", "紫色": "purple"}
SHAPE_EN = re.compile(r"\b(?:small |large )?(red|blue|green|yellow|white|black|orange|purple) "
                      r"(circle|square|triangle|star|diamond)\b")
SHAPE_ZH = re.compile(r"(?:较大的|较小的)?(" + "|".join(COL_ZH) + r")(圆形|方形|三角形|星形|菱形)")


def _alternation(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


WHERE_EN = re.compile(r"\b(" + _alternation(POS_EN) + r")\b")
WHERE_ZH = re.compile("(" + _alternation(POS_ZH) + ")")


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    dest = tmp_path_factory.mktemp("samples")
    paths = make_samples(str(dest), n=40, seed=3)
    return dest, {k: Path(v) for k, v in paths.items()}, json.loads((dest / "samples.json").read_text("utf-8"))


def _open(path: Path) -> Image.Image:
    return Image.open(io.BytesIO(path.read_bytes()))


def _culti(root: Path):
    """{split: (images {id: PIL image}, texts [record])} parsed like Chinese-CLIP's own loader."""
    out = {}
    for split in SPLITS:
        images = {}
        for line in (root / f"{PREFIX[split]}_imgs.tsv").read_text("utf-8").splitlines():
            image_id, b64 = line.split("\t")
            img = Image.open(io.BytesIO(base64.urlsafe_b64decode(b64)))  # as cn_clip's loader reads it
            assert base64.b64decode(b64, validate=True) == img.fp.getvalue()  # README's standard alphabet
            assert img.format == "PNG"
            images[int(image_id)] = img
        lines = (root / f"{PREFIX[split]}_texts.jsonl").read_text("utf-8").splitlines()
        out[split] = (images, [json.loads(line) for line in lines])
    return out


def _check_counts(meta: dict, artworks: dict, texts: dict) -> None:
    for split in SPLITS:
        assert meta["splits"][split] == {"artworks": artworks.get(split, 0), "texts": texts.get(split, 0)}
        assert meta["splits"][split]["artworks"] > 0


def test_returns_paths_and_split_sizes(samples):
    dest, paths, meta = samples
    assert set(paths) == {"artpedia", "artcap", "culti", "folder"}
    assert all(p.is_dir() and p.parent == dest for p in paths.values())
    sizes = meta["corpora"]["artpedia"]["splits"]
    assert meta["corpora"]["artpedia"]["total"]["artworks"] == 40
    assert sizes["train"]["artworks"] > sizes["val"]["artworks"] > 0 and sizes["test"]["artworks"] > 0


def test_artpedia_native(samples):
    _, paths, meta = samples
    data = json.loads((paths["artpedia"] / "artpedia.json").read_text("utf-8"))
    per_split = {}
    for key, entry in data.items():
        assert set(entry) == ARTPEDIA_KEYS and isinstance(entry["year"], int)
        assert entry["img_url"].startswith("https://upload.wikimedia.org/wikipedia/commons/")
        assert entry["visual_sentences"] and entry["contextual_sentences"]
        for sentence in entry["contextual_sentences"]:  # history, never the picture
            assert not re.search(r"\b(" + "|".join(PALETTE) + r"|circle|square|triangle|star|stripe)\b", sentence)
        img = _open(paths["artpedia"] / "images" / f"{key}.jpg")
        assert img.format == "JPEG" and 96 <= img.width <= 128
        per_split[entry["split"]] = per_split.get(entry["split"], 0) + 1
    _check_counts(meta["corpora"]["artpedia"], per_split, per_split)


def test_artcap_native(samples):
    _, paths, meta = samples
    data = json.loads((paths["artcap"] / "ArtCap.json").read_text("utf-8"))
    assert len(data) == meta["corpora"]["artcap"]["total"]["artworks"]
    assert sum(len(c) for c in data.values()) == meta["corpora"]["artcap"]["total"]["texts"]
    for name, captions in data.items():
        assert re.fullmatch(r"artcap_\d{4}\.jpg", name)
        assert len(captions) == 5 and len(set(captions)) == 5 and all(isinstance(c, str) for c in captions)
        assert _open(paths["artcap"] / "ArtCap_Images_Dataset" / name).format == "JPEG"


def test_folder_native(samples):
    _, paths, meta = samples
    with open(paths["folder"] / "metadata.csv", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        assert reader.fieldnames == ["file_name", "caption", "split"]
    per_split = {}
    for row in rows:
        assert not Path(row["file_name"]).is_absolute() and (paths["folder"] / row["file_name"]).is_file()
        per_split[row["split"]] = per_split.get(row["split"], 0) + 1
    _check_counts(meta["corpora"]["folder"], per_split, per_split)


def test_culti_native_and_many_to_many(samples):
    _, paths, meta = samples
    culti = _culti(paths["culti"])
    all_images, all_texts = [], []
    for split, (images, texts) in culti.items():
        for t in texts:
            assert set(t) == {"text_id", "text", "image_ids"} and isinstance(t["text_id"], int)
            assert t["image_ids"] and set(t["image_ids"]) <= set(images)  # links stay inside the split
        linked = [i for t in texts for i in t["image_ids"]]
        assert set(linked) == set(images)  # every image has a text
        all_images += list(images)
        all_texts += [t["text_id"] for t in texts]
    _check_counts(meta["corpora"]["culti"], {s: len(c[0]) for s, c in culti.items()},
                  {s: len(c[1]) for s, c in culti.items()})
    assert len(set(all_images)) == len(all_images) and len(set(all_texts)) == len(all_texts)
    texts = [t for _, ts in culti.values() for t in ts]
    assert sum(len(t["image_ids"]) == 2 for t in texts) == meta["corpora"]["culti"]["texts_with_two_images"] > 0
    links = [i for t in texts for i in t["image_ids"] if len(t["image_ids"]) == 1]
    assert sum(links.count(i) == 2 for i in set(links)) == meta["corpora"]["culti"]["images_with_two_texts"] > 0
    raw = (paths["culti"] / "train_texts.jsonl").read_text("utf-8")
    assert "\\u" not in raw  # ensure_ascii=False, as Chinese-CLIP's files are
    for t in texts:  # simplified Chinese, not English
        assert not re.search(r"[A-Za-z]", t["text"])
        assert sum("\u4e00" <= ch <= "\u9fff" for ch in t["text"]) >= 0.8 * len(t["text"])


def _nearest_colour(img: Image.Image, cell: tuple[int, int]) -> str:
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    h, w = arr.shape[:2]
    y, x = int((cell[0] + 0.5) * h / 3), int((cell[1] + 0.5) * w / 3)
    rgb = np.median(arr[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3), axis=0)
    return min(PALETTE, key=lambda name: float(np.sum((rgb - np.array(PALETTE[name])) ** 2)))


def _claims(text: str, shape_re, where_re, positions, colour_of, seps) -> list[tuple[str, tuple[int, int]]]:
    """(colour, cell) for every clause naming exactly one coloured shape and one position."""
    out = []
    for clause in re.split(seps, text):
        shapes, wheres = shape_re.findall(clause), where_re.findall(clause)
        if len(shapes) == 1 and len(wheres) == 1:
            out.append((colour_of(shapes[0][0]), positions[wheres[0]]))
    return out


def test_captions_are_grounded_in_pixels(samples):
    _, paths, _ = samples
    en = lambda text: _claims(text, SHAPE_EN, WHERE_EN, POS_EN, str, r"[;,.:]")  # noqa: E731
    zh = lambda text: _claims(text, SHAPE_ZH, WHERE_ZH, POS_ZH, COL_ZH.get, r"[，。；：]")  # noqa: E731
    cases = []  # (image, claims)
    art = json.loads((paths["artpedia"] / "artpedia.json").read_text("utf-8"))
    for key, entry in art.items():
        cases.append((_open(paths["artpedia"] / "images" / f"{key}.jpg"), en(" ".join(entry["visual_sentences"]))))
    cap = json.loads((paths["artcap"] / "ArtCap.json").read_text("utf-8"))
    for name, captions in cap.items():
        img = _open(paths["artcap"] / "ArtCap_Images_Dataset" / name)
        cases += [(img, en(c)) for c in captions]
    with open(paths["folder"] / "metadata.csv", encoding="utf-8", newline="") as f:
        cases += [(_open(paths["folder"] / r["file_name"]), en(r["caption"])) for r in csv.DictReader(f)]
    for images, texts in _culti(paths["culti"]).values():
        cases += [(images[i], zh(t["text"])) for t in texts for i in t["image_ids"]]
    assert all(claims for _, claims in cases)  # every caption states at least one placed shape
    checked = [(colour, _nearest_colour(img, cell)) for img, claims in cases for colour, cell in claims]
    assert len(checked) > 300
    assert [c for c in checked if c[0] != c[1]] == []


def test_no_duplicate_images(samples):
    _, paths, _ = samples
    blobs = [p.read_bytes() for p in paths["artpedia"].rglob("*.jpg")] + \
            [p.read_bytes() for p in paths["folder"].rglob("*.jpg")]
    assert len(set(blobs)) == len(blobs)
    art = json.loads((paths["artpedia"] / "artpedia.json").read_text("utf-8"))
    captions = [" ".join(e["visual_sentences"][1:]) for e in art.values()]
    assert len(set(captions)) == len(captions)


def test_deterministic(samples, tmp_path):
    dest, _, _ = samples
    make_samples(str(tmp_path / "again"), n=40, seed=3)
    first = {p.relative_to(dest): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()}
    again = {p.relative_to(tmp_path / "again"): p.read_bytes()
             for p in sorted((tmp_path / "again").rglob("*")) if p.is_file()}
    assert first.keys() == again.keys() and all(first[k] == again[k] for k in first)
    make_samples(str(tmp_path / "other"), n=40, seed=4)
    assert (tmp_path / "other" / "artpedia" / "artpedia.json").read_bytes() != first[Path("artpedia/artpedia.json")]
