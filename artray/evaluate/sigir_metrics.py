"""Method (B)'s per-caption metric set ("sigir"): ROUGE-1/2/L, BLEU-4, METEOR, BERTScore.

The SIGIR 2025 work scores each generated caption against its reference on its own and
averages the per-caption scores. Every score here is a package's own function on the raw
texts (each package tokenizes as it does by default):

* ROUGE-1/2/L precision, recall, F1: rouge-score's ``RougeScorer(["rouge1", "rouge2",
  "rougeL"], use_stemmer=False)``; several references: ``score_multi`` (the best F1 per type).
* BLEU-4: torcheval's ``bleu_score(candidate, [references], n_gram=4)`` per caption
  (whitespace tokens, case-sensitive, no smoothing). torcheval refuses a candidate of
  fewer than 4 words; such a caption scores 0 (it has no 4-gram to match) and is counted.
* METEOR: nltk's ``meteor_score`` (alpha 0.9, beta 3, gamma 0.5, WordNet 3.0 synonyms)
  on nltk's word tokens, as Hugging Face ``evaluate``'s "meteor" calls it.
* BERTScore: bert_score (see caption_scorers.bertscore), best over the references.
"""

from __future__ import annotations

from artray.evaluate import caption_scorers as sc
from artray.evaluate import nltk_data

ROUGE_TYPES = {"rouge1": "ROUGE1", "rouge2": "ROUGE2", "rougeL": "ROUGEL"}
ROUGE_COLUMNS = tuple(f"{name}_{part}" for name in ROUGE_TYPES.values() for part in ("P", "R", "F1"))
SIGIR_COLUMNS = (*ROUGE_COLUMNS, "BLEU4", "METEOR_nltk", "BERTScore_P", "BERTScore_R", "BERTScore_F1")
SIGIR_METRICS = ("rouge", "bleu", "meteor", "bertscore")


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise sc.MetricsError(f"metric_set sigir needs the {package} package (pip install {package})") from exc


def rouge(candidates: list[str], references: list[list[str]]) -> dict[str, list[float]]:
    """rouge-score's ROUGE-1/2/L precision, recall and F1 per candidate."""
    rouge_scorer = _require("rouge_score.rouge_scorer", "rouge-score==0.1.2")
    from rouge_score.tokenizers import DefaultTokenizer

    # The tokenizer RougeScorer makes by default, passed in so that it does not log "Using default tokenizer".
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False,
                                      tokenizer=DefaultTokenizer(use_stemmer=False))
    out: dict[str, list[float]] = {c: [] for c in ROUGE_COLUMNS}
    for cand, refs in zip(candidates, references):
        scores = scorer.score_multi(refs, cand)
        for key, name in ROUGE_TYPES.items():
            s = scores[key]
            out[f"{name}_P"].append(float(s.precision))
            out[f"{name}_R"].append(float(s.recall))
            out[f"{name}_F1"].append(float(s.fmeasure))
    return out


def bleu4(candidates: list[str], references: list[list[str]]) -> tuple[list[float], int]:
    """torcheval's BLEU-4 per candidate, and how many were too short for it (scored 0)."""
    text = _require("torcheval.metrics.functional.text", "torcheval==0.0.7")
    scores, short = [], 0
    for cand, refs in zip(candidates, references):
        if len(cand.split()) < 4:
            scores.append(0.0)
            short += 1
        else:
            scores.append(float(text.bleu_score(cand, [refs], n_gram=4).item()))
    return scores, short


def meteor(candidates: list[str], references: list[list[str]]) -> tuple[list[float], dict]:
    """nltk's METEOR per candidate (best over the references) and the data it used."""
    _require("nltk", "nltk==3.10.4")
    wordnet_dir = nltk_data.ensure_wordnet()
    from nltk.translate.meteor_score import meteor_score

    punkt = nltk_data.has_punkt()
    scores = [float(meteor_score([nltk_data.word_tokens(r, punkt) for r in refs], nltk_data.word_tokens(c, punkt)))
              for c, refs in zip(candidates, references)]
    return scores, {"wordnet": wordnet_dir, "sentence_splitter": "punkt (trained, english)" if punkt else
                    "punkt untrained (nltk's punkt_tab is not installed)"}


def sigir_scores(candidates: list[str], references: list[list[str]], metrics: set[str],
                 bertscore_kwargs: dict) -> tuple[dict[str, list[float]], dict]:
    """The per-candidate scores of the requested `metrics` and notes on how they were computed."""
    per: dict[str, list[float]] = {}
    notes: dict = {}
    if "rouge" in metrics:
        per.update(rouge(candidates, references))
    if "bleu" in metrics:
        per["BLEU4"], notes["bleu4_too_short"] = bleu4(candidates, references)
    if "meteor" in metrics:
        per["METEOR_nltk"], notes["meteor"] = meteor(candidates, references)
    if "bertscore" in metrics:
        bs, notes["bertscore"] = sc.bertscore(candidates, references, **bertscore_kwargs)
        per.update(bs)
    return per, notes
