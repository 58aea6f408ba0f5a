"""One Markdown table from the JSON files bench/gpu.sh's parts wrote (ready for bench/RESULTS.md).

    python bench/gpu_table.py OUT_DIR [--load "0.52 0.61 0.70"]

Reads ``OUT_DIR/<part>.json`` (augment, augment-fast, augment-compile, train-longclip, train-cnclip, caption, embed, serve), one row
per figure: part, artray figure, bare figure, ratio artray / bare, unit, device, load average, date.
A part whose JSON is missing (it failed or ran out of its time budget) gets one row saying so, with
the tail of its log, so one failing part never hides the others. Prints the table and writes it to
``OUT_DIR/gpu_table.md``; exits 1 when a part has no figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import device_name, load_average, ratio  # noqa: E402

PARTS = ("augment", "augment-fast", "train-longclip", "train-cnclip", "caption", "embed", "serve")
HEADERS = ("part", "figure", "artray", "bare", "ratio artray/bare", "unit", "device", "load avg", "date")


def _num(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def figures(part: str, r: dict) -> list[tuple[str, float | None, float | None, str]]:
    """(figure, artray, bare, unit) rows of one part's report."""
    if part.startswith("augment"):
        batching = r.get("batching")  # bench/augment.py --batching: B images per pipeline call vs one per call
        extra = [(f"{batching['batch']} images per call vs 1 (max pixel diff {batching['max_pixel_diff']})",
                  batching["batched_img_per_s"], batching["unbatched_img_per_s"], "img/s (bare = one per call)")
                 ] if batching else []
        setup = f" (batch {r['batch_size']}{', compiled' if r.get('compile') else ''})" if "batch_size" in r else ""
        return [(f"steady img/s (two-size estimate){setup}", r["artray_steady_img_per_s"], r["bare_steady_img_per_s"],
                 "img/s"),
                (f"steady image-steps/s ({r['denoising_steps']} denoising steps/img)",
                 r["artray_steady_image_steps_per_s"], r["bare_steady_image_steps_per_s"], "steps/s"),
                ("start-up (two-size estimate)", r["artray_startup_s"], r["bare_startup_s"], "s (lower is better)"),
                ("wall img/s, start-up included", r["artray_img_per_s"], r["bare_img_per_s"], "img/s"), *extra]
    if part.startswith("train"):
        # one row per artray strategy timed (bench/train.py --strategy ddp,deepspeed), against the same plain loop
        runs = r.get("by_strategy") or {r.get("strategy", "deepspeed"): {"samples_per_s": r["artray_samples_per_s"],
                                                                         "mfu": r.get("artray_mfu")}}
        rows = [(f"samples/s, {s}", v["samples_per_s"], r["plain_samples_per_s"], "samples/s (bare = plain loop)")
                for s, v in runs.items()]
        if "artray_mfu" in r:
            rows += [(f"MFU, {s}", 100 * v["mfu"], 100 * r["plain_mfu"],
                      f"% of {r['peak_tflops']:g} TFLOP/s ({r['gflops_per_sample']:g} GFLOP/sample)")
                     for s, v in runs.items()]
            rows.append(("step only (no data), samples/s", None, r["step_only_samples_per_s"], "samples/s"))
        return rows
    if part == "caption":
        return [("captions/s", r["artray_captions_per_s"], r["bare_captions_per_s"], "captions/s (wall, model load included)"),
                ("tokens/s", r["artray_tokens_per_s"], r["bare_tokens_per_s"], "tokens/s (wall, model load included)")]
    if part == "embed":
        return [("steady img/s (two-size estimate)", r["artray_steady_img_per_s"], r["bare_steady_img_per_s"], "img/s"),
                ("wall img/s, start-up included", r["artray_img_per_s"], r["bare_img_per_s"], "img/s"),
                ("start-up (two-size estimate)", r["artray_startup_s"], r["bare_startup_s"], "s (lower is better)")]
    if part == "serve":
        rows = []
        for res in r["results"]:
            c = res["concurrency"]
            rows.append((f"/search p50, concurrency {c}", res["http"]["p50_ms"], res["direct"]["p50_ms"],
                         "ms (lower is better; bare = in-process)"))
            rows.append((f"/search qps, concurrency {c}", res["http"]["qps"], res["direct"]["qps"], "queries/s"))
        return rows
    raise ValueError(f"unknown part {part!r}")


def build(out_dir: Path, load: str | None = None, parts: tuple[str, ...] = PARTS) -> tuple[str, list[str]]:
    """The Markdown table of every part under `out_dir`, and the parts that gave no figures."""
    la = load or " ".join(f"{x:.2f}" for x in load_average())  # for parts without a .load file
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    missing = []
    for part in parts:
        path = out_dir / f"{part}.json"
        if not path.exists():
            missing.append(part)
            log = out_dir / f"{part}.log"
            why = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else ["no log"]
            lines.append(f"| {part} | **no figures** ({why[0][:120].replace('|', '/')}) | - | - | - | - | - | {la} | {date} |")
            continue
        r = json.loads(path.read_text(encoding="utf-8"))
        load_file = out_dir / f"{part}.load"  # gpu.sh: 1-min load average before → after the part
        part_load = load_file.read_text(encoding="utf-8").strip() if load_file.exists() else la
        label = f"{part}{' (full size)' if r.get('full_size') else ' (tiny)'}"
        device = r.get("device") or r.get("gpu") or "CPU"
        for name, art, bare, unit in figures(part, r):
            lines.append(f"| {label} | {name} | {_num(art)} | {_num(bare)} | {_num(ratio(art, bare))} | {unit} | "
                         f"{device} | {part_load} | {date} |")
    return "\n".join(lines) + "\n", missing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--load", help="load average to write beside the figures (default: now)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts to put in the table (default: all)")
    a = p.parse_args(argv)
    out = Path(a.out_dir)
    md, missing = build(out, a.load, tuple(x for x in a.parts.split(",") if x))
    header = (f"bench/gpu.sh on {device_name()}; load = 1-min load average before → after each part; ratio = artray / bare "
              "(> 1: artray faster, except rows in seconds or ms, where < 1 is better)\n\n")
    (out / "gpu_table.md").write_text(header + md, encoding="utf-8")
    print(header + md)
    if missing:
        print(f"no figures from: {', '.join(missing)} (see their .log files in {out})")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
