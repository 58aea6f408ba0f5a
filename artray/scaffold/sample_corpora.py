"""Small sample corpora in the real native formats: Artpedia, ArtCap, CulTi (Chinese-CLIP
TSV/JSONL) and a museum folder with `metadata.csv`.

Every image is a drawn scene whose captions state exactly what is in it (see
`sample_scenes`), so fine-tuning even a tiny model on them measurably improves retrieval.
`make_samples` also writes `samples.json` with the artworks and texts per split of each
corpus, for checking importers against.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import random
from pathlib import Path

from artray.scaffold.sample_scenes import (
    SceneSampler,
    caption_en,
    caption_zh,
    captions_en,
    render,
    title_en,
    visual_sentences_en,
)
from artray.schema import SPLITS

CNCLIP_PREFIX = {"train": "train", "val": "valid", "test": "test"}  # Chinese-CLIP's file prefixes
IMAGE_SIZE = 120
SAMPLES_JSON = "samples.json"

_FIRST = ("Anna", "Jakob", "Marta", "Luca", "Ilse", "Pieter", "Sofia", "Henri", "Elena", "Tomas", "Greta", "Otto")
_LAST = ("Verhoeven", "Lindqvist", "Moretti", "Kowalski", "Albers", "Duval", "Hartmann", "Sorensen", "Novak")
_CITIES = ("Amsterdam", "Paris", "Milan", "Basel", "Weimar", "Zurich", "Vienna", "Prague", "Antwerp")
_MOVEMENTS = ("De Stijl", "Bauhaus", "Concrete art", "Constructivist", "Op art", "Zero")
_MUSEUMS = ("the Northern Museum of Modern Art", "the Municipal Gallery of Arnhem", "the Kessler Foundation",
            "a private collection in Basel", "the National Gallery of Modern Art in Turin")
_MEDIA = ("Oil on canvas", "Gouache on paper", "Tempera on panel", "Acrylic on board", "Silkscreen on paper")


def split_sizes(n: int) -> dict[str, int]:
    """About 70/15/15, every split non-empty."""
    if n < 3:
        raise ValueError(f"need n >= 3 to fill train/val/test, got {n}")
    held = max(1, round(0.15 * n))
    return {"train": n - 2 * held, "val": held, "test": held}


def _split_list(n: int, rng: random.Random) -> list[str]:
    out = [s for s, k in split_sizes(n).items() for _ in range(k)]
    rng.shuffle(out)
    return out


def _encode(img, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=90)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def _counts(artworks: dict[str, int], texts: dict[str, int], **extra) -> dict:
    return {"splits": {s: {"artworks": artworks[s], "texts": texts[s]} for s in SPLITS},
            "total": {"artworks": sum(artworks.values()), "texts": sum(texts.values())}, **extra}


def _context(rng: random.Random, year: int) -> list[str]:
    """Artpedia-style contextual sentences: history, never the picture."""
    artist = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    pool = [f"{artist} painted the work in {year} while living in {rng.choice(_CITIES)}.",
            f"The painting is associated with the {rng.choice(_MOVEMENTS)} movement.",
            f"It entered {rng.choice(_MUSEUMS)} in {year + rng.randint(3, 40)}.",
            f"It was first exhibited in {rng.choice(_CITIES)} in {year + 1}."]
    return [pool[0]] + rng.sample(pool[1:], rng.randint(1, 2))


def _write_artpedia(root: Path, n: int, rng: random.Random, scenes: SceneSampler, seed: int) -> dict:
    (root / "images").mkdir(parents=True, exist_ok=True)
    data, per_split = {}, dict.fromkeys(SPLITS, 0)
    for i, split in enumerate(_split_list(n, rng)):
        scene, key, year = scenes.draw(), str(i), rng.randint(1905, 1985)
        fname = f"Artray_sample_{key}.jpg"
        md5 = hashlib.md5(fname.encode()).hexdigest()
        data[key] = {"title": title_en(scene, rng),
                     "img_url": f"https://upload.wikimedia.org/wikipedia/commons/{md5[0]}/{md5[:2]}/{fname}",
                     "year": year, "visual_sentences": visual_sentences_en(scene, rng),
                     "contextual_sentences": _context(rng, year), "split": split}
        img = render(scene, IMAGE_SIZE, "canvas", [seed, 0, i])
        (root / "images" / f"{key}.jpg").write_bytes(_encode(img, "JPEG"))
        per_split[split] += 1
    (root / "artpedia.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return _counts(per_split, per_split, format="artpedia", language="en", texts_per_artwork=1)


def _write_artcap(root: Path, n: int, rng: random.Random, scenes: SceneSampler, seed: int) -> dict:
    (root / "ArtCap_Images_Dataset").mkdir(parents=True, exist_ok=True)
    data = {}
    for i in range(n):
        scene, fname = scenes.draw(), f"artcap_{i:04d}.jpg"
        data[fname] = captions_en(scene, rng, 5)
        img = render(scene, IMAGE_SIZE, "canvas", [seed, 1, i])
        (root / "ArtCap_Images_Dataset" / fname).write_bytes(_encode(img, "JPEG"))
    (root / "ArtCap.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return {"splits": None, "total": {"artworks": n, "texts": 5 * n}, "format": "artcap", "language": "en",
            "texts_per_artwork": 5}


def _write_culti(root: Path, n: int, rng: random.Random, scenes: SceneSampler, seed: int) -> dict:
    """Per split: a few 'twin' images (one scene drawn as textile and as mural) sharing one
    text, a few images with two texts, the rest one image - one text."""
    root.mkdir(parents=True, exist_ok=True)
    image_id, text_id = 1000, 0
    images, texts = dict.fromkeys(SPLITS, 0), dict.fromkeys(SPLITS, 0)
    twins = doubles = 0
    for split, k in split_sizes(n).items():
        n_twin = (2 if split == "train" else 1) if k >= 4 else 0
        n_double = min(3 if split == "train" else 1, k - 2 * n_twin)
        units = ["twin"] * n_twin + ["double"] * n_double + ["single"] * (k - 2 * n_twin - n_double)
        rng.shuffle(units)
        tsv, jsonl = [], []
        for unit in units:
            scene = scenes.draw()
            textures = ["textile", "mural"] if unit == "twin" else [rng.choice(("textile", "mural"))]
            ids = []
            for texture in textures:
                image_id += 1
                png = _encode(render(scene, IMAGE_SIZE, texture, [seed, 2, image_id]), "PNG")
                tsv.append(f"{image_id}\t{base64.b64encode(png).decode('ascii')}\n")
                ids.append(image_id)
            first = rng.randrange(3)
            for j in range(2 if unit == "double" else 1):
                text_id += 1
                text = caption_zh(scene, rng, textures[j % len(textures)], first + j)
                record = {"text_id": text_id, "text": text, "image_ids": ids}
                jsonl.append(json.dumps(record, ensure_ascii=False) + "\n")
        twins, doubles = twins + n_twin, doubles + n_double
        images[split], texts[split] = len(tsv), len(jsonl)
        prefix = CNCLIP_PREFIX[split]
        (root / f"{prefix}_imgs.tsv").write_text("".join(tsv), encoding="utf-8")
        (root / f"{prefix}_texts.jsonl").write_text("".join(jsonl), encoding="utf-8")
    return _counts(images, texts, format="cnclip", language="zh", split_files=CNCLIP_PREFIX,
                   texts_with_two_images=twins, images_with_two_texts=doubles)


def _write_folder(root: Path, n: int, rng: random.Random, scenes: SceneSampler, seed: int) -> dict:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows, per_split = [], dict.fromkeys(SPLITS, 0)
    for i, split in enumerate(_split_list(n, rng)):
        scene, name = scenes.draw(), f"images/am_{i + 1:04d}.jpg"
        caption = f"{caption_en(scene, rng)} {rng.choice(_MEDIA)}, {rng.randint(1910, 1990)}."
        rows.append((name, caption, split))
        (root / name).write_bytes(_encode(render(scene, IMAGE_SIZE, "canvas", [seed, 3, i]), "JPEG"))
        per_split[split] += 1
    with open(root / "metadata.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("file_name", "caption", "split"))
        writer.writerows(rows)
    return _counts(per_split, per_split, format="folder", language="en", texts_per_artwork=1)


WRITERS = {"artpedia": _write_artpedia, "artcap": _write_artcap, "culti": _write_culti, "folder": _write_folder}


def make_samples(dest_dir: str, n: int = 50, seed: int = 0) -> dict[str, str]:
    """Write the four sample corpora (about `n` artworks each) under `dest_dir`, plus
    `samples.json` with their counts; same bytes for the same `n` and `seed`.
    Returns {corpus name: its folder}."""
    split_sizes(n)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    scenes = SceneSampler(random.Random(f"artray-samples:{seed}"))  # no scene repeats across corpora
    corpora = {}
    for name, write in WRITERS.items():
        corpora[name] = {"path": name, **write(dest / name, n, random.Random(f"{seed}:{name}"), scenes, seed)}
    meta = {"seed": seed, "n": n, "image_size": IMAGE_SIZE, "corpora": corpora}
    (dest / SAMPLES_JSON).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {name: str(dest / name) for name in WRITERS}
