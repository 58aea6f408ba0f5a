"""`artray report`: one self-contained HTML page of what the evaluations, captions and augmentation produced.

Sections (each present when its input is given): a recipe's paper table (published beside this
run, `recipe_tables`); recall@K bar charts per query set and
direction; a table of every metric with ranx significance marks (from `artray evaluate
retrieval` outputs); caption-length histograms per caption source (the corpus's own
captions and each captioner/preset of `artray caption` outputs); the share of each source's
tokens that each evaluated model's tokenizer sees (BLIP 35 tokens as the source work
truncates, CLIP 77, Chinese-CLIP 52, Long-CLIP 248 — `context_lengths`); originals beside
their augmented variants; example captions with their quality flags. Charts are matplotlib
PNGs and images small JPEGs, inlined; the page loads nothing else. Runs in one process.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from artray import corpus, families, storage
from artray.config import JobConfig
from artray.errors import UserError
from artray.evaluate import report_html as h
from artray.evaluate.retrieval import load_summary
from artray.families.base import STATE_DICT_SUFFIXES
from artray.images import to_rgb
from artray.manifest import build_manifest
from artray.stages.caption_flags import tokens

STAGE = "report"


def default_context() -> dict[str, int]:
    """Tokens each registered family sees by default (``ModelFamily.context_length``), by family."""
    return {n: families.get(n).context_length for n in families.names() if families.get(n).context_length}


class ReportError(UserError, RuntimeError):
    """A report input is missing or unreadable; the message names it."""


class ReportConfig(JobConfig):
    """One self-contained HTML page of retrieval metrics, caption sources and augmentation (`artray report`)."""

    output: str = Field(description="the HTML file to write (local path or s3://)")
    retrieval: list[str] = Field(default_factory=list, description="`artray evaluate retrieval` outputs")
    corpus: str | None = Field(None, description="corpus URI: its captions are one caption source")
    captions: list[str] = Field(default_factory=list, description="`artray caption` outputs (sources and examples)")
    augment: str | None = Field(None, description="`artray augment` output: originals beside variants")
    context_lengths: dict[str, int] = Field(default_factory=default_context,
                                            description="tokens each family sees, by family")
    split: str | None = Field(None, description="caption sources: only this split (default: all)")
    max_examples: int = Field(12, ge=0, description="example captions shown (flagged ones first)")
    max_augment: int = Field(6, ge=0, description="artworks in the augmentation grid")
    thumb_px: int = Field(96, ge=16, le=512, description="long side of the thumbnails in pixels")
    recipe_tables: list[str] = Field(default_factory=list, description="`artray recipe` table outputs "
                                     "(folders holding table.json): the paper's numbers beside this run's")
    title: str = Field("artray report", description="the page's title")


def _caption_sources(cfg: ReportConfig, opts) -> dict[str, list[dict]]:
    """Source name → rows {artwork_id, text, flags}."""
    sources: dict[str, list[dict]] = {}
    if cfg.corpus:
        if corpus.read_manifest(cfg.corpus, opts) is None:
            raise ReportError(f"corpus {cfg.corpus} has no {corpus.MANIFEST}: not a finished corpus")
        t = corpus.read_texts(cfg.corpus, opts)
        t = t.filter(pc.equal(t["split"], cfg.split)) if cfg.split else t
        sources["corpus"] = [{"artwork_id": (a or [""])[0], "text": x, "flags": []}
                             for a, x in zip(t["artwork_ids"].to_pylist(), t["text"].to_pylist())]
    from artray.outputs import read_captions

    for uri in cfg.captions:
        if corpus.read_manifest(uri, opts) is None:
            raise ReportError(f"captions {uri} have no {corpus.MANIFEST}: not a finished `artray caption` output")
        t = read_captions(uri, opts, exclude_flags=())
        t = t.filter(pc.equal(t["split"], cfg.split)) if cfg.split else t
        for r in t.select(["artwork_id", "captioner", "preset", "text", "flags"]).to_pylist():
            sources.setdefault(f"{r['captioner']}/{r['preset']}", []).append(r)
    return sources


def _token_counter(family: str, checkpoint: str, opts):
    """texts → token counts (special tokens included) with the family's tokenizer."""
    if family in ("longclip", "open_clip") or checkpoint.rstrip("/").endswith(STATE_DICT_SUFFIXES):  # clip files
        from open_clip.tokenizer import SimpleTokenizer

        tok = SimpleTokenizer()
        return lambda texts: [len(tok.encode(t)) + 2 for t in texts]
    from transformers import AutoTokenizer

    from artray.models.resolve import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(checkpoint, opts))
    return lambda texts: [len(ids) for ids in tok(texts, add_special_tokens=True, verbose=False)["input_ids"]]


def _coverage(cfg: ReportConfig, sources: dict, models: dict, opts) -> dict:
    """Source → model → {seen: mean share of tokens within the context, truncated: share of captions cut}."""
    out: dict = defaultdict(dict)
    for name, m in models.items():
        limit = cfg.context_lengths.get(m["family"])
        if limit is None:
            continue
        count = _token_counter(m["family"], m["checkpoint"], opts)
        for source, rows in sources.items():
            n = [max(1, c) for c in count([r["text"] for r in rows])]
            if n:
                out[source][f"{name} ({limit})"] = {"seen": sum(min(c, limit) / c for c in n) / len(n),
                                                    "truncated": sum(c > limit for c in n) / len(n)}
    return dict(out)


