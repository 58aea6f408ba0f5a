"""The `table` step: a paper's table with this run's numbers beside the published ones.

One row per setting; per metric the published number (with its source), this run's, and the
difference (this run − published, in the table's unit). A row's numbers are read from an
evaluation's ``summary.json`` (`artray evaluate retrieval` or `evaluate captions`) at a path of
keys (``at``); a metric the run did not produce says why (SPICE without CoreNLP: the evaluation's
own note). Rows the paper does not report say so. Written as ``table.json`` and ``table.md``
under `output`; `artray report` shows it as a section (``recipe_tables``).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from artray import storage
from artray.config import JobConfig
from artray.errors import UserError
from artray.manifest import build_manifest

# Our retrieval metric → the ranx metric its significance test was run on.
SIGNIFICANCE_KEY = {"R@1": "hit_rate@1", "P@1": "hit_rate@1", "R@5": "hit_rate@5", "R@10": "hit_rate@10",
                    "MRR": "mrr"}


class TableRow(BaseModel):
    """One setting of the paper's table."""

    model_config = ConfigDict(extra="forbid")
    setting: str
    summary: str | None = Field(None, description="the evaluation output (its summary.json) this row reads")
    at: list[str] = Field(default_factory=list, description="keys into summary.json down to the row's metrics")
    published: dict[str, float | None] | None = Field(None, description="metric → the paper's number "
                                                      "(null: the paper does not report this row)")
    published_note: str | None = Field(None, description="why a row has no published number")
    note: str | None = None


class TableConfig(JobConfig):
    """A paper's table: settings × metrics, published beside this run (the `table` recipe step)."""

    output: str = Field(description="folder for table.json and table.md")
    title: str
    source: str = Field(description="where the published numbers come from (paper table, repository file)")
    metrics: dict[str, str] = Field(description="column label → key (dotted) under each row's `at`")
    unit: Literal["fraction", "percent"] = Field("fraction", description="the paper's unit; this run's numbers "
                                                 "(fractions) are shown in it")
    digits: int = Field(3, ge=0, le=6)
    significance: dict[str, Any] | None = Field(None, description="retrieval: {direction, max_p}: mark the runs each "
                                                "row's run beats significantly (ranx compare; the row's `at` is "
                                                "[metrics, <query set>, <run>])")
    missing: dict[str, str] = Field(default_factory=dict, description="column label → why this run has no value")
    notes: list[str] = Field(default_factory=list)
    rows: list[TableRow] = Field(min_length=1)


class TableError(UserError, ValueError):
    """A table row that cannot be read; names the row and the file."""


def _dig(node: Any, keys: list[str]) -> Any:
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def _why_missing(cfg: TableConfig, label: str, summary: dict) -> str:
    if label in cfg.missing:
        return cfg.missing[label]
    if label.upper() == "SPICE" and isinstance(summary.get("spice"), dict):
        return f"not computed here: {summary['spice'].get('note')}"
    return "not produced by this run"


def build_table(cfg: TableConfig) -> dict:
    """The table as a dict (what table.json holds)."""
    opts, scale = cfg.storage_options(), 100.0 if cfg.unit == "percent" else 1.0
    summaries: dict[str, dict] = {}
    rows = []
    for row in cfg.rows:
        this, why, beats = {}, {}, {}
        if row.summary:
            if row.summary not in summaries:
                s = storage.read_json(storage.join(row.summary, "summary.json"), opts)
                if s is None:
                    raise TableError(f"table row {row.setting!r}: {row.summary} has no summary.json (its evaluation "
                                     "step did not finish)")
                summaries[row.summary] = s
            summary = summaries[row.summary]
            node = _dig(summary, row.at)
            if node is None:
                raise TableError(f"table row {row.setting!r}: {row.summary}/summary.json has nothing at "
                                 f"{' → '.join(row.at)}")
            for label, key in cfg.metrics.items():
                value = _dig(node, key.split("."))
                if isinstance(value, (int, float)):
                    this[label] = value * scale
                else:
                    why[label] = _why_missing(cfg, label, summary)
            if cfg.significance and len(row.at) == 3:
                sig = _dig(summary, ["significance", row.at[1], cfg.significance["direction"],
                                     "runs", row.at[2], "beats"]) or {}
                beats = {label: sig[SIGNIFICANCE_KEY[label]] for label in cfg.metrics
                         if sig.get(SIGNIFICANCE_KEY.get(label, ""))}
        published = row.published or {}
        diff = {m: this[m] - published[m] for m in cfg.metrics
                if published.get(m) is not None and this.get(m) is not None}
        rows.append({"setting": row.setting, "published": published or None,
                     "published_note": (row.published_note or "not reported in the paper") if not published else None,
                     "this_run": this, "difference": diff, "missing": why, "beats": beats, "note": row.note,
                     "summary": row.summary})
    return {"title": cfg.title, "source": cfg.source, "unit": cfg.unit, "metrics": list(cfg.metrics),
            "digits": cfg.digits, "notes": cfg.notes, "significance": cfg.significance, "rows": rows,
            "made": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _fmt(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def to_markdown(table: dict) -> str:
    """The table as GitHub Markdown: per metric, published | this run | Δ; notes below."""
    d, metrics = table["digits"], table["metrics"]
    head = ["setting"] + [f"{m} {c}" for m in metrics for c in ("published", "this run", "Δ")]
    lines = [f"### {table['title']}", "", f"Published: {table['source']}. Unit: {table['unit']}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    footnotes = []
    for r in table["rows"]:
        cells = [r["setting"]]
        pub = r["published"] or {}
        for m in metrics:
            mark = ""
            if r["beats"].get(m):
                mark = " ▲" + ",".join(r["beats"][m])
            this = _fmt(r["this_run"].get(m), d) + mark if m in r["this_run"] else "n/a"
            cells += [_fmt(pub.get(m), d), this, _fmt(r["difference"].get(m), d, signed=True)]
        lines.append("| " + " | ".join(cells) + " |")
        if r["published_note"]:
            footnotes.append(f"- {r['setting']}: published — {r['published_note']}.")
        for m, why in r["missing"].items():
            footnotes.append(f"- {r['setting']}: {m} — {why}.")
        if r.get("note"):
            footnotes.append(f"- {r['setting']}: {r['note']}")
    if any(runs for r in table["rows"] for runs in r["beats"].values()):
        footnotes.append("- ▲run: this run's result is significantly better than that run's (ranx paired test, "
                         f"p < {(table.get('significance') or {}).get('max_p', 0.05)}).")
    lines += [""] + [f"- {n}" for n in table["notes"]] + footnotes
    return "\n".join(lines).rstrip() + "\n"


def run_table(cfg: TableConfig) -> dict:
    """Write table.json and table.md (then _manifest.json) under `cfg.output`; print the table."""
    started, opts = time.time(), cfg.storage_options()
    table = build_table(cfg)
    md = to_markdown(table)
    storage.write_json_atomic(storage.join(cfg.output, "table.json"), table, opts)
    storage.write_bytes_atomic(storage.join(cfg.output, "table.md"), md.encode("utf-8"), opts)
    storage.write_json_atomic(storage.join(cfg.output, "_manifest.json"),
                              build_manifest("table", cfg.model_dump(mode="json"), {"rows": len(table["rows"])},
                                             started, output=cfg.output), opts)
    print(md, end="")
    print(f"[table] {len(table['rows'])} rows → {storage.join(cfg.output, 'table.md')}")
    return table
