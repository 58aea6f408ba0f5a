"""CLI start-up: CPU seconds of `artray --help`, `artray evaluate --help`, `artray corpus info` and
`artray embed --help`, for this checkout side by side with another (by default git's `main`).

Each command runs as a fresh process (the venv's `artray` script, with PYTHONPATH set to the
checkout), N times per checkout, checkouts alternating and their order rotated every round.
CPU = user + system of the child (`resource.getrusage(RUSAGE_CHILDREN)` around each run), which
other people's load disturbs far less than wall time; wall time is shown for context. Every run
must exit 0, and both checkouts must print the same `corpus info` summary.

    .venv/bin/python bench/cli_startup.py                      # vs main, 5 runs each (~2 min)
    .venv/bin/python bench/cli_startup.py --quick              # 2 runs each
    .venv/bin/python bench/cli_startup.py --baseline-ref HEAD~3
    .venv/bin/python bench/cli_startup.py --baseline /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_line, median, ratio, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {  # label → argv after `artray`; {corpus} is a small imported corpus
    "artray --help": ["--help"],
    "artray evaluate --help": ["evaluate", "--help"],
    "artray corpus info <corpus>": ["corpus", "info", "{corpus}"],
    "artray embed --help": ["embed", "--help"],  # a leaf: imports its own config module
}


def export_ref(ref: str, dest: Path) -> Path:
    """The tree of git `ref` written to `dest` (`git archive`: no worktree registered, nothing left behind)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def make_corpus(root: Path) -> str:
    """A 20-artwork ArtCap corpus written by this checkout (the corpus layout is the same on both sides)."""
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.scaffold.sample_corpora import make_samples

    samples = make_samples(str(root / "samples"), n=20)
    dest = str(root / "corpus")
    import_corpus(ImportConfig(format="artcap", src=samples["artcap"], dest=dest))
    return dest


def cli_argv() -> list[str]:
    script = Path(sys.executable).with_name("artray")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from artray.cli import main; sys.exit(main())"]


def run_once(checkout: Path, argv: list[str], cwd: Path) -> tuple[float, float, str]:
    """(CPU s, wall s, stdout) of one `artray ARGV` with `checkout` first on the import path."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cli_argv() + argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: artray {' '.join(argv)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, proc.stdout


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs per command and checkout (default: 5)")
    p.add_argument("--quick", action="store_true", help="2 runs each")
    p.add_argument("--baseline-ref", default="main", help="git ref to compare with (default: main)")
    p.add_argument("--baseline", help="a checkout folder to compare with, instead of --baseline-ref")
    a = p.parse_args()
    runs = 2 if a.quick else a.runs

    with tempfile.TemporaryDirectory(prefix="artray-cli-bench-") as tmp:
        tmp = Path(tmp)
        if a.baseline:
            baseline, base_name = Path(a.baseline).resolve(), str(a.baseline)
        else:
            baseline, base_name = export_ref(a.baseline_ref, tmp / "baseline"), a.baseline_ref
        checkouts = {"this": REPO, "baseline": baseline}
        corpus = make_corpus(tmp)
        load_before = load_average()
        print(machine_line())
        print(f"this: {REPO} ({_describe(REPO)}) | baseline: {base_name} | {runs} runs each\n")

        cpu = {(label, side): [] for label in COMMANDS for side in checkouts}
        wall = {key: [] for key in cpu}
        outputs: dict[tuple[str, str], str] = {}
        for r in range(runs):
            sides = list(checkouts) if r % 2 == 0 else list(reversed(checkouts))
            for label, argv in COMMANDS.items():
                argv = [arg.format(corpus=corpus) for arg in argv]
                for side in sides:
                    c, w, out = run_once(checkouts[side], argv, tmp)
                    cpu[label, side].append(c)
                    wall[label, side].append(w)
                    outputs[label, side] = out
        load_after = load_average()

    info = "artray corpus info <corpus>"
    if json.loads(outputs[info, "this"]) != json.loads(outputs[info, "baseline"]):
        raise SystemExit("corpus info printed different summaries:\n" + outputs[info, "this"] + outputs[info, "baseline"])
    rows = []
    for label in COMMANDS:
        t, b = cpu[label, "this"], cpu[label, "baseline"]
        rows.append([label, min(b), median(b), min(t), median(t), ratio(median(b), median(t)),
                     median(wall[label, "baseline"]), median(wall[label, "this"])])
    print(table(["command", "baseline CPU-s min", "baseline median", "this CPU-s min", "this median",
                 "baseline/this (median)", "baseline wall s", "this wall s"], rows, digits=2))
    print(f"\nload average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}; "
          f"after: {' '.join(f'{x:.2f}' for x in load_after)}. CPU = user + system of the command's process.")
    return 0


def _describe(path: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain"], capture_output=True,
                               text=True, check=True).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"


if __name__ == "__main__":
    sys.exit(main())
