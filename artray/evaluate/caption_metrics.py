"""`artray evaluate captions`: how close one caption source is to another, per artwork and per split.

A *source* is a URI holding either a corpus (its human captions: every caption of an
artwork is a reference, so ArtCap's five stay five references of one row) or the output
of `artray caption` (one text per artwork for a chosen captioner and preset). Two metric
sets: ``coco`` (default) scores candidates against references with BLEU-1..4, METEOR,
ROUGE-L, CIDEr and SPICE as pycocoevalcap computes them and BERTScore as bert_score
computes it; each split is its own evaluation corpus (CIDEr's document frequencies come
from that split's references). ``sigir`` is method (B)'s per-caption set (ROUGE-1/2/L
P/R/F1 by rouge-score, BLEU-4 by torcheval, METEOR by nltk, BERTScore; see
sigir_metrics), whose split scores are the means of the per-caption scores.
Output at `output`: ``per_caption.parquet`` and ``per_caption.tsv`` (one row per
artwork), ``summary.json`` (scores per split, tokenizer, language, what was skipped and
why) and ``_manifest.json`` last. The job runs in one process (Java scorers, one
BERTScore model); it needs no Ray cluster.
"""

from __future__ import annotations

import csv
import io
import time
from collections import Counter
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from artray import corpus, storage
from artray.config import JobConfig, SplitList
from artray.evaluate import caption_scorers as sc
from artray.evaluate import sigir_metrics as sg
from artray.manifest import build_manifest
from artray.schema import SPLITS

STAGE = "evaluate-captions"
METRICS = ("bleu", "meteor", "rouge", "cider", "spice", "bertscore")
SCORE_COLUMNS = (*sc.COCO_METRICS, "SPICE", "BERTScore_P", "BERTScore_R", "BERTScore_F1")
# Score columns and the metrics each set can compute, per metric set.
SET_COLUMNS = {"coco": SCORE_COLUMNS, "sigir": sg.SIGIR_COLUMNS}
SET_METRICS = {"coco": METRICS, "sigir": sg.SIGIR_METRICS}


def per_caption_schema(metric_set: str = "coco") -> pa.Schema:
    """The per-caption table: the pair, the candidate's flags, then the set's score columns."""
    return pa.schema(
        [pa.field("artwork_id", pa.string()), pa.field("split", pa.string()), pa.field("candidate", pa.string()),
         pa.field("references", pa.list_(pa.string())), pa.field("candidate_flags", pa.list_(pa.string()))]
        + [pa.field(c, pa.float64()) for c in SET_COLUMNS[metric_set]])


PER_CAPTION_SCHEMA = per_caption_schema("coco")


class CaptionMetricsConfig(JobConfig):
    """Scores one caption source against another, per artwork and per split (`artray evaluate captions`)."""

    candidates: str = Field(description="URI of the captions to score: an `artray caption` output or a corpus")
    references: str = Field(description="URI of the reference captions: a corpus (human captions) or a caption output")
    output: str = Field(description="where per_caption.parquet/.tsv and summary.json go")
    candidates_captioner: str | None = Field(None, description="caption output: which captioner (needed if several)")
    candidates_preset: str = Field("caption", description="caption output: which preset")
    references_captioner: str | None = Field(None, description="caption output as references: which captioner "
                                                                "(needed if several)")
    references_preset: str = Field("caption", description="caption output as references: which preset")
    splits: SplitList = Field(None, description="only these splits (default: every split present)")
    metric_set: Literal["coco", "sigir"] = Field(
        "coco", description="coco: pycocoevalcap's corpus-level BLEU/METEOR/ROUGE-L/CIDEr/SPICE + BERTScore; sigir: "
        "method (B)'s per-caption ROUGE-1/2/L P/R/F1 (rouge-score), BLEU-4 (torcheval), METEOR (nltk), BERTScore")
    metrics: list[Literal["bleu", "meteor", "rouge", "cider", "spice", "bertscore"]] | None = Field(
        None, description="default: every metric of the metric set (sigir has no cider/spice)")
    language: str | None = Field(None, description="default: the corpus's language, else guessed (zh if mostly CJK, else en)")
    tokenizer: Literal["auto", "ptb", "char", "jieba"] = Field(
        "auto", description="auto: char for zh/ja, PTB (COCO's) otherwise")
    exclude_flags: list[str] = Field(default_factory=list, description="leave out candidates with these flags "
                                     "(default: none; a captioner is scored on everything it wrote)")
    spice_corenlp_dir: str | None = Field(None, description="folder with the Stanford CoreNLP 3.6.0 jars SPICE needs")
    spice_download: bool = Field(False, description="let pycocoevalcap download CoreNLP from nlp.stanford.edu")
    bertscore_model: str | None = Field(None, description="default: distilbert-base-uncased (en), bert-base-chinese (zh)")
    bertscore_num_layers: int | None = Field(None, ge=1, description="default: bert_score's choice, else all layers")
    bertscore_idf: bool = Field(False, description="weight tokens by IDF over the references (bert_score's idf)")
    bertscore_rescale: bool = Field(False, description="rescale with bert_score's baseline (known hub models only)")
    bertscore_batch_size: int = Field(64, ge=1, description="caption pairs per BERTScore forward pass")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="for BERTScore")


