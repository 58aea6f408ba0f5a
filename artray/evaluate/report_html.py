"""Rendering of the `artray report` page: matplotlib charts as inline PNGs and plain HTML tables.

Everything is embedded (``data:`` URIs, one ``<style>``), so the file opens anywhere with no
network and no other file. Functions take plain dicts and return HTML strings.
"""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from artray.images import viewer_image  # noqa: E402

DIRECTION_TITLES = {"t2i": "text → image", "i2t": "image → text"}
TABLE_METRICS = [("R@1", "hit_rate@1"), ("R@5", "hit_rate@5"), ("R@10", "hit_rate@10"), ("MRR", "mrr"),
                 ("P@1", None), ("median_rank", None)]
STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}sup{color:#a33}img.chart{max-width:100%}
.grid img{width:96px;height:96px;object-fit:cover;margin:2px;border:1px solid #ddd}.flag{color:#a33;font-weight:bold}
.warn{color:#8a5a00;background:#fff6e0;padding:4px 8px;border-left:3px solid #e0a000}"""


def esc(value) -> str:
    return html.escape(str(value))


def png_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chart(fig, alt: str) -> str:
    return f'<img class="chart" alt="{esc(alt)}" src="{png_data_uri(fig)}">'


def thumbnail(image: Image.Image, px: int) -> str:
    """A small JPEG of `image` (as a viewer shows it: `artray.images.viewer_image`) as an <img> tag."""
    im = viewer_image(image).copy()  # a copy: thumbnail() shrinks in place
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def recall_chart(qs: str, per_run: dict, ks=(1, 5, 10)) -> str:
    """Grouped bars of R@K (percent) per run, one panel per direction."""
    directions = [d for d in DIRECTION_TITLES if any(d in v for v in per_run.values())]
    fig, axes = plt.subplots(1, len(directions), figsize=(5 * len(directions), 3.2), squeeze=False)
    names = list(per_run)
    width = 0.8 / max(1, len(names))
    for ax, d in zip(axes[0], directions):
        for n, name in enumerate(names):
            vals = [100 * per_run[name].get(d, {}).get(f"R@{k}", 0) for k in ks]
            ax.bar(np.arange(len(ks)) + n * width, vals, width, label=name)
        ax.set_xticks(np.arange(len(ks)) + width * (len(names) - 1) / 2, [f"R@{k}" for k in ks])
        ax.set_ylim(0, 100)
        ax.set_title(f"{qs}: {DIRECTION_TITLES[d]}")
        ax.set_ylabel("%")
    axes[0][-1].legend(fontsize=7, loc="upper left")
    return chart(fig, f"recall@K {qs}")


def metrics_table(per_run: dict, significance: dict, direction: str) -> str:
    """Runs × metrics; a superscript letter names each run this one beats significantly."""
    letters = {name: chr(ord("a") + i) for i, name in enumerate(per_run)}
    sig_runs = (significance or {}).get("runs", {})
    head = "".join(f"<th>{esc(m)}</th>" for m, _ in TABLE_METRICS) + "<th>MR</th>"
    rows = []
    for name, per in per_run.items():
        d = per.get(direction)
        if d is None:
            continue
        cells = []
        for metric, ranx_name in TABLE_METRICS:
            beats = sig_runs.get(name, {}).get("beats", {}).get(ranx_name, []) if ranx_name else []
            mark = "".join(letters[b] for b in beats if b in letters)
            value = d[metric]
            text = f"{value:.1f}" if metric == "median_rank" else f"{100 * value:.1f}"
            cells.append(f"<td>{text}{f'<sup>{mark}</sup>' if mark else ''}</td>")
        mr = f"{100 * per['MR']:.1f}" if "MR" in per else "–"
        rows.append(f"<tr><td class=l>{letters[name]}</td><td class=l>{esc(name)}</td>{''.join(cells)}<td>{mr}</td></tr>")
    test = (significance or {}).get("stat_test", "–")
    return (f"<table><tr><th class=l></th><th class=l>run</th>{head}</tr>{''.join(rows)}</table>"
            f"<p>Percentages (median rank in ranks). A superscript letter: better than that run, paired {esc(test)} "
            f"test p &lt; {esc((significance or {}).get('max_p', '–'))} (ranx compare).</p>")


def small_gallery_note(per_run: dict, direction: str, threshold: int = 100) -> str:
    """A warning above a table whose gallery is small enough for chance to score high."""
    gallery = max((v[direction].get("gallery", 0) for v in per_run.values() if direction in v), default=0)
    if not gallery or gallery >= threshold:
        return ""
    return (f'<p class=warn>A gallery of {gallery} items: chance alone gives R@1 {100 / gallery:.1f}%, '
            f'R@5 {100 * min(5, gallery) / gallery:.0f}%, R@10 {100 * min(10, gallery) / gallery:.0f}%. '
            "Read these numbers against chance, not as results on a full test set.</p>")


def recipe_table(table: dict) -> str:
    """A recipe's paper table (`artray.recipes.table`): per setting and metric, published | this run | Δ."""
    d, metrics = table["digits"], table["metrics"]
    fmt = lambda v, signed=False: "–" if v is None else (f"{v:+.{d}f}" if signed else f"{v:.{d}f}")  # noqa: E731
    head = "".join(f"<th colspan=3>{esc(m)}</th>" for m in metrics)
    sub = "".join("<th>published</th><th>this run</th><th>Δ</th>" for _ in metrics)
    rows, notes = [], []
    for r in table["rows"]:
        pub = r["published"] or {}
        cells = []
        for m in metrics:
            beats = r.get("beats", {}).get(m)
            this = (fmt(r["this_run"][m]) + (f"<sup>▲{esc(','.join(beats))}</sup>" if beats else "")
                    if m in r["this_run"] else "n/a")
            cells.append(f"<td>{fmt(pub.get(m))}</td><td>{this}</td><td>{fmt(r['difference'].get(m), True)}</td>")
        rows.append(f"<tr><td class=l>{esc(r['setting'])}</td>{''.join(cells)}</tr>")
        if r.get("published_note"):
            notes.append(f"{r['setting']}: published — {r['published_note']}.")
        notes += [f"{r['setting']}: {m} — {why}." for m, why in r.get("missing", {}).items()]
        if r.get("note"):
            notes.append(f"{r['setting']}: {r['note']}")
    items = "".join(f"<li>{esc(n)}</li>" for n in [*table.get("notes", []), *notes])
    return (f"<h3>{esc(table['title'])}</h3><p>Published: {esc(table['source'])}. Unit: {esc(table['unit'])}; "
            "Δ = this run − published. ▲run: significantly better than that run (ranx paired test).</p>"
            f"<table><tr><th class=l rowspan=2>setting</th>{head}</tr><tr>{sub}</tr>{''.join(rows)}</table>"
            + (f"<ul>{items}</ul>" if items else ""))


def run_table(made: str, evaluations: list[tuple[str, str, str]], checkpoints: list[tuple[str, str, str]]) -> str:
    """When the report and its evaluations were made, and which checkpoints were evaluated."""
    evals = "".join(f"<tr><td class=l>{esc(u)}</td><td class=l>{esc(d)}</td><td class=l>{esc(sp)}</td></tr>"
                    for u, d, sp in evaluations)
    ckpts = "".join(f"<tr><td class=l>{esc(n)}</td><td class=l>{esc(f)}</td><td class=l>{esc(c)}</td></tr>"
                    for n, f, c in checkpoints)
    return (f"<p>Report made {esc(made)}.</p>"
            + (f"<table><tr><th class=l>evaluation</th><th class=l>evaluated</th><th class=l>split</th></tr>{evals}</table>"
               if evals else "")
            + (f"<table><tr><th class=l>model</th><th class=l>family</th><th class=l>checkpoint</th></tr>{ckpts}</table>"
               if ckpts else ""))


def length_histograms(lengths: dict[str, list[int]]) -> str:
    """One histogram of caption lengths (words) per source."""
    n = len(lengths)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 2.8), squeeze=False)
    for ax, (source, values) in zip(axes[0], lengths.items()):
        ax.hist(values or [0], bins=20, color="#4472c4")
        ax.set_title(source, fontsize=9)
        ax.set_xlabel("words")
    return chart(fig, "caption lengths")


def coverage_table(coverage: dict) -> str:
    """Source × model: the share of tokens the model's tokenizer keeps, and the share of captions cut."""
    models = sorted({m for per in coverage.values() for m in per})
    head = "".join(f"<th>{esc(m)}</th>" for m in models)
    rows = []
    for source, per in coverage.items():
        cells = "".join(
            f"<td>{100 * per[m]['seen']:.0f}% ({100 * per[m]['truncated']:.0f}% cut)</td>" if m in per else "<td>–</td>"
            for m in models)
        rows.append(f"<tr><td class=l>{esc(source)}</td>{cells}</tr>")
    return f"<table><tr><th class=l>source</th>{head}</tr>{''.join(rows)}</table>"


def augment_grid(rows: list[tuple[str, str, list[str]]]) -> str:
    """(artwork id, original <img>, variant <img>s) per row."""
    body = "".join(f"<tr><td class=l>{esc(a)}</td><td>{o}</td><td class=l>{''.join(v)}</td></tr>" for a, o, v in rows)
    return f'<table class="grid"><tr><th class=l>artwork</th><th>original</th><th class=l>variants</th></tr>{body}</table>'


def examples_table(rows: list[dict]) -> str:
    """Example captions: source, artwork, text and flags."""
    body = "".join(
        f"<tr><td class=l>{esc(r['source'])}</td><td class=l>{esc(r['artwork_id'])}</td>"
        f"<td class=l>{esc(r['text'][:400])}</td><td class=l><span class=flag>{esc(', '.join(r['flags']))}</span></td></tr>"
        for r in rows)
    return f"<table><tr><th class=l>source</th><th class=l>artwork</th><th class=l>text</th><th class=l>flags</th></tr>{body}</table>"


def page(title: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document: (id, heading, body html) per section."""
    body = "".join(f'<section id="{sid}"><h2>{esc(h)}</h2>{content}</section>' for sid, h, content in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>")
