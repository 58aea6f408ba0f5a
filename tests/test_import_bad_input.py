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


# --- regressions found by tests/test_fuzz_loaders.py ------------------------------------------------


def test_artpedia_lone_surrogates_big_years_and_repeated_fields_are_failures_not_crashes(tmp_path):
    """Were: UnicodeEncodeError / ArrowInvalid from the Parquet writer (losing every later row), and a
    field written twice inside an entry reported as a duplicate *artwork* id named after the field."""
    src = tmp_path / "ap"
    src.mkdir()
    entries = {"1": artpedia_entry(visual=("a \ud800 red field",)), "\udc80x": artpedia_entry(),
               "3": {**artpedia_entry(), "title": "bad \ud800 title"}, "4": {**artpedia_entry(), "year": 2**40},
               "5": artpedia_entry()}
    raw = json.dumps(entries)  # ensure_ascii: surrogates travel as \\udXXX escapes, as JSON allows
    raw = raw.replace('"5": {', '"5": {"split": "test", ', 1)  # a repeated field inside entry 5
    (src / "artpedia.json").write_text(raw)
    dest = tmp_path / "out"
    manifest = import_corpus(ImportConfig(format="artpedia", src=str(src), dest=str(dest)))
    arts = {r["artwork_id"]: r for r in corpus.read_artworks(str(dest)).to_pylist()}
    assert set(arts) == {"4", "5"} and arts["4"]["year"] is None and arts["5"]["split"] == "test"
    fails = failures_by_key(dest)
    assert fails[("reasons", "1")] == ["bad_caption", "empty_caption"] and "\\ud800" in fails["1"]["detail"]
    assert fails["\\udc80x"]["reason"] == "bad_text" and fails["3"]["reason"] == "bad_text"
    assert fails["5"]["reason"] == "duplicate_field" and "'split'" in fails["5"]["detail"]
    assert "duplicate_id" not in manifest["counts"]["failure_reasons"]


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"1": ' + b"1" * 5000 + b"}"], ids=["deep", "digits"])
def test_json_that_python_cannot_parse_is_an_import_error(tmp_path, raw):
    (tmp_path / "artpedia.json").write_bytes(raw)
    with pytest.raises(CorpusImportError, match="artpedia.json cannot be read as JSON"):
        import_corpus(ImportConfig(format="artpedia", src=str(tmp_path), dest=str(tmp_path / "o")))


def test_artcap_names_that_are_not_file_names_are_failures(tmp_path):
    """Were: ArrowInvalid (NUL in the path) and reads outside ArtCap_Images_Dataset/."""
    images = tmp_path / "ArtCap_Images_Dataset"
    images.mkdir()
    (images / "a.jpg").write_bytes(jpeg())
    (tmp_path / "outside.jpg").write_bytes(jpeg())
    names = ["a.jpg", "b\x00.jpg", "../outside.jpg", "", "sub/c.jpg"]
    (tmp_path / "ArtCap.json").write_text(json.dumps({n: ["a caption"] for n in names}))
    dest = tmp_path / "out"
    import_corpus(ImportConfig(format="artcap", src=str(tmp_path), dest=str(dest), split_ratios=(1.0, 0.0, 0.0)))
    assert corpus.read_artworks(str(dest)).column("artwork_id").to_pylist() == ["a"]
    rows = corpus.read_failures(str(dest)).to_pylist()
    assert sorted(r["row"] for r in rows) == sorted(names[1:]) and {r["reason"] for r in rows} == {"bad_file_name"}


@pytest.mark.parametrize("name, data, match", [
    ("split.csv", b"a,train\nb,val\xff\n", r"split.csv is not UTF-8 text \(line 2"),
    ("split.csv", b"a,train\n" + b"b" * 140_000 + b",val\n", r"split.csv line 2: not valid CSV"),  # over csv's limit
    ("split.json", b'{"a": "train", "a": "test"}', r"split.json key 'a': entry 'a' is listed twice"),
])
def test_split_files_that_cannot_be_read_are_errors(tmp_path, name, data, match):
    """Were: UnicodeDecodeError / csv.Error ("field larger than field limit") crashes, and a repeated id silently taking the last split."""
    (tmp_path / "ArtCap.json").write_text(json.dumps({"a.jpg": ["x"]}))
    (tmp_path / name).write_bytes(data)
    with pytest.raises(CorpusImportError, match=match):
        import_corpus(ImportConfig(format="artcap", src=str(tmp_path), dest=str(tmp_path / "o"),
                                   split_file=str(tmp_path / name)))


