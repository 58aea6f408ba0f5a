"""Where a stage's fixed start-up goes: imports, Ray start (or join), Ray Data's first pipeline, an actor.

    .venv/bin/python bench/startup.py [--rounds 3] [--address ADDR | --cluster-dir DIR]

Each round is a fresh Python process (as a user's `artray <stage>` is) that times, in order:

* ``import``: ``import ray`` + the ingest stage's modules (what `artray ingest` imports before it
  connects);
* ``init_ray``: :func:`artray.runtime.init_ray` (a new local cluster, or joining ``--address``);
* ``data``: a one-block Ray Data pipeline (``from_items`` → ``map_batches`` → ``take_all``): Ray Data's
  planning, its first task and worker process;
* ``actor``: one actor created and called once (an actor-pool stage's first actor);
* ``shutdown``: ``ray.shutdown()``.

Prints one table (median of the rounds per phase) and one JSON line. CPU seconds of the whole process
tree (Ray's daemons included) are measured too, the figure least moved by other load on a shared
machine. Run it before and after a change, in one session, and write both into bench/RESULTS.md.
``--cluster-dir`` joins the cluster cluster/start-local.sh runs from DIR and adds the CPU its processes use
during each round (its workers run the round's tasks and actor) to the round's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SessionCPU, cluster_session, load_average, machine_line, median, table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHASES = ("import", "init_ray", "data", "actor", "shutdown")


def child(address: str | None) -> dict:
    """One fresh process's phases, in seconds."""
    out, t = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        out[name] = round(now - t, 3)
        t = now

    import ray

    import artray.stages.ingest  # noqa: F401  (what `artray ingest` imports before it connects)
    from artray.runtime import init_ray

    lap("import")
    init_ray(address)
    lap("init_ray")
    import ray.data

    rows = ray.data.from_items([{"x": i} for i in range(8)]).map_batches(lambda b: b, batch_size=8).take_all()
    assert len(rows) == 8
    lap("data")

    @ray.remote(num_cpus=0.1)
    class Echo:
        def ping(self) -> int:
            return 1

    assert ray.get(Echo.remote().ping.remote()) == 1
    lap("actor")
    ray.shutdown()
    lap("shutdown")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--address", help="join this cluster instead of starting one (RAY_ADDRESS)")
    p.add_argument("--cluster-dir", help="join the cluster/start-local.sh cluster of this folder; its CPU counts")
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        print("STARTUP " + json.dumps(child(args.address)), flush=True)
        return 0
    path = os.environ.get("PYTHONPATH", "")  # unchanged when it has this checkout (a joined head compares it)
    env = {**os.environ, "PYTHONPATH": path if str(REPO) in path.split(os.pathsep) else f"{REPO}{os.pathsep}{path}",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "ARTRAY_FRESH_RAY": "1"}  # no address: a new cluster, always
    env.pop("RAY_ADDRESS", None)
    cluster_sid = None
    if args.cluster_dir:
        args.address, cluster_sid = cluster_session(args.cluster_dir)
    runs, load_before = [], load_average()
    for _ in range(args.rounds):
        cmd = [sys.executable, __file__, "--_child"] + (["--address", args.address] if args.address else [])
        start = time.perf_counter()
        cluster_cpu = SessionCPU(cluster_sid, since_now=True) if cluster_sid else None
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        cpu = SessionCPU(proc.pid)
        stdout, stderr = proc.communicate(timeout=600)
        cpu_s = (cpu.stop() or 0) + ((cluster_cpu.stop() or 0) if cluster_cpu else 0)
        wall = time.perf_counter() - start
        line = next((ln for ln in stdout.splitlines() if ln.startswith("STARTUP ")), None)
        if proc.returncode != 0 or line is None:
            print(stdout[-2000:], stderr[-3000:], file=sys.stderr)
            return 1
        runs.append({**json.loads(line[len("STARTUP "):]), "wall": round(wall, 3), "cpu": round(cpu_s or 0, 2)})
    keys = (*PHASES, "wall", "cpu")
    med = {k: median([r[k] for r in runs]) for k in keys}
    print(machine_line())
    print(table(["phase", "median s", "rounds"], [[k, f"{med[k]:.2f}", ", ".join(f"{r[k]:.2f}" for r in runs)]
                                                 for k in keys]))
    report = {"phases_median_s": med, "runs": runs, "load_before": load_before, "load_after": load_average(),
              "address": args.address}
    print(json.dumps(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