def _read_source(uri: str, captioner: str | None, preset: str, role: str, opts) -> tuple[dict, dict]:
    """(artwork_id → {split, texts, flags}, description) of one source."""
    manifest = corpus.read_manifest(uri, opts)
    if manifest is None:
        raise sc.MetricsError(f"{role} {uri} has no _manifest.json: not a finished corpus or caption output")
    if manifest.get("stage") != "caption":
        table = corpus.read_artworks(uri, opts, columns=["artwork_id", "split", "captions", "language"])
        langs = Counter(table["language"].to_pylist())
        rows = {r["artwork_id"]: {"split": r["split"], "texts": r["captions"], "flags": []} for r in table.to_pylist()}
        return rows, {"uri": uri, "kind": "corpus", "language": langs.most_common(1)[0][0] if langs else None}
    from artray.outputs import read_captions

    table = read_captions(uri, opts, exclude_flags=())
    names = sorted(set(table["captioner"].to_pylist()))
    if captioner is None and len(names) > 1:
        raise sc.MetricsError(f"{role} {uri} holds captioners {names}: set {role}_captioner to one of them")
    captioner = captioner or (names[0] if names else None)
    table = table.filter(pc.and_(pc.equal(table["captioner"], captioner or ""), pc.equal(table["preset"], preset)))
    if table.num_rows == 0:
        raise sc.MetricsError(f"{role} {uri} has no captions of captioner {captioner!r} with preset {preset!r} "
                              f"(captioners: {names})")
    rows = {r["artwork_id"]: {"split": r["split"], "texts": [r["text"]], "flags": r["flags"]} for r in table.to_pylist()}
    return rows, {"uri": uri, "kind": "captions", "captioner": captioner, "preset": preset, "language": None}


def _pairs(cfg: CaptionMetricsConfig, cands: dict, refs: dict) -> tuple[list[dict], Counter]:
    """One row per artwork in both sources (split from the references); what was left out and why."""
    skipped, rows = Counter(), []
    excluded = set(cfg.exclude_flags)
    skipped["no_candidate"] = len(set(refs) - set(cands))
    for aid in sorted(cands):
        cand, ref = cands[aid], refs.get(aid)
        texts = [t for t in (ref or {}).get("texts", []) if t and t.strip()]
        reason = ("no_reference" if ref is None else "empty_references" if not texts
                  else "excluded_flags" if excluded & set(cand["flags"])
                  else "other_split" if cfg.splits and ref["split"] not in cfg.splits else None)
        if reason:
            skipped[reason] += 1
            continue
        rows.append({"artwork_id": aid, "split": ref["split"], "candidate": cand["texts"][0], "references": texts,
                     "candidate_flags": list(cand["flags"])})
    return rows, +skipped


def _score_split(cfg: CaptionMetricsConfig, rows: list[dict], cand_tok: dict, ref_tok: dict, coco: sc.CocoScorer,
                 spice_ok: bool, language: str | None) -> tuple[dict, dict | None]:
    """Fill the score columns of `rows` (one split); return its summary and BERTScore settings."""
    keys = [r["artwork_id"] for r in rows]
    summary, per = {}, {k: {} for k in keys}
    if ref_tok:
        gts, res = {k: ref_tok[k] for k in keys}, {k: cand_tok[k] for k in keys}
        summary, per = coco.score(gts, res)
    if spice_ok:
        summary["SPICE"], spice = sc.spice_scores(gts, res)
        for k in keys:
            per[k]["SPICE"] = spice[k]
    info = None
    if "bertscore" in _metrics(cfg):
        bs, info = sc.bertscore([r["candidate"] for r in rows], [r["references"] for r in rows],
                                **_bertscore_kwargs(cfg, language))
        for name, values in bs.items():
            summary[name] = sum(values) / len(values)
            for k, v in zip(keys, values):
                per[k][name] = v
    for r in rows:
        r.update({c: per[r["artwork_id"]].get(c) for c in SCORE_COLUMNS})
    return {"n": len(rows), **{c: summary[c] for c in SCORE_COLUMNS if c in summary}}, info


