"""Bad input to `artray corpus import`: every problem is an error or a failure row naming the
file and row, and nothing else is lost."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from artray import corpus
from artray.corpora.importer import CorpusImportError, ImportConfig, import_corpus


def jpeg(color="red", size=(32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def png(color="blue", size=(20, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def failures_by_key(dest) -> dict:
    """key → its first failure row, plus key → all its reasons under ("reasons", key)."""
    out: dict = {}
    for r in corpus.read_failures(str(dest)).to_pylist():
        out.setdefault(r["key"], r)
        out.setdefault(("reasons", r["key"]), []).append(r["reason"])
    return out


def artpedia_entry(split="train", visual=("A red field.",), url="https://upload.wikimedia.org/x.jpg"):
    return {"title": "T", "img_url": url, "year": 1600, "visual_sentences": list(visual),
            "contextual_sentences": ["Painted in Rome."], "split": split}


def test_artpedia_malformed_json_names_file_and_line_and_writes_nothing(tmp_path):
    src = tmp_path / "ap"
    src.mkdir()
    (src / "artpedia.json").write_text('{"1": {"title": "A",\n "split": "train",,}}')
    dest = tmp_path / "out"
    with pytest.raises(CorpusImportError, match=r"artpedia\.json is not valid JSON: line 2"):
        import_corpus(ImportConfig(format="artpedia", src=str(src), dest=str(dest)))
    assert not dest.exists()


def test_artpedia_bad_rows_become_failures_and_good_rows_survive(tmp_path):
    src = tmp_path / "ap"
    (src / "images").mkdir(parents=True)
    (src / "images" / "1.jpg").write_bytes(jpeg())
    (src / "images" / "5.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    raw = json.dumps({
        "1": artpedia_entry("train"),
        "2": artpedia_entry("test"),
        "3": artpedia_entry("tset"),
        "4": artpedia_entry("train", visual=("  ",)),
        "5": artpedia_entry("val"),
        "6": artpedia_entry("validation", visual=("x" * 50,)),
    })
    raw = raw[:-1] + ', "2": ' + json.dumps(artpedia_entry("train")) + "}"  # a duplicate id
    (src / "artpedia.json").write_text(raw)
    dest = tmp_path / "out"
    import_corpus(ImportConfig(format="artpedia", src=str(src), dest=str(dest), max_caption_chars=40))

    arts = {r["artwork_id"]: r for r in corpus.read_artworks(str(dest)).to_pylist()}
    assert set(arts) == {"1", "2"}
    assert arts["1"]["image"] == (src / "images" / "1.jpg").read_bytes()
    assert arts["2"]["image"] is None and arts["2"]["img_url"]  # left for `artray corpus ingest`
    assert arts["2"]["split"] == "test"  # the first of the duplicate ids was kept
    fails = failures_by_key(dest)
    assert fails["3"]["reason"] == "unknown_split" and "tset" in fails["3"]["detail"]
    assert fails["4"]["reason"] == "empty_caption"
    assert fails["5"]["reason"] == "undecodable_image" and fails["5"]["file"].endswith("5.jpg")
    assert fails[("reasons", "6")] == ["caption_too_long", "empty_caption"]
    assert fails["2"]["reason"] == "duplicate_id" and fails["2"]["file"].endswith("artpedia.json")
    manifest = corpus.read_manifest(str(dest))
    assert manifest["counts"]["artworks"] == 2 and manifest["counts"]["failed"] == 6


def test_artpedia_wrong_top_level_type_is_an_error(tmp_path):
    (tmp_path / "artpedia.json").write_text("[1, 2]")
    with pytest.raises(CorpusImportError, match="must be a JSON object keyed by artwork id"):
        import_corpus(ImportConfig(format="artpedia", src=str(tmp_path / "artpedia.json"), dest=str(tmp_path / "o")))


def test_artcap_missing_image_file_is_a_failure_naming_the_file(tmp_path):
    images = tmp_path / "ArtCap_Images_Dataset"
    images.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (images / name).write_bytes(jpeg())
    captions = {n: [f"caption {i} of {n}" for i in range(5)] for n in ("a.jpg", "b.jpg", "c.jpg", "gone.jpg")}
    (tmp_path / "ArtCap.json").write_text(json.dumps(captions))
    dest = tmp_path / "out"
    import_corpus(ImportConfig(format="artcap", src=str(tmp_path), dest=str(dest), split_ratios=(0.34, 0.33, 0.33)))
    arts = corpus.read_artworks(str(dest))
    assert sorted(arts.column("artwork_id").to_pylist()) == ["a", "b", "c"]
    assert corpus.read_texts(str(dest)).num_rows == 15
    fail = failures_by_key(dest)["gone"]
    assert fail["reason"] == "missing_image" and "gone.jpg" in fail["detail"]


def test_artcap_split_file_with_unknown_split_is_an_error(tmp_path):
    (tmp_path / "ArtCap.json").write_text(json.dumps({"a.jpg": ["x"]}))
    (tmp_path / "split.csv").write_text("file_name,split\na.jpg,holdout\n")
    with pytest.raises(CorpusImportError, match="unknown split 'holdout'"):
        import_corpus(ImportConfig(format="artcap", src=str(tmp_path), dest=str(tmp_path / "o"),
                                   split_file=str(tmp_path / "split.csv")))


def test_cnclip_broken_lines_are_failures_with_file_and_line(tmp_path):
    good = base64.b64encode(png()).decode()
    (tmp_path / "train_imgs.tsv").write_text(
        f"1\t{good}\n2\tnot-base64!!\n3\t{good}\textra\n1\t{good}\n4\t{good}\n")
    (tmp_path / "train_texts.jsonl").write_text(
        json.dumps({"text_id": 10, "text": "红色圆形", "image_ids": [1, 4]}, ensure_ascii=False) + "\n"
        + '{"text_id": 11, "text": "broken"\n'
        + json.dumps({"text_id": 12, "text": "蓝色方形", "image_ids": [99]}, ensure_ascii=False) + "\n")
    dest = tmp_path / "out"
    import_corpus(ImportConfig(format="cnclip", src=str(tmp_path), dest=str(dest)))
    arts = {r["artwork_id"]: r for r in corpus.read_artworks(str(dest)).to_pylist()}
    assert set(arts) == {"1", "4"}
    assert arts["1"]["captions"] == ["红色圆形"] and arts["1"]["language"] == "zh"
    texts = corpus.read_texts(str(dest)).to_pylist()
    assert [(t["text_id"], t["artwork_ids"]) for t in texts] == [("10", ["1", "4"])]
    rows = corpus.read_failures(str(dest)).to_pylist()
    where = {(r["reason"], r["row"]) for r in rows}
    assert ("bad_base64", "2") in where
    assert ("bad_line", "3") in where  # three tab-separated fields
    assert ("duplicate_id", "4") in where  # image id 1 again on line 4
    assert ("bad_line", "2") in where  # the broken JSON line of the texts file
    assert any(r["reason"] == "dangling_reference" and r["key"] == "12" for r in rows)
    assert all(r["file"] for r in rows)


def test_cnclip_unknown_split_file_name_is_an_error(tmp_path):
    (tmp_path / "holdout_imgs.tsv").write_text("")
    (tmp_path / "holdout_texts.jsonl").write_text("")
    with pytest.raises(CorpusImportError, match="'holdout' is not a split name"):
        import_corpus(ImportConfig(format="cnclip", src=str(tmp_path), dest=str(tmp_path / "o")))


def test_reimport_replaces_but_other_stage_output_needs_overwrite(tmp_path):
    (tmp_path / "ArtCap.json").write_text(json.dumps({"a.jpg": ["x"]}))
    (tmp_path / "ArtCap_Images_Dataset").mkdir()
    (tmp_path / "ArtCap_Images_Dataset" / "a.jpg").write_bytes(jpeg())
    dest = tmp_path / "out"
    cfg = ImportConfig(format="artcap", src=str(tmp_path), dest=str(dest), split_ratios=(1.0, 0.0, 0.0))
    import_corpus(cfg)
    import_corpus(cfg)  # idempotent: same output, no duplicates
    assert corpus.read_artworks(str(dest)).num_rows == 1
    manifest = corpus.read_manifest(str(dest))
    manifest["stage"] = "ingest"
    corpus.write_manifest(str(dest), manifest)
    with pytest.raises(CorpusImportError, match="--overwrite"):
        import_corpus(cfg)
    import_corpus(cfg.model_copy(update={"overwrite": True}))
    assert corpus.read_artworks(str(dest)).num_rows == 1


def test_split_ratios_that_do_not_sum_to_one_are_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(jpeg())
    (tmp_path / "a.txt").write_text("a red field")
    with pytest.raises(CorpusImportError, match="summing to 1"):
        import_corpus(ImportConfig(format="folder", src=str(tmp_path), dest=str(tmp_path / "o"),
                                   split_ratios=(0.5, 0.5, 0.5)))


def test_folder_sidecar_captions_import(tmp_path):
    src = tmp_path / "col"
    src.mkdir()
    for name, color in (("a", "red"), ("b", "blue"), ("c", "green")):
        (src / f"{name}.jpg").write_bytes(jpeg(color))
        (src / f"{name}.txt").write_text(f"a {color} field\n")
    (src / "d.jpg").write_bytes(jpeg())  # no caption beside it
    dest = tmp_path / "out"
    manifest = import_corpus(ImportConfig(format="folder", src=str(src), dest=str(dest)))
    assert manifest["split"]["method"] == "seeded"
    arts = {r["artwork_id"]: r["captions"] for r in corpus.read_artworks(str(dest)).to_pylist()}
    assert arts == {"a": ["a red field"], "b": ["a blue field"], "c": ["a green field"]}
    assert failures_by_key(dest)["d"]["reason"] == "empty_caption"
