"""Caption-similarity scorers: pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE) and bert_score.

Every score is the library's own, on the same inputs: artray only prepares them. English
text goes through pycocoevalcap's PTB tokenizer (Stanford's, lower-cased, punctuation
removed), exactly as COCO's evaluation does. Chinese and Japanese have no spaces, so
n-gram metrics need tokens first: one token per character (default; robust, no
dictionary) or jieba's word segmentation. Latin words and numbers inside them stay
whole. METEOR, SPICE and the PTB tokenizer run Java (``java`` on the PATH).

SPICE needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads from Stanford at first
use and its wheel does not ship. `spice_status` finds it (or copies it in from a folder
the user names) and otherwise says why SPICE is unavailable; the other metrics still run.
"""

from __future__ import annotations

from artray.errors import UserError

import re
import shutil
import unicodedata
from pathlib import Path

COCO_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
# BERTScore defaults: the source works' English model (bert_score uses its layer 5), bert_score's own picks otherwise.
BERTSCORE_MODELS = {"en": "distilbert-base-uncased", "zh": "bert-base-chinese"}
BERTSCORE_FALLBACK = "bert-base-multilingual-cased"
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CHAR_TOKEN = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+")


class MetricsError(UserError, RuntimeError):
    """A metric cannot run; the message says what to install or change."""


def base_language(language: str | None) -> str:
    return (language or "en").lower().replace("_", "-").split("-")[0]


def guess_language(texts: list[str]) -> str:
    """'zh' when most letters are CJK characters (two caption outputs carry no language), else 'en'."""
    letters = [ch for t in texts for ch in t if ch.isalpha()]
    cjk = sum(1 for ch in letters if re.match(f"[{_CJK}]", ch))
    return "zh" if letters and cjk / len(letters) > 0.5 else "en"


def choose_tokenizer(name: str, language: str | None) -> str:
    """'auto' → 'char' for Chinese/Japanese, else 'ptb'."""
    if name != "auto":
        return name
    return "char" if base_language(language) in ("zh", "ja") else "ptb"


def char_tokens(text: str) -> list[str]:
    """One token per CJK character, Latin words and numbers whole, lower-cased; punctuation dropped."""
    return _CHAR_TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def jieba_tokens(text: str) -> list[str]:
    try:
        import jieba
    except ImportError as exc:
        raise MetricsError("tokenizer: jieba needs the jieba package (pip install jieba==0.42.1), "
                           "or use tokenizer: char") from exc
    jieba.setLogLevel(60)
    words = jieba.lcut(unicodedata.normalize("NFKC", text).lower())
    return [w for w in (w.strip() for w in words) if w and any(ch.isalnum() for ch in w)]


def tokenize(texts: dict[str, list[str]], tokenizer: str) -> dict[str, list[str]]:
    """key → space-joined token strings, the form pycocoevalcap's scorers take."""
    if tokenizer == "ptb":
        return _ptb(texts)
    fn = {"char": char_tokens, "jieba": jieba_tokens}.get(tokenizer)
    if fn is None:
        raise MetricsError(f"unknown tokenizer {tokenizer!r}: use auto, ptb, char or jieba")
    return {k: [" ".join(fn(t)) for t in v] for k, v in texts.items()}