def _metrics(cfg: CaptionMetricsConfig) -> set[str]:
    """The metrics to compute: those asked for, or every one of the metric set."""
    metrics = set(cfg.metrics if cfg.metrics is not None else SET_METRICS[cfg.metric_set])
    foreign = sorted(metrics - set(SET_METRICS[cfg.metric_set]))
    if foreign:
        raise sc.MetricsError(f"metrics {foreign} are not in metric_set {cfg.metric_set!r}: set metrics to some of "
                              f"{list(SET_METRICS[cfg.metric_set])} (or leave it out for all), or use metric_set coco "
                              "for them")
    return metrics


def _bertscore_kwargs(cfg: CaptionMetricsConfig, language: str | None) -> dict:
    model = cfg.bertscore_model or sc.BERTSCORE_MODELS.get(sc.base_language(language), sc.BERTSCORE_FALLBACK)
    return {"model": model, "num_layers": cfg.bertscore_num_layers, "idf": cfg.bertscore_idf,
            "rescale": cfg.bertscore_rescale, "language": language, "batch_size": cfg.bertscore_batch_size,
            "device": None if cfg.device == "auto" else cfg.device, "storage_options": cfg.storage_options()}


def _score_split_sigir(cfg: CaptionMetricsConfig, rows: list[dict], language: str) -> tuple[dict, dict]:
    """Fill the sigir score columns of `rows` (one split); return its summary (means) and the scorers' notes."""
    per, notes = sg.sigir_scores([r["candidate"] for r in rows], [r["references"] for r in rows], _metrics(cfg),
                                 _bertscore_kwargs(cfg, language))
    for i, r in enumerate(rows):
        r.update({c: per[c][i] if c in per else None for c in sg.SIGIR_COLUMNS})
    return {"n": len(rows), **{c: sum(per[c]) / len(per[c]) for c in sg.SIGIR_COLUMNS if c in per}}, notes


def _cell(column: str, value):
    if value is None:
        return ""
    if isinstance(value, list):
        return (" ||| " if column == "references" else ",").join(value)
    return value


def _tsv(table: pa.Table) -> bytes:
    """The per-caption table as TSV: references joined with ' ||| ', flags with ','; fields quoted as needed."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(table.column_names)
    writer.writerows([_cell(c, v) for c, v in r.items()] for r in table.to_pylist())
    return buf.getvalue().encode("utf-8")


def run_caption_metrics(cfg: CaptionMetricsConfig) -> dict:
    """Score `cfg.candidates` against `cfg.references` per split; write the outputs; return the summary."""
    started, opts = time.time(), cfg.storage_options()
    metrics = _metrics(cfg)
    storage.delete(storage.join(cfg.output, corpus.MANIFEST), opts)  # unfinished until written again, last
    cands, cand_desc = _read_source(cfg.candidates, cfg.candidates_captioner, cfg.candidates_preset, "candidates", opts)
    refs, ref_desc = _read_source(cfg.references, cfg.references_captioner, cfg.references_preset, "references", opts)
    rows, skipped = _pairs(cfg, cands, refs)
    language = cfg.language or ref_desc["language"] or cand_desc["language"] or sc.guess_language(
        [t for r in rows for t in r["references"]])
    if not rows:
        raise sc.MetricsError(f"no artwork has both a candidate and a reference (left out: {dict(skipped)}); "
                              "check the URIs, captioner, preset and splits")
    if cfg.metric_set == "sigir":
        return _run_sigir(cfg, rows, skipped, cand_desc, ref_desc, language, started)
    tokenizer = sc.choose_tokenizer(cfg.tokenizer, language)
    spice_ok, spice_note = (sc.spice_status(language, cfg.spice_corenlp_dir, cfg.spice_download) if "spice" in metrics
                            else (False, "not requested"))
    ref_tok = cand_tok = {}
    if metrics - {"bertscore"}:  # BERTScore reads raw text with its own tokenizer
        ref_tok = sc.tokenize({r["artwork_id"]: r["references"] for r in rows}, tokenizer)
        cand_tok = sc.tokenize({r["artwork_id"]: [r["candidate"]] for r in rows}, tokenizer)
    per_split, bert_info = {}, None
    with sc.CocoScorer(metrics) as coco:
        for split in [s for s in SPLITS if any(r["split"] == s for r in rows)]:
            part = [r for r in rows if r["split"] == split]
            per_split[split], bert_info = _score_split(cfg, part, cand_tok, ref_tok, coco, spice_ok, language)
    rows = sorted(rows, key=lambda r: (SPLITS.index(r["split"]), r["artwork_id"]))
    summary = {
        "candidates": cand_desc, "references": ref_desc, "language": language, "tokenizer": tokenizer,
        "tokenizer_note": {"ptb": "pycocoevalcap PTBTokenizer (Stanford, lower-cased, punctuation removed)",
                           "char": "one token per CJK character; Latin words and numbers whole; punctuation removed",
                           "jieba": "jieba word segmentation; punctuation removed"}[tokenizer],
        "metric_set": "coco", "metrics": sorted(metrics), "splits": per_split, "artworks_scored": len(rows),
        "left_out": dict(skipped),
        "spice": {"available": spice_ok, "note": spice_note}, "bertscore": bert_info,
        "candidate_flags": dict(Counter(f for r in rows for f in r["candidate_flags"])),
    }
    return _write(cfg, rows, skipped, summary, started)


def _run_sigir(cfg: CaptionMetricsConfig, rows: list[dict], skipped: Counter, cand_desc: dict, ref_desc: dict,
               language: str, started: float) -> dict:
    """Method (B)'s per-caption set: each package tokenizes the raw texts itself; split scores are means."""
    if sc.base_language(language) != "en":
        raise sc.MetricsError(f"metric_set sigir is English-only (rouge-score keeps only a-z0-9, METEOR uses the "
                              f"English WordNet), and the language is {language!r}: use metric_set coco")
    per_split, notes, too_short = {}, {}, 0
    for split in [s for s in SPLITS if any(r["split"] == s for r in rows)]:
        per_split[split], notes = _score_split_sigir(cfg, [r for r in rows if r["split"] == split], language)
        too_short += notes.get("bleu4_too_short", 0)
    rows = sorted(rows, key=lambda r: (SPLITS.index(r["split"]), r["artwork_id"]))
    summary = {
        "candidates": cand_desc, "references": ref_desc, "language": language, "tokenizer": "per package",
        "tokenizer_note": "raw texts; rouge-score: lower-cased a-z0-9 words; torcheval BLEU: whitespace split, "
                          "case-sensitive; METEOR: nltk word_tokenize, lower-cased; BERTScore: the model's tokenizer",
        "metric_set": "sigir", "metrics": sorted(_metrics(cfg)), "splits": per_split, "artworks_scored": len(rows),
        "left_out": dict(skipped), "bertscore": notes.get("bertscore"),
        "meteor": notes.get("meteor"), "bleu4_too_short": too_short,
        "candidate_flags": dict(Counter(f for r in rows for f in r["candidate_flags"])),
    }
    return _write(cfg, rows, skipped, summary, started)


