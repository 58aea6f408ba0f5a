"""Turn the chaos suite's JSON-lines report into the markdown reliability table of bench/RESULTS.md.

    pytest -m chaos tests/chaos                      # writes chaos-report.jsonl (path printed at the end)
    ARTRAY_CHAOS_REPORT=chaos.jsonl pytest -m chaos tests/chaos
    python bench/reliability_table.py chaos.jsonl > table.md

One row per faulted run: what was hit, when (rows committed before each fault, seconds into
the run) and how often, how many attempts the stage needed, rows expected / present / lost /
duplicated / with other content, and the time to recover (fault → next committed row; for
lost progress and storage faults, the rerun's wall time). Records of other suites (training,
Serve) that carry none of the row figures go to a second table of their own fields. Records of
bad inputs (``bad_input``: tests/chaos/test_bad_inputs.py) go to a third: per class of bad input,
rows given, committed, failed (by reason), lost, duplicated, and whether nothing was lost.
"""

from __future__ import annotations

import argparse
import json
import sys

ROW_COLUMNS = [
    ("stage", "stage"), ("fault", "fault (what)"), ("when", "when (rows committed @ s)"), ("faults", "how often"),
    ("attempts", "attempts"), ("rows_expected", "rows expected"), ("rows_present", "present"), ("rows_lost", "lost"),
    ("rows_duplicated", "duplicated"), ("rows_differing", "differing"), ("failures_consistent", "_failures same"),
    ("recover_s", "time to recover (s)"), ("wall_s", "wall (s)"), ("wall_clean_s", "clean wall (s)"),
]
SKIP = {"suite", "events", "errors", "error"}


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("|", "\\|")


def _when(record: dict) -> str | None:
    events = record.get("events") or []
    parts = [f"{e['rows_committed_before']} @ {e['at_s']:g}" for e in events
             if "rows_committed_before" in e and "at_s" in e]
    return ", ".join(parts) or None


def _label(title: str) -> str:
    """A killed process's title → what it was doing: `<UDF> actor`, `write task`, …"""
    title = title.strip()
    if "MapWorker(MapBatches(" in title:
        return title.split("MapWorker(MapBatches(")[1].split(")")[0] + " actor"
    if "Write" in title:
        return "write task"
    return title.removeprefix("ray::")


def _what(record: dict) -> str:
    """The fault, plus which processes were hit when the events say so."""
    hit = sorted({_label(e["process"]) for e in record.get("events") or [] if e.get("process")})
    return record.get("fault", "?") + (f" ({', '.join(hit)})" if hit else "")


BAD_INPUT_COLUMNS = [("stage", "stage"), ("bad_input", "bad input (class)"), ("rows", "rows"),
                     ("committed", "committed"), ("failed", "failed (reason)"), ("lost", "lost"),
                     ("duplicated", "duplicated"), ("nothing_lost", "nothing lost")]


def bad_input_table(records: list[dict]) -> list[str]:
    """The bad-input classes tried: one line per (stage, class)."""
    out = ["| " + " | ".join(title for _, title in BAD_INPUT_COLUMNS) + " |", "|" + "---|" * len(BAD_INPUT_COLUMNS)]
    for r in records:
        failed = ", ".join(f"{k}={v}" for k, v in sorted((r.get("failed") or {}).items())) or "0"
        values = {**r, "failed": failed, "nothing_lost": r.get("lost") == 0 and r.get("duplicated") == 0}
        out.append("| " + " | ".join(_cell(values.get(key)) for key, _ in BAD_INPUT_COLUMNS) + " |")
    return out


def table(records: list[dict]) -> str:
    bad = [r for r in records if "bad_input" in r]
    records = [r for r in records if "bad_input" not in r]
    rows = [r for r in records if "rows_expected" in r]
    others = [r for r in records if "rows_expected" not in r]
    out = []
    if rows:
        out.append("| " + " | ".join(title for _, title in ROW_COLUMNS) + " |")
        out.append("|" + "---|" * len(ROW_COLUMNS))
        for r in rows:
            values = {**r, "when": _when(r), "fault": _what(r)}
            out.append("| " + " | ".join(_cell(values.get(key)) for key, _ in ROW_COLUMNS) + " |")
    if others:
        out.append("")
        out.append("| suite | test | figures |")
        out.append("|---|---|---|")
        for r in others:
            figures = ", ".join(f"{k}={_cell(v)}" for k, v in r.items() if k not in SKIP | {"test", "name"}
                                and not isinstance(v, (dict, list)))
            out.append(f"| {_cell(r.get('suite'))} | {_cell(r.get('test') or r.get('name'))} | {figures} |")
    if bad:
        out += ([""] if out else []) + bad_input_table(bad)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", nargs="+", help="JSON-lines file(s) written by the chaos suite")
    args = parser.parse_args(argv)
    records = []
    for path in args.report:
        with open(path, encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    sys.stdout.write(table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