def _ptb(texts: dict[str, list[str]]) -> dict[str, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    require_java("the PTB tokenizer (English)")
    # One caption per line goes to Java: whitespace (newlines included) is normalised first,
    # and empty captions stay out so that no line can go missing.
    flat = {k: [" ".join(t.split()) for t in v] for k, v in texts.items()}
    todo = {k: [{"caption": t} for t in v if t] for k, v in flat.items()}
    done = PTBTokenizer().tokenize({k: v for k, v in todo.items() if v})
    out = {}
    for k, v in flat.items():
        tokens = iter(done.get(k, []))
        out[k] = [next(tokens) if t else "" for t in v]
    return out


def require_java(what: str) -> None:
    if shutil.which("java") is None:
        raise MetricsError(f"{what} runs Java, and no `java` is on the PATH: install a JRE "
                           "(apt-get install default-jre-headless), or leave out meteor/spice and use tokenizer: char")


class CocoScorer:
    """pycocoevalcap's BLEU/METEOR/ROUGE-L/CIDEr for several evaluations (splits) in a row.

    METEOR's Java process (seconds to start: it loads paraphrase tables) starts once and is
    reused; use as a context manager so that it stops at the end.
    """

    def __init__(self, metrics: set[str]):
        self.metrics = metrics
        self._meteor = None

    def __enter__(self) -> "CocoScorer":
        return self

    def __exit__(self, *exc) -> None:
        self._meteor = None  # its last reference: pycocoevalcap's __del__ ends the Java process

    def score(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[dict, dict]:
        """Corpus scores and per-key scores for tokenized references `gts` and candidates `res`."""
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        keys = list(gts)
        res = {k: res[k] for k in keys}
        summary: dict[str, float] = {}
        per: dict[str, list[float]] = {}
        if "bleu" in self.metrics:
            score, scores = Bleu(4).compute_score(gts, res, verbose=0)
            for n in range(4):
                summary[f"Bleu_{n + 1}"], per[f"Bleu_{n + 1}"] = float(score[n]), [float(x) for x in scores[n]]
        if "meteor" in self.metrics:
            score, scores = self._meteor_scorer().compute_score(gts, res)
            summary["METEOR"], per["METEOR"] = float(score), [float(x) for x in scores]
        for name, scorer, wanted in (("ROUGE_L", Rouge(), "rouge"), ("CIDEr", Cider(), "cider")):
            if wanted in self.metrics:
                score, scores = scorer.compute_score(gts, res)
                summary[name], per[name] = float(score), [float(x) for x in scores]
        return summary, {k: {m: v[i] for m, v in per.items()} for i, k in enumerate(keys)}

    def _meteor_scorer(self):
        if self._meteor is None:
            from pycocoevalcap.meteor.meteor import Meteor

            require_java("METEOR")
            self._meteor = Meteor()
        return self._meteor


def spice_status(language: str | None, corenlp_dir: str | None = None, download: bool = False) -> tuple[bool, str]:
    """(available, why not / where from). Copies CoreNLP 3.6.0 in from `corenlp_dir`, or downloads it if allowed."""
    if base_language(language) != "en":
        return False, f"SPICE parses English scene graphs only; not computed for language {language!r}"
    if shutil.which("java") is None:
        return False, "SPICE runs Java and no `java` is on the PATH (apt-get install default-jre-headless)"
    import pycocoevalcap.spice as spice_pkg

    lib = Path(spice_pkg.__file__).parent / "lib"
    if all((lib / j).exists() for j in CORENLP_JARS):
        return True, f"Stanford CoreNLP 3.6.0 found in {lib}"
    if corenlp_dir:
        src = Path(corenlp_dir).expanduser()
        missing = [j for j in CORENLP_JARS if not (src / j).exists()]
        if missing:
            return False, f"spice_corenlp_dir {src} lacks {missing}: give the folder of stanford-corenlp-full-2015-12-09"
        try:
            for j in CORENLP_JARS:
                shutil.copyfile(src / j, lib / j)
        except OSError as exc:
            return False, f"could not copy CoreNLP jars into {lib} ({exc}); copy them there by hand"
        return True, f"Stanford CoreNLP 3.6.0 copied from {src} into {lib}"
    hint = (f"SPICE needs Stanford CoreNLP 3.6.0 ({' and '.join(CORENLP_JARS)}) in {lib}, which the pycocoevalcap "
            "wheel does not ship. Set spice_corenlp_dir to a folder holding both jars (from "
            "stanford-corenlp-full-2015-12-09.zip), or spice_download: true where nlp.stanford.edu is reachable")
    if not download:
        return False, hint
    try:
        from pycocoevalcap.spice.get_stanford_models import get_stanford_models

        get_stanford_models()
    except Exception as exc:  # network errors, a bad zip, a read-only site-packages
        return False, f"downloading CoreNLP failed ({type(exc).__name__}: {exc}). {hint}"
    return True, "Stanford CoreNLP 3.6.0 downloaded by pycocoevalcap"


def spice_scores(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, dict[str, float]]:
    """pycocoevalcap's SPICE F-score: corpus mean and per key (call only when spice_status says available)."""
    from pycocoevalcap.spice.spice import Spice

    keys = list(gts)
    score, scores = Spice().compute_score(gts, {k: res[k] for k in keys})
    return float(score), {k: float(s["All"]["f"]) for k, s in zip(sorted(keys), scores)}


def bertscore(candidates: list[str], references: list[list[str]], model: str, num_layers: int | None = None,
              idf: bool = False, rescale: bool = False, language: str | None = None, batch_size: int = 64,
              device: str | None = None, storage_options=None) -> tuple[dict[str, list[float]], dict]:
    """bert_score's P/R/F1 per candidate (best over its references) and the settings used."""
    try:
        from bert_score import score
        from bert_score.utils import model2layers
    except ImportError as exc:
        raise MetricsError("BERTScore needs the bert-score package (pip install bert-score==0.3.13)") from exc
    from transformers import AutoConfig

    from artray.models.resolve import resolve_model_path
    from artray.models.weights import check_folder

    path = resolve_model_path(model, storage_options)
    check_folder(path)  # bert_score calls from_pretrained itself: refuse a pickle-only folder here
    if num_layers is None:
        num_layers = model2layers.get(model) or AutoConfig.from_pretrained(path).num_hidden_layers
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        p, r, f = score(candidates, references, model_type=path, num_layers=num_layers, idf=idf, batch_size=batch_size,
                        device=device, lang=base_language(language), rescale_with_baseline=rescale, verbose=False)
    except (OSError, ValueError, KeyError) as exc:
        raise MetricsError(f"BERTScore with {model!r} failed ({type(exc).__name__}: {exc}); set bertscore_model to a "
                           "local folder or reachable hub id (rescale needs a model bert_score has baselines for)") from exc
    info = {"model": model, "num_layers": num_layers, "idf": idf, "rescaled": rescale, "device": device}
    return {"BERTScore_P": p.tolist(), "BERTScore_R": r.tolist(), "BERTScore_F1": f.tolist()}, info
