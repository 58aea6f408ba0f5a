"""What a person sees while artray runs: one live progress line per stage, its summary, and Ray's own
logs in a file whose path is printed.

Ray, Ray Data and Ray Train log freely to the console (INFO lines, progress bars redrawn from
workers, actor-state warnings every few seconds). artray's console keeps only its own lines:

- `route_ray_logs` sends the driver's Ray loggers to a file (``artray-driver.log`` beside Ray's
  session logs) instead of the terminal, unless ``--verbose``; workers' output stays in Ray's
  session logs (``ray.init(log_to_driver=False)``, see `ray_init_kwargs`).
- `StageProgress` draws one line per stage: rows done/total, rows/s, ETA and failures. The
  workers add to a `ProgressCounter` actor (no CPU) after each committed batch; the driver polls
  it. On a terminal the line is redrawn in place; anywhere else (CI, `ray job logs`, a file) a
  plain new line is printed at most every ``ARTRAY_PROGRESS_INTERVAL_S`` seconds (default 30)
  and once at the end, with no escape codes.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

VERBOSE_ENV = "ARTRAY_VERBOSE"  # set by `artray -v`: Ray's own logs and progress bars stay on the console
INTERVAL_ENV = "ARTRAY_PROGRESS_INTERVAL_S"
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")
DRIVER_LOG = "artray-driver.log"


def verbose() -> bool:
    """True when the user asked for Ray's own logs on the console (`artray -v` / ARTRAY_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def ray_init_kwargs() -> dict:
    """Extra `ray.init` arguments for a quiet console: workers' output stays in Ray's session logs."""
    return {} if verbose() else {"log_to_driver": False}


def _logs_dir() -> Path:
    try:  # the logs folder of the Ray session this driver is part of
        from ray._private import worker

        node = worker.global_worker.node
        if node is not None:
            return Path(node.get_logs_dir_path())
    except Exception:  # Ray not started, or its internals moved: fall back to a folder of our own
        pass
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "artray" / "logs"


_routed: str | None = None


def route_ray_logs() -> str | None:
    """Move Ray's console logging of this process into a file and return its path (None when verbose).

    Ray's loggers keep their file handlers (Ray Data's ``ray-data.log`` among them); their console
    handlers only pass warnings and errors. Python warnings raised inside Ray go to the same file.
    """
    global _routed
    if verbose():
        return None
    if _routed:
        return _routed
    logs = _logs_dir()
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / DRIVER_LOG
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for h in logger.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setLevel(max(h.level, logging.WARNING))
        logger.addHandler(handler)
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.addHandler(handler)
    warnings_logger.propagate = False
    _routed = str(path)
    return _routed


class ProgressCounter:
    """Rows committed and failed so far, added to by workers (a Ray actor with no CPU)."""

    def __init__(self):
        self.ok, self.failed = 0, 0

    def add(self, ok: int, failed: int = 0) -> None:
        self.ok += ok
        self.failed += failed

    def read(self) -> tuple[int, int]:
        return self.ok, self.failed


def report(counter, ok: int, failed: int = 0):
    """From a worker: add a committed batch to the stage's progress (None: no progress). Fire and forget:
    the returned ObjectRef need not be awaited."""
    if counter is not None and (ok or failed):
        return counter.add.remote(ok, failed)
    return None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def progress_line(stage: str, done: int, failed: int, total: int | None, elapsed: float) -> str:
    """``[embed] 120/400 rows 30%, 12.3 rows/s, ETA 0:23, 2 failed`` (what, how far, how fast, how long)."""
    rate = (done + failed) / elapsed if elapsed > 0 else 0.0
    parts = [f"[{stage}] {done + failed}/{total} rows {100 * (done + failed) / total:.0f}%" if total
             else f"[{stage}] {done + failed} rows"]
    parts.append(f"{rate:.1f} rows/s")
    if total and rate > 0 and done + failed < total:
        parts.append(f"ETA {_duration((total - done - failed) / rate)}")
    if failed:
        parts.append(f"{failed} failed")
    return ", ".join(parts)


class StageProgress:
    """The live progress line of one stage (a context manager); `counter` goes to the workers."""

    def __init__(self, stage: str, total: int | None, stream: TextIO | None = None, interval_s: float | None = None,
                 tty: bool | None = None, poll_s: float = 0.5):
        self.stage, self.total = stage, total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = interval_s if interval_s is not None else float(os.environ.get(INTERVAL_ENV, "30"))
        self.poll_s = poll_s
        self.counter = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._last_print = 0.0
        self._shown = (0, 0)
        self._final: tuple[int, int] | None = None

    def __enter__(self) -> "StageProgress":
        import ray

        self.counter = ray.remote(num_cpus=0)(ProgressCounter).options(max_concurrency=4).remote()
        self._started = self._last_print = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name=f"artray-progress-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def finish(self, ok: int, failed: int) -> None:
        """The stage's exact final counts (reports still in flight may be missing from the counter)."""
        self._final = (ok, failed)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._poll()
        if self._final is not None:
            self._shown = self._final
        self._draw(final=True)
        if self.counter is not None:
            import ray

            ray.kill(self.counter)
            self.counter = None

    def _poll(self) -> None:
        if self.counter is None:
            return
        import ray

        try:
            self._shown = ray.get(self.counter.read.remote(), timeout=10)
        except Exception:  # progress is best effort: never fail a stage over it
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll()
            self._draw()

    def _draw(self, final: bool = False) -> None:
        line = progress_line(self.stage, *self._shown, self.total, time.monotonic() - self._started)
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K" + ("\n" if final else ""))
        elif final or time.monotonic() - self._last_print >= self.interval_s:
            self.stream.write(line + "\n")
            self._last_print = time.monotonic()
        self.stream.flush()
