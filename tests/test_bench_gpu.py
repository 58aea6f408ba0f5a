"""bench/gpu.sh's CPU smoke run: every part runs with the tiny checkpoints and lands in one table.

The script is what a lent GPU machine runs in one call, so it must not first break there: this runs
`bash bench/gpu.sh --cpu --tiny` (the same code paths at tiny size, a few minutes on 2 shared cores)
and checks the table it prints has numeric artray, bare and ratio figures for every part. No speed
is asserted here (targets live in bench/RESULTS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ("augment", "augment-fast", "train-longclip", "train-cnclip", "caption", "embed", "serve")


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


@pytest.mark.slow
def test_gpu_sh_cpu_tiny_gives_every_figure(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--cpu", "--tiny", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    logs = {p.name: p.read_text(errors="replace")[-2000:] for p in out.glob("*.log")}
    assert proc.returncode == 0, f"gpu.sh failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}\n{logs}"

    table = (out / "gpu_table.md").read_text(encoding="utf-8")
    assert table in proc.stdout  # printed, ready to paste
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| part")]
    for part in PARTS:
        mine = [r for r in rows if r[0].split(" ")[0] == part]
        assert mine, f"no row for {part} in\n{table}"
        numeric = [r for r in mine if all(_number(c) is not None for c in r[2:5])]
        assert numeric, f"{part} has no numeric artray / bare / ratio figure:\n{table}"
        for r in numeric:
            assert _number(r[2]) > 0 and _number(r[3]) > 0, r
            assert abs(_number(r[4]) - _number(r[2]) / _number(r[3])) <= 0.01 * _number(r[4]) + 0.002, r
        assert all(r[6] == "CPU" for r in mine), mine  # --cpu: the device column says where figures came from
        assert all("→" in r[7] for r in mine), mine  # the load before → after the part, written beside it


def test_gpu_table_keeps_the_parts_that_ran_when_one_fails(tmp_path):
    """A part that failed (no JSON) gets its own row with the last line of its log; the others keep theirs."""
    (tmp_path / "embed.json").write_text(json.dumps({
        "part": "embed", "full_size": True, "device": "NVIDIA H100 80GB HBM3", "artray_img_per_s": 50.0,
        "bare_img_per_s": 40.0, "artray_steady_img_per_s": 900.0, "bare_steady_img_per_s": 1000.0,
        "artray_startup_s": 20.0, "bare_startup_s": 10.0}))
    (tmp_path / "embed.load").write_text("0.50 → 1.20, 33 s\n")
    (tmp_path / "caption.log").write_text("loading...\nran out of its 110 s budget (exit 124)\n")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_table.py"), str(tmp_path), "--parts", "caption,embed"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a part without figures is an error
    table = (tmp_path / "gpu_table.md").read_text(encoding="utf-8")
    caption = [line for line in table.splitlines() if line.startswith("| caption")]
    assert len(caption) == 1 and "ran out of its 110 s budget" in caption[0]
    steady = next(line for line in table.splitlines() if "embed (full size) | steady img/s" in line)
    assert "| 900.0 | 1000.0 | 0.900 |" in steady and "NVIDIA H100 80GB HBM3" in steady and "0.50 → 1.20, 33 s" in steady


def test_gpu_sh_refuses_full_size_on_cpu(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--cpu", "--out", str(tmp_path)],
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "add --tiny" in proc.stderr
