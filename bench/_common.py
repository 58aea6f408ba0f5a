"""Small helpers shared by the benchmarks in bench/: a timer, machine notes, result tables.

Benchmarks here run on shared, noisy machines, so every benchmark measures the tools it
compares side by side in one run and reports ratios; absolute figures are context only.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Sequence
from typing import Self


class Timer:
    """`with Timer() as t: ...` then `t.s` (seconds, perf_counter); `t.s` also works while running."""

    def __enter__(self) -> Self:
        self.start = time.perf_counter()
        self.end: float | None = None
        return self

    def __exit__(self, *exc) -> None:
        self.end = time.perf_counter()

    @property
    def s(self) -> float:
        return (self.end if self.end is not None else time.perf_counter()) - self.start


class SessionCPU:
    """CPU seconds (user + system) used by every process of one session, sampled from /proc.

    Start the measured command with ``subprocess.Popen(..., start_new_session=True)`` and
    pass its pid: every descendant keeps that session id (Ray's raylet, workers and actors
    included, though they change process group), so the whole tree is counted. CPU time
    is far less disturbed by other people's load than wall time, which makes it the
    steadier number on a shared machine. Sampled every `interval` s: a process that ends
    between samples loses at most its last interval, so figures are slight underestimates.
    Linux only; `seconds` is None elsewhere. ``since_now=True`` counts only the CPU used from now on (the
    processes of a running cluster a benchmark joins, see `cluster_session`).
    """

    def __init__(self, sid: int, interval: float = 0.2, since_now: bool = False):
        import threading

        self.sid, self.interval = sid, interval
        self._seen: dict[tuple[int, str], float] = {}
        self._base: dict[tuple[int, str], float] = {}
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = os.path.isdir("/proc/self")
        self._thread = threading.Thread(target=self._loop, daemon=True)
        if self.available and since_now:  # a session that runs already (a cluster): count only from now on
            self._sample()
            self._base = dict(self._seen)
        if self.available:
            self._thread.start()

    def _sample(self) -> None:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    raw = fh.read().decode(errors="replace")
            except OSError:
                continue
            rest = raw[raw.rfind(")") + 2:].split()
            if len(rest) < 20 or int(rest[3]) != self.sid:
                continue
            cpu = (int(rest[11]) + int(rest[12])) / self._tick  # utime + stime
            key = (int(name), rest[19])  # pid + start time: pids get reused
            self._seen[key] = max(cpu, self._seen.get(key, 0.0))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def stop(self) -> float | None:
        """Stop sampling; the CPU seconds seen (call right after the process exits)."""
        if not self.available:
            return None
        self._stop.set()
        self._thread.join()
        return self.seconds

    @property
    def seconds(self) -> float | None:
        return sum(v - self._base.get(k, 0.0) for k, v in self._seen.items()) if self.available else None


def cluster_session(cluster_dir: str) -> tuple[str, int]:
    """(GCS address, session id) of the cluster cluster/start-local.sh runs from `cluster_dir`: its client.env's
    RAY_ADDRESS and its process group (setsid: group id = session id), whose CPU a joining run adds to its own."""
    from pathlib import Path

    env = Path(cluster_dir, "client.env").read_text(encoding="utf-8")
    address = next(ln.split("=", 1)[1].split("#")[0].strip() for ln in env.splitlines()
                   if ln.startswith("export RAY_ADDRESS="))
    return address, int(Path(cluster_dir, "cluster.pgid").read_text().strip())


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def machine_line() -> str:
    """One line describing where the numbers came from (paste it next to them)."""
    la = load_average()
    return (f"{time.strftime('%Y-%m-%d %H:%M')} | {os.cpu_count()} CPUs ({platform.machine()}), "
            f"Python {platform.python_version()} | load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either side is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def table(headers: Sequence[str], rows: Sequence[Sequence], digits: int = 1) -> str:
    """A plain-text table (also valid Markdown), columns padded to their widest cell."""
    cells = [list(headers)] + [[fmt(c, digits) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def write_json(path: str | None, obj: dict) -> None:
    """Write a benchmark's result as JSON to `path` (``--json``), for bench/gpu_table.py; no-op without one."""
    if not path:
        return
    import json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1, default=str)
        fh.write("\n")


def device_name() -> str:
    """The GPU's name (``torch.cuda.get_device_name``) when torch sees one, else "CPU"."""
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    except Exception:  # noqa: BLE001 - no torch, or a broken driver: the figures came from the CPU
        return "CPU"


def steady_from_two_runs(n_small: int, t_small: float, n_big: int, t_big: float) -> dict:
    """Start-up and steady-state rate of one tool from two runs of the same work at two sizes.

    steady items/s = (n_big − n_small) / (t_big − t_small): the cost of each extra item once the tool
    runs, whatever its start-up; start-up s = t_small − n_small / steady (imports, model load, actor
    start: what a run of zero items would take). Measured from wall times only, so it needs no hook
    inside the tool and means the same for every tool. None when the big run was not slower.
    """
    if n_big <= n_small or t_big <= t_small:
        return {"startup_s": None, "steady_per_s": None, "steady_items": n_big - n_small}
    rate = (n_big - n_small) / (t_big - t_small)
    return {"startup_s": round(t_small - n_small / rate, 3), "steady_per_s": round(rate, 3),
            "steady_items": n_big - n_small}