def _write(cfg: CaptionMetricsConfig, rows: list[dict], skipped: Counter, summary: dict, started: float) -> dict:
    """per_caption.parquet/.tsv, summary.json, then _manifest.json; print the summary line."""
    opts = cfg.storage_options()
    table = pa.Table.from_pylist(rows, schema=per_caption_schema(cfg.metric_set))
    storage.write_parquet_atomic(table, storage.join(cfg.output, "per_caption.parquet"), opts)
    storage.write_bytes_atomic(storage.join(cfg.output, "per_caption.tsv"), _tsv(table), opts)
    storage.write_json_atomic(storage.join(cfg.output, "summary.json"), summary, opts)
    corpus.write_manifest(cfg.output, build_manifest(STAGE, cfg.model_dump(mode="json"), {
        "scored": len(rows), "left_out": dict(skipped)}, started, output=cfg.output), opts)
    print(summary_line(summary, cfg.output))
    return summary


def summary_line(summary: dict, output: str) -> str:
    """One line per split for people: the headline scores, the tokenizer, SPICE's state."""
    names = {"Bleu_4": "BLEU-4", "METEOR": "METEOR", "ROUGE_L": "ROUGE-L", "CIDEr": "CIDEr", "SPICE": "SPICE",
             "ROUGE1_F1": "ROUGE-1-F1", "ROUGEL_F1": "ROUGE-L-F1", "BLEU4": "BLEU-4", "METEOR_nltk": "METEOR",
             "BERTScore_F1": "BERTScore-F1"}
    parts = [f"{split} (n={s['n']}): " + " ".join(f"{label} {s[k]:.4f}" for k, label in names.items() if k in s)
             for split, s in summary["splits"].items()]
    spice = (" SPICE unavailable (see summary.json)." if "spice" in summary["metrics"]
             and not summary["spice"]["available"] else "")
    if summary.get("metric_set") == "sigir":
        spice = " metric set sigir (means of per-caption scores)."
    return (f"[evaluate captions] {'; '.join(parts)}; tokenizer {summary['tokenizer']}, language "
            f"{summary['language']}, {summary['artworks_scored']} scored, left out {summary['left_out']}.{spice} "
            f"→ {output}")


def load_json_summary(output: str, options: storage.StorageOptions = storage.DEFAULT_OPTIONS) -> dict | None:
    """The summary.json written at `output`, or None."""
    return storage.read_json(storage.join(output, "summary.json"), options)

