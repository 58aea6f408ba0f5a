"""`artray evaluate captions`: how close one caption source is to another, per artwork and per split.

A *source* is a URI holding either a corpus (its human captions: every caption of an
artwork is a reference, so ArtCap's five stay five references of one row) or the output
of `artray caption` (one text per artwork for a chosen captioner and preset). Candidates
are scored against references with BLEU-1..4, METEOR, ROUGE-L, CIDEr and SPICE as
pycocoevalcap computes them and BERTScore as bert_score computes it; each split is its own
evaluation corpus (CIDEr's document frequencies come from that split's references).
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
from artray.manifest import build_manifest
from artray.schema import SPLITS

STAGE = "evaluate-captions"
METRICS = ("bleu", "meteor", "rouge", "cider", "spice", "bertscore")
SCORE_COLUMNS = (*sc.COCO_METRICS, "SPICE", "BERTScore_P", "BERTScore_R", "BERTScore_F1")
PER_CAPTION_SCHEMA = pa.schema(
    [pa.field("artwork_id", pa.string()), pa.field("split", pa.string()), pa.field("candidate", pa.string()),
     pa.field("references", pa.list_(pa.string())), pa.field("candidate_flags", pa.list_(pa.string()))]
    + [pa.field(c, pa.float64()) for c in SCORE_COLUMNS])


class CaptionMetricsConfig(JobConfig):
    """Config of `artray evaluate captions`."""

    candidates: str = Field(description="URI of the captions to score: an `artray caption` output or a corpus")
    references: str = Field(description="URI of the reference captions: a corpus (human captions) or a caption output")
    output: str = Field(description="where per_caption.parquet/.tsv and summary.json go")
    candidates_captioner: str | None = Field(None, description="caption output: which captioner (needed if several)")
    candidates_preset: str = Field("caption", description="caption output: which preset")
    references_captioner: str | None = None
    references_preset: str = "caption"
    splits: SplitList = Field(None, description="only these splits (default: every split present)")
    metrics: list[Literal["bleu", "meteor", "rouge", "cider", "spice", "bertscore"]] = Field(
        default_factory=lambda: list(METRICS))
    language: str | None = Field(None, description="default: the corpus's language, else guessed (zh if mostly CJK, else en)")
    tokenizer: Literal["auto", "ptb", "char", "jieba"] = Field(
        "auto", description="auto: char for zh/ja, PTB (COCO's) otherwise")
    exclude_flags: list[str] = Field(default_factory=list, description="leave out candidates with these flags "
                                     "(default: none; a captioner is scored on everything it wrote)")
    spice_corenlp_dir: str | None = Field(None, description="folder with the Stanford CoreNLP 3.6.0 jars SPICE needs")
    spice_download: bool = Field(False, description="let pycocoevalcap download CoreNLP from nlp.stanford.edu")
    bertscore_model: str | None = Field(None, description="default: distilbert-base-uncased (en), bert-base-chinese (zh)")
    bertscore_num_layers: int | None = Field(None, ge=1, description="default: bert_score's choice, else all layers")
    bertscore_idf: bool = False
    bertscore_rescale: bool = Field(False, description="rescale with bert_score's baseline (known hub models only)")
    bertscore_batch_size: int = Field(64, ge=1)
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
    if "bertscore" in cfg.metrics:
        model = cfg.bertscore_model or sc.BERTSCORE_MODELS.get(sc.base_language(language), sc.BERTSCORE_FALLBACK)
        bs, info = sc.bertscore([r["candidate"] for r in rows], [r["references"] for r in rows], model,
                                cfg.bertscore_num_layers, cfg.bertscore_idf, cfg.bertscore_rescale, language,
                                cfg.bertscore_batch_size, None if cfg.device == "auto" else cfg.device,
                                cfg.storage_options())
        for name, values in bs.items():
            summary[name] = sum(values) / len(values)
            for k, v in zip(keys, values):
                per[k][name] = v
    for r in rows:
        r.update({c: per[r["artwork_id"]].get(c) for c in SCORE_COLUMNS})
    return {"n": len(rows), **{c: summary[c] for c in SCORE_COLUMNS if c in summary}}, info


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
    metrics = set(cfg.metrics)
    storage.delete(storage.join(cfg.output, corpus.MANIFEST), opts)  # unfinished until written again, last
    cands, cand_desc = _read_source(cfg.candidates, cfg.candidates_captioner, cfg.candidates_preset, "candidates", opts)
    refs, ref_desc = _read_source(cfg.references, cfg.references_captioner, cfg.references_preset, "references", opts)
    rows, skipped = _pairs(cfg, cands, refs)
    language = cfg.language or ref_desc["language"] or cand_desc["language"] or sc.guess_language(
        [t for r in rows for t in r["references"]])
    tokenizer = sc.choose_tokenizer(cfg.tokenizer, language)
    if not rows:
        raise sc.MetricsError(f"no artwork has both a candidate and a reference (left out: {dict(skipped)}); "
                              "check the URIs, captioner, preset and splits")
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
        "metrics": sorted(metrics), "splits": per_split, "artworks_scored": len(rows), "left_out": dict(skipped),
        "spice": {"available": spice_ok, "note": spice_note}, "bertscore": bert_info,
        "candidate_flags": dict(Counter(f for r in rows for f in r["candidate_flags"])),
    }
    table = pa.Table.from_pylist(rows, schema=PER_CAPTION_SCHEMA)
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
             "BERTScore_F1": "BERTScore-F1"}
    parts = [f"{split} (n={s['n']}): " + " ".join(f"{label} {s[k]:.4f}" for k, label in names.items() if k in s)
             for split, s in summary["splits"].items()]
    spice = (" SPICE unavailable (see summary.json)." if "spice" in summary["metrics"]
             and not summary["spice"]["available"] else "")
    return (f"[evaluate captions] {'; '.join(parts)}; tokenizer {summary['tokenizer']}, language "
            f"{summary['language']}, {summary['artworks_scored']} scored, left out {summary['left_out']}.{spice} "
            f"→ {output}")


def load_json_summary(output: str, options: storage.StorageOptions = storage.DEFAULT_OPTIONS) -> dict | None:
    """The summary.json written at `output`, or None."""
    return storage.read_json(storage.join(output, "summary.json"), options)