def test_folder_metadata_that_crashed_the_reader(tmp_path):
    """Were: TypeError/AttributeError on a JSONL line that is not an object, reads of /etc/hostname and
    ../ paths, a non-UTF-8 sidecar caption silently turned into U+FFFD, and image failures naming the
    image file with the metadata's row number."""
    src = tmp_path / "col"
    src.mkdir()
    (src / "a.jpg").write_bytes(jpeg())
    (src / "bad.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "outside.jpg").write_bytes(jpeg())
    lines = ['{"file_name": "a.jpg", "caption": "a red field"}', "3", "[1, 2]",
             '{"file_name": "/etc/hostname", "caption": "x"}', '{"file_name": "../outside.jpg", "caption": "x"}',
             '{"file_name": "bad.jpg", "caption": "x"}', '{"file_name": "a.jpg", "caption": ' + "[" * 5000 + "]}"]
    (src / "metadata.jsonl").write_text("\n".join(lines))
    dest = tmp_path / "out"
    import_corpus(ImportConfig(format="folder", src=str(src), dest=str(dest), split_ratios=(1.0, 0.0, 0.0)))
    assert corpus.read_artworks(str(dest)).column("artwork_id").to_pylist() == ["a"]
    rows = {r["row"]: r for r in corpus.read_failures(str(dest)).to_pylist()}
    assert {k: r["reason"] for k, r in rows.items()} == {"2": "bad_line", "3": "bad_line", "4": "bad_path",
                                                         "5": "bad_path", "6": "undecodable_image", "7": "bad_line"}
    assert all(r["file"].endswith("metadata.jsonl") for r in rows.values())
    assert "bad.jpg" in rows["6"]["detail"]

    side = tmp_path / "side"
    side.mkdir()
    for name in ("a", "b"):
        (side / f"{name}.jpg").write_bytes(jpeg())
    (side / "a.txt").write_text("a red field")
    (side / "b.txt").write_bytes("café".encode("latin-1"))
    import_corpus(ImportConfig(format="folder", src=str(side), dest=str(tmp_path / "o2"), split_ratios=(1.0, 0.0, 0.0)))
    assert corpus.read_artworks(str(tmp_path / "o2")).column("artwork_id").to_pylist() == ["a"]
    (fail,) = corpus.read_failures(str(tmp_path / "o2")).to_pylist()
    assert (fail["reason"], fail["row"]) == ("bad_caption", "b.jpg") and "b.txt is not UTF-8" in fail["detail"]


@pytest.mark.parametrize("name, data, match", [
    ("metadata.csv", b"file_name,caption\na.jpg," + b"x" * 140_000 + b"\n", r"metadata.csv line 2: not valid CSV"),
    ("metadata.parquet", b"PAR1 not really parquet", r"metadata.parquet cannot be read as Parquet"),
])
def test_folder_metadata_files_that_cannot_be_parsed_are_errors(tmp_path, name, data, match):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(CorpusImportError, match=match):
        import_corpus(ImportConfig(format="folder", src=str(tmp_path), dest=str(tmp_path / "o")))


def test_a_non_utf8_byte_in_metadata_csv_fails_its_row_only(tmp_path):
    """Was: one Latin-1 byte anywhere in metadata.csv refused the whole import; every other bad row
    is a failure row and the rest is imported."""
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.jpg").write_bytes(jpeg())
    (tmp_path / "metadata.csv").write_bytes(
        b"file_name,caption\na.jpg,a red field\nb.jpg,caf\xe9 au lait\nc.jpg,\"a blue\nsquare\"\n")
    dest = tmp_path / "out"
    import_corpus(ImportConfig(format="folder", src=str(tmp_path), dest=str(dest), split_ratios=(1.0, 0.0, 0.0)))
    arts = corpus.read_artworks(str(dest)).sort_by("artwork_id").to_pylist()
    assert [(a["artwork_id"], a["captions"]) for a in arts] == [("a", ["a red field"]), ("c", ["a blue square"])]
    (fail,) = corpus.read_failures(str(dest)).to_pylist()
    assert (fail["reason"], fail["row"]) == ("bad_encoding", "3") and fail["file"].endswith("metadata.csv")
    assert "column 'caption'" in fail["detail"] and "UTF-8" in fail["detail"]


def test_cnclip_rows_that_were_silently_lost_or_mixed_up(tmp_path):
    """Were: a text with no image_ids dropped without a failure row; a repeated text id whose first
    line was empty taking the *second* line's text onto the first line's images; a non-UTF-8 image
    id decoded to U+FFFD (and matched to texts); a split spelled twice (valid_ and val_) silently
    ignoring one pair of files."""
    good = base64.b64encode(png()).decode()
    (tmp_path / "train_imgs.tsv").write_bytes(f"1\t{good}\n2\t{good}\n".encode() + b"\xff\t" + good.encode() + b"\n")
    texts = [{"text_id": 10, "text": "", "image_ids": [1]}, {"text_id": 10, "text": "蓝色", "image_ids": [2]},
             {"text_id": 11, "text": "红色", "image_ids": []}, {"text_id": 12, "text": "圆形", "image_ids": [1, 2]},
             {"text_id": 13, "text": "绿色", "image_ids": ["\ufffd"]}]
    lines = [json.dumps(t, ensure_ascii=False) for t in texts]
    lines.append(json.dumps({"text_id": "\ud800", "text": "白色", "image_ids": [1]}))  # a lone-surrogate id
    (tmp_path / "train_texts.jsonl").write_text("\n".join(lines))
    dest = tmp_path / "out"
    import_corpus(ImportConfig(format="cnclip", src=str(tmp_path), dest=str(dest)))
    assert [(t["text_id"], t["artwork_ids"]) for t in corpus.read_texts(str(dest)).to_pylist()] == [("12", ["1", "2"])]
    assert corpus.read_artworks(str(dest)).column("text_ids").to_pylist() == [["12"], ["12"]]  # image 1 kept
    where = {(r["reason"], r["row"]) for r in corpus.read_failures(str(dest)).to_pylist()}
    assert {("empty_caption", "1"), ("duplicate_id", "2"), ("dangling_reference", "3"), ("bad_line", "3"),
            ("dangling_reference", "5"), ("bad_line", "6")} <= where

    (tmp_path / "valid_imgs.tsv").write_text(f"7\t{good}\n")
    (tmp_path / "val_imgs.tsv").write_text(f"8\t{good}\n")
    with pytest.raises(CorpusImportError, match="are both the val imgs file"):
        import_corpus(ImportConfig(format="cnclip", src=str(tmp_path), dest=str(tmp_path / "o2")))
