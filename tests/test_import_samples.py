"""make-sample → import for every native format: the expected counts per split, ids that
survive the round trip, both directions of CulTi's many-to-many texts, and S3 in/out."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from artray import corpus
from artray.cli import main
from artray.corpora.importer import ImportConfig, import_corpus
from artray.scaffold.sample_corpora import make_samples


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("samples")
    paths = make_samples(str(root))
    meta = json.loads((root / "samples.json").read_text())
    counts = {}
    for name, info in meta["corpora"].items():
        splits = info["splits"] or {}
        counts[name] = {
            "artworks": info["total"]["artworks"] if isinstance(info["total"], dict) else info["total"],
            "artworks_per_split": {k: v["artworks"] for k, v in sorted(splits.items())},
            "texts_per_split": {k: v["texts"] for k, v in sorted(splits.items())},
        }
    return {"paths": paths, "counts": counts}


def _import(fmt: str, src: str, dest: Path, **kw) -> dict:
    return import_corpus(ImportConfig(format=fmt, src=src, dest=str(dest), **kw))


def test_artpedia_round_trip(samples, tmp_path):
    src = Path(samples["paths"]["artpedia"])
    manifest = _import("artpedia", str(src), tmp_path / "ap")
    native = json.loads((src / "artpedia.json").read_text())
    arts = {r["artwork_id"]: r for r in corpus.read_artworks(str(tmp_path / "ap")).to_pylist()}
    assert set(arts) == set(native)
    assert manifest["counts"]["artworks_per_split"] == samples["counts"]["artpedia"]["artworks_per_split"]
    for key, entry in native.items():
        row = arts[key]
        assert row["split"] == entry["split"]
        assert row["captions"] == [" ".join(entry["visual_sentences"])]  # the source works' caption
        assert row["contextual_sentences"] == entry["contextual_sentences"]
        assert row["img_url"] == entry["img_url"] and row["year"] == entry["year"]
        assert row["image"] == (src / "images" / f"{key}.jpg").read_bytes()
    assert corpus.read_failures(str(tmp_path / "ap")).num_rows == 0


def test_artpedia_contextual_captions_are_selectable(samples, tmp_path):
    src = samples["paths"]["artpedia"]
    _import("artpedia", src, tmp_path / "ctx", caption_source="contextual")
    native = json.loads((Path(src) / "artpedia.json").read_text())
    for row in corpus.read_artworks(str(tmp_path / "ctx")).to_pylist():
        assert row["captions"] == [" ".join(native[row["artwork_id"]]["contextual_sentences"])]


def test_artcap_round_trip_with_seeded_split(samples, tmp_path):
    src = Path(samples["paths"]["artcap"])
    native = json.loads((src / "ArtCap.json").read_text())
    m1 = _import("artcap", str(src), tmp_path / "a1", split_seed=7)
    m2 = _import("artcap", str(src), tmp_path / "a2", split_seed=7)
    arts = {r["artwork_id"]: r for r in corpus.read_artworks(str(tmp_path / "a1")).to_pylist()}
    assert set(arts) == {name.rsplit(".", 1)[0] for name in native}
    assert all(len(r["captions"]) == 5 for r in arts.values())
    assert corpus.read_texts(str(tmp_path / "a1")).num_rows == 5 * len(native)
    assert m1["split"] == {"method": "seeded", "seed": 7, "ratios": [0.8, 0.1, 0.1]}
    split1 = {r["artwork_id"]: r["split"] for r in corpus.read_artworks(str(tmp_path / "a2")).to_pylist()}
    assert split1 == {k: r["split"] for k, r in arts.items()}  # deterministic
    assert m1["counts"]["artworks_per_split"] == m2["counts"]["artworks_per_split"]
    assert set(m1["counts"]["artworks_per_split"]) == {"train", "val", "test"}


def test_artcap_split_file_is_honoured(samples, tmp_path):
    src = Path(samples["paths"]["artcap"])
    names = sorted(json.loads((src / "ArtCap.json").read_text()))
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({n: ("test" if i % 2 else "train") for i, n in enumerate(names)}))
    _import("artcap", str(src), tmp_path / "a", split_file=str(split_file))
    counts = corpus.split_counts(corpus.read_artworks(str(tmp_path / "a")))
    assert counts == {"test": len(names) // 2, "train": len(names) - len(names) // 2}


def test_cnclip_round_trip_keeps_both_directions(samples, tmp_path):
    src = Path(samples["paths"]["culti"])
    manifest = _import("cnclip", str(src), tmp_path / "c")
    expected = samples["counts"]["culti"]
    assert manifest["counts"]["artworks_per_split"] == expected["artworks_per_split"]
    assert manifest["counts"]["texts_per_split"] == expected["texts_per_split"]
    native_texts, native_images = {}, {}
    for prefix in ("train", "valid", "test"):
        for line in (src / f"{prefix}_texts.jsonl").read_text(encoding="utf-8").splitlines():
            obj = json.loads(line)
            native_texts[str(obj["text_id"])] = (obj["text"], [str(i) for i in obj["image_ids"]])
        for line in (src / f"{prefix}_imgs.tsv").read_text().splitlines():
            image_id, b64 = line.split("\t")
            native_images[image_id] = base64.b64decode(b64)
    texts = {r["text_id"]: r for r in corpus.read_texts(str(tmp_path / "c")).to_pylist()}
    assert set(texts) == set(native_texts)
    assert any(len(t["artwork_ids"]) > 1 for t in texts.values())  # one text → several images
    for tid, (text, image_ids) in native_texts.items():
        assert texts[tid]["text"] == text and texts[tid]["artwork_ids"] == image_ids
    arts = {r["artwork_id"]: r for r in corpus.read_artworks(str(tmp_path / "c")).to_pylist()}
    assert set(arts) == set(native_images)
    assert any(len(a["text_ids"]) > 1 for a in arts.values())  # one image ← several texts
    for image_id, row in arts.items():
        assert row["image"] == native_images[image_id] and row["language"] == "zh"
        for tid in row["text_ids"]:
            assert image_id in native_texts[tid][1]


def test_folder_collection_round_trip(samples, tmp_path):
    src = samples["paths"]["folder"]
    manifest = _import("folder", src, tmp_path / "f")
    assert manifest["split"]["method"] == "column"
    assert manifest["counts"]["artworks_per_split"] == samples["counts"]["folder"]["artworks_per_split"]
    assert corpus.read_failures(str(tmp_path / "f")).num_rows == 0


def test_import_from_and_to_s3_via_cli(samples, s3_bucket, s3_endpoint, capsys):
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = s3_bucket.removeprefix("s3://")
    src = Path(samples["paths"]["artcap"])
    for path in src.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"raw/artcap/{path.relative_to(src)}")
    dest = f"{s3_bucket}/corpora/artcap"
    rc = main(["corpus", "import", "--format", "artcap", f"{s3_bucket}/raw/artcap", dest,
               "--s3-endpoint", s3_endpoint, "--set", "split_seed=3"])
    assert rc == 0
    assert "[import] artcap" in capsys.readouterr().out
    from artray.storage import StorageOptions

    opts = StorageOptions(endpoint_url=s3_endpoint)
    arts = corpus.read_artworks(dest, opts)
    assert arts.num_rows == samples["counts"]["artcap"]["artworks"]
    assert corpus.read_manifest(dest, opts)["config"]["split_seed"] == 3
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="corpora/artcap/")["Contents"]}
    assert "corpora/artcap/_manifest.json" in keys
    assert not any("/." in k or k.endswith(".tmp") for k in keys)  # no temp objects left behind


def test_unreachable_storage_is_a_clear_error(tmp_path, capsys):
    rc = main(["corpus", "import", "--format", "artcap", "s3://no-bucket/raw", str(tmp_path / "o"),
               "--s3-endpoint", "http://127.0.0.1:9"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "s3://no-bucket/raw" in err and "endpoint" in err


def test_cli_make_sample_import_info(tmp_path, capsys):
    assert main(["corpus", "make-sample", str(tmp_path / "s"), "--n", "12"]) == 0
    assert main(["corpus", "import", "--format", "cnclip", str(tmp_path / "s" / "culti"), str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main(["corpus", "info", str(tmp_path / "c")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["artworks"] == 12 and info["languages"] == ["zh"] and info["manifest"]["stage"] == "import"


def test_corpus_info_shows_the_caption_source_and_says_what_comes_next(tmp_path, capsys):
    """An Artpedia import without its images: info names the caption source and points at `corpus ingest`."""
    import shutil

    assert main(["corpus", "make-sample", str(tmp_path / "s"), "--n", "8"]) == 0
    shutil.rmtree(tmp_path / "s" / "artpedia" / "images")
    assert main(["corpus", "import", "--format", "artpedia", str(tmp_path / "s" / "artpedia"), str(tmp_path / "a")]) == 0
    capsys.readouterr()
    assert main(["corpus", "info", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    info = json.loads(out)
    assert info["caption_source"] == "visual" and info["with_image"] == 0
    assert "next: no artwork has image yet: `artray corpus ingest" in err