def _augment_rows(cfg: ReportConfig, opts) -> list:
    from artray.outputs import read_variants

    variants = read_variants(cfg.augment, opts, columns=["parent_id", "variant", "image"])
    parents = sorted(set(variants["parent_id"].to_pylist()))[:cfg.max_augment]
    if not parents or not cfg.corpus:
        return []
    arts = corpus.read_artworks(cfg.corpus, opts, columns=["artwork_id", "image", "image_uri"])
    arts = arts.filter(pc.is_in(arts["artwork_id"], value_set=pa.array(parents))).to_pylist()
    by_id = {a["artwork_id"]: a for a in arts}
    rows = []
    for pid in parents:
        a = by_id.get(pid)
        if a is None:
            continue
        data = a["image"] if a["image"] is not None else storage.read_bytes(a["image_uri"], opts)
        vs = sorted((v for v in variants.filter(pc.equal(variants["parent_id"], pid)).to_pylist()),
                    key=lambda v: v["variant"])
        rows.append((pid, h.thumbnail(to_rgb(data), cfg.thumb_px),
                     [h.thumbnail(to_rgb(v["image"]), cfg.thumb_px) for v in vs]))
    return rows


def _examples(cfg: ReportConfig, sources: dict) -> list[dict]:
    flagged = [{"source": s, **r} for s, rows in sources.items() for r in rows if r["flags"]]
    per_source = max(1, cfg.max_examples // max(1, len(sources)))
    plain = [{"source": s, **r} for s, rows in sources.items() for r in rows[:per_source] if not r["flags"]]
    return (flagged[:cfg.max_examples // 2] + plain)[:cfg.max_examples]


def build_report(cfg: ReportConfig) -> str:
    """The report's HTML."""
    opts = cfg.storage_options()
    sections, models = [], {}
    charts, tables = [], []
    evaluations = []
    for uri in cfg.retrieval:
        summary = load_summary(uri, opts)
        if summary is None:
            raise ReportError(f"{uri} has no summary.json: not a finished `artray evaluate retrieval` output")
        models.update(summary["models"])
        evaluations.append((uri, summary))
        for qs, per_run in summary["metrics"].items():
            charts.append(h.recall_chart(qs, per_run))
            for d in h.DIRECTION_TITLES:
                if any(d in v for v in per_run.values()):
                    sig = summary.get("significance", {}).get(qs, {}).get(d)
                    tables.append(f"<h3>{h.esc(qs)}: {h.DIRECTION_TITLES[d]} ({h.esc(summary['split'])} split, "
                                  f"{h.esc(_sizes(per_run, d))})</h3>" + h.small_gallery_note(per_run, d)
                                  + h.metrics_table(per_run, sig, d))
    recipe_tables = []
    for uri in cfg.recipe_tables:
        table = storage.read_json(storage.join(uri, "table.json"), opts)
        if table is None:
            raise ReportError(f"{uri} has no table.json: not a finished recipe `table` step")
        recipe_tables.append(h.recipe_table(table))
    if recipe_tables:
        sections.append(("paper", "The paper's table beside this run", "".join(recipe_tables)))
    if charts:
        sections += [("recall", "Recall@K per model and direction", "".join(charts)),
                     ("metrics", "All metrics, with significance", "".join(tables))]
    sources = _caption_sources(cfg, opts)
    if sources:
        lengths = {s: [len(tokens(r["text"])) for r in rows] for s, rows in sources.items()}
        sections.append(("lengths", "Caption lengths per source", h.length_histograms(lengths)))
        if models:
            sections.append(("coverage", "Share of each caption source each model's tokenizer sees",
                             h.coverage_table(_coverage(cfg, sources, models, opts))))
    if cfg.augment:
        if corpus.read_manifest(cfg.augment, opts) is None:
            raise ReportError(f"augment output {cfg.augment} has no {corpus.MANIFEST}: not a finished augment run")
        sections.append(("augment", "Originals and their augmented variants", h.augment_grid(_augment_rows(cfg, opts))))
    if sources:
        sections.append(("examples", "Example captions and their flags", h.examples_table(_examples(cfg, sources))))
    if not sections:
        raise ReportError("nothing to report: give retrieval, corpus, captions, augment or recipe_tables outputs")
    sections.append(("run", "What this report is made of", h.run_table(
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        [(_shown(uri), s.get("evaluated", "–"), s["split"]) for uri, s in evaluations],
        [(name, m.get("family", "–"), _shown(str(m.get("checkpoint", "–")))) for name, m in models.items()])))
    return h.page(cfg.title, sections)


def _sizes(per_run: dict, direction: str) -> str:
    """"N queries against M images" of a direction (the largest over its runs)."""
    rows = [v[direction] for v in per_run.values() if direction in v]
    queries, gallery = max(r.get("queries", 0) for r in rows), max(r.get("gallery", 0) for r in rows)
    items = "images" if direction == "t2i" else "texts"
    return f"{queries} queries against {gallery} {items}" if gallery else f"{queries} queries"


def _shown(uri: str) -> str:
    """A URI as a report shows it: s3:// and hub ids whole, a local path by its last two parts (no home dirs)."""
    if "://" in uri:
        return uri
    parts = [p for p in uri.rstrip("/").split("/") if p]
    return "/".join(parts[-2:]) if parts else uri


def run_report(cfg: ReportConfig) -> dict:
    """Write the HTML report at `cfg.output` (and a manifest beside it); return the manifest."""
    started, opts = time.time(), cfg.storage_options()
    doc = build_report(cfg)
    storage.write_bytes_atomic(cfg.output, doc.encode("utf-8"), opts)
    manifest = build_manifest(STAGE, cfg.model_dump(mode="json"), {"bytes": len(doc)}, started, output=cfg.output)
    storage.write_json_atomic(cfg.output + ".manifest.json", manifest, opts)
    print(f"[report] {len(doc) // 1024} KiB → {cfg.output}")
    return manifest
