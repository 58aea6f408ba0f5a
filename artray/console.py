"""What a person sees while artray runs: one live progress line per stage, its summary, and Ray's own
logs in a file whose path is printed.

Ray, Ray Data and Ray Train log freely to the console (INFO lines, progress bars redrawn from
workers, actor-state warnings every few seconds). artray's console keeps only its own lines:

- `route_ray_logs` sends the driver's Ray loggers to a file (``artray-driver.log`` beside Ray's
  session logs) instead of the terminal, unless ``--verbose``; workers' output stays in Ray's
  session logs (``ray.init(log_to_driver=False)``, see `ray_init_kwargs`). Other libraries'
  loggers (DeepSpeed's accelerator notice, faiss's loader …) pass errors only
  (`setup_cli_logging`), and Ray's C++ core's one-off actor-restart notice goes to the same file
  (`spend_actor_restart_notice`); errors of all of them still reach the console.
- `StageProgress` draws one line per stage: rows done/total, rows/s, ETA and failures. The
  workers add to a `ProgressCounter` actor (no CPU) after each committed batch; the driver polls
  it. On a terminal the line is redrawn in place; anywhere else (CI, `ray job logs`, a file) a
  plain new line is printed at most every ``ARTRAY_PROGRESS_INTERVAL_S`` seconds (default 30)
  and once at the end, with no escape codes.
"""

from __future__ import annotations

import contextlib
import io
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
# Libraries that log routine notices at INFO/WARNING (faiss's loader, DeepSpeed's accelerator choice): errors only.
CHATTY_LOGGERS = ("faiss", "faiss.loader", "DeepSpeed", "deepspeed", "torch.distributed", "transformers",
                  "diffusers", "urllib3", "filelock", "numexpr", "jieba")
DRIVER_LOG = "artray-driver.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def verbose() -> bool:
    """True when the user asked for Ray's own logs on the console (`artray -v` / ARTRAY_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


class _ErrorsOnly(logging.Filter):
    """Lets records of ERROR and above through. Set on a chatty library's logger beside its level, because
    some set their own level when imported (DeepSpeed's logger: INFO, with a stdout handler of its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


_ERRORS_ONLY = _ErrorsOnly()


class _ConsoleFormatter(logging.Formatter):
    """artray's own INFO lines as bare ``[stage] …`` lines, like its progress and summary lines; everything
    else (warnings, errors, other libraries) with time, level and logger name."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno == logging.INFO and record.name.startswith("artray"):
            return record.getMessage()
        return super().format(record)


def setup_cli_logging(verbose_flag: bool) -> None:
    """The CLI's logging: artray's own INFO lines on the console; other libraries' routine notices only
    with ``-v`` (they still reach Ray's log files through Ray's own handlers); their errors always."""
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"  # Ray workers inherit it too
    logging.basicConfig(level=logging.DEBUG if verbose_flag else logging.WARNING, format=LOG_FORMAT)
    logging.getLogger("artray").setLevel(logging.DEBUG if verbose_flag else logging.INFO)
    if verbose_flag:
        return
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_ConsoleFormatter(LOG_FORMAT))
    for name in CHATTY_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.ERROR)
        if _ERRORS_ONLY not in logger.filters:
            logger.addFilter(_ERRORS_ONLY)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading checkpoint shards" bars


@contextlib.contextmanager
def captured_output(what: str):
    """Keep a library's print()s off the console (they go to the debug log), unless verbose."""
    if verbose():
        yield
        return
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield
    text = (out.getvalue() + err.getvalue()).strip()
    if text:
        logging.getLogger("artray.console").debug("%s said:\n%s", what, text)


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


def _ray_console_handlers() -> list[logging.Handler]:
    """The handlers that print Ray's loggers on the console (not their file handlers)."""
    return [h for name in RAY_LOGGERS for h in logging.getLogger(name).handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def route_ray_logs() -> str | None:
    """Move Ray's console logging of this process into a file and return its path (None when verbose).

    Ray's loggers keep their file handlers (Ray Data's ``ray-data.log`` among them); their console
    handlers only pass errors (Ray's warnings, such as Ray Data's "no available CPUs" while actors
    hold them, are in the file). Python warnings go to the same file.
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
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for h in _ray_console_handlers():
        h.setLevel(max(h.level, logging.ERROR))
    for name in RAY_LOGGERS:
        logging.getLogger(name).addHandler(handler)
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.addHandler(handler)
    warnings_logger.propagate = False
    _routed = str(path)
    return _routed


def quiet_ray_console() -> None:
    """After `ray.init`: Ray's driver logs to a file (its path printed once) and no Ray Data progress bars,
    unless verbose; artray's own progress lines replace them."""
    if verbose():
        return
    import ray.data

    from ray.util.debug import log_once

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    log_once("ray_data_progress_manager_disabled")  # Ray Data's "Progress bars disabled" notice: ours replace them
    first = _routed is None
    path = route_ray_logs()
    if first:  # said once per process
        spend_actor_restart_notice(path)
        sys.stderr.write(f"[artray] Ray's own logs: {path} and {Path(path).parent} (artray -v shows them here)\n")


class _NoticeProbe:
    """The actor `spend_actor_restart_notice` submits (and kills before it is ever scheduled)."""

    def __init__(self, _arg):
        pass


def spend_actor_restart_notice(log_path: str) -> None:
    """Send Ray's "actor … has constructor arguments in the object store and max_restarts > 0" line to
    `log_path` instead of the console.

    Ray's C++ core logs it at ERROR, once per process, when an actor that restarts is created with an
    ObjectRef argument (ray-project/ray#53727). Every Ray Data actor pool is such an actor: its UDF
    travels as an ObjectRef that Ray Data keeps alive, so its restarts work and the line asks nothing of
    the user. This submits one such actor (needing a resource no node has, so it is never scheduled, and
    killed at once) while the process's stderr points at the log file: the line is written there, and
    Ray does not say it again. Any other error of Ray's core reaches the console as before."""
    import ray

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(log_path, "a", encoding="utf-8") as log:
            os.dup2(log.fileno(), 2)  # the line is written while the actor is submitted, in this thread
            try:
                probe = ray.remote(_NoticeProbe).options(
                    num_cpus=0, max_restarts=1, resources={"artray-never-scheduled": 1}).remote(ray.put(None))
            finally:
                os.dup2(saved, 2)
        ray.kill(probe, no_restart=True)
    except Exception as exc:  # noqa: BLE001  a notice is not worth failing a stage over
        logging.getLogger("artray.console").debug("could not spend Ray's actor-restart notice: %s", exc)
    finally:
        os.close(saved)


@contextlib.contextmanager
def quiet_ray_init():
    """Around `ray.init`: Ray's console loggers pass errors only (its notices then go nowhere; the lines
    that matter after start-up reach the file `route_ray_logs` sets up)."""
    if verbose():
        yield
        return
    handlers = _ray_console_handlers()
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(max(h.level, logging.ERROR))
    try:
        yield
    finally:
        for h, level in zip(handlers, levels):
            h.setLevel(level)


class ProgressCounter:
    """Units done and failed so far, and lines for people, added to by workers (a Ray actor with no CPU)."""

    def __init__(self):
        self.ok, self.failed, self.notes = 0, 0, []

    def add(self, ok: int, failed: int = 0) -> None:
        self.ok += ok
        self.failed += failed

    def note(self, text: str) -> None:
        self.notes.append(text)

    def read(self, notes_seen: int = 0) -> tuple[int, int, list[str]]:
        return self.ok, self.failed, self.notes[notes_seen:]


def report(counter, ok: int, failed: int = 0):
    """From a worker: add a committed batch to the stage's progress (None: no progress). Fire and forget:
    the returned ObjectRef need not be awaited."""
    if counter is not None and (ok or failed):
        return counter.add.remote(ok, failed)
    return None


def note(counter, text: str):
    """From a worker: a line for the driver's console (an epoch's metrics), printed above the progress line."""
    return counter.note.remote(text) if counter is not None else None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


def progress_line(stage: str, done: int, failed: int, total: int | None, elapsed: float, unit: str = "rows") -> str:
    """``[embed] 120/400 rows 30%, 12.3 rows/s, ETA 0:23, 2 failed`` (what, how far, how fast, how long)."""
    rate = (done + failed) / elapsed if elapsed > 0 else 0.0
    parts = [f"[{stage}] {done + failed}/{total} {unit} {100 * (done + failed) / total:.0f}%" if total
             else f"[{stage}] {done + failed} {unit}"]
    if done + failed or unit == "rows":  # no rate before the first unit is done
        parts.append(f"{rate:.1f} {unit}/s" if rate >= 0.1 or unit == "rows"
                     else f"{elapsed / (done + failed):.0f} s/{unit.rstrip('s')}")
    if total and rate > 0 and done + failed < total:
        parts.append(f"ETA {_duration((total - done - failed) / rate)}")
    if failed:
        parts.append(f"{failed} failed")
    return ", ".join(parts)


class StageProgress:
    """The live progress line of one stage (a context manager); `counter` goes to the workers.

    With ``workers_report=False`` there is no counter actor (one worker process fewer to start before the
    stage's own actors): the driver, which then sees every committed batch, counts them with `add`."""

    def __init__(self, stage: str, total: int | None, stream: TextIO | None = None, interval_s: float | None = None,
                 tty: bool | None = None, poll_s: float = 0.5, unit: str = "rows", workers_report: bool = True):
        self.stage, self.total, self.unit = stage, total, unit
        self.workers_report = workers_report
        self._notes_seen = 0
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

        if self.workers_report:
            self.counter = ray.remote(num_cpus=0)(ProgressCounter).options(max_concurrency=4).remote()
        self._started = self._last_print = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name=f"artray-progress-{self.stage}", daemon=True)
        self._thread.start()
        return self

    def add(self, ok: int, failed: int = 0) -> None:
        """From the driver (``workers_report=False``): a committed batch's counts."""
        self._shown = (self._shown[0] + ok, self._shown[1] + failed)

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
            ok, failed, notes = ray.get(self.counter.read.remote(self._notes_seen), timeout=10)
        except Exception:  # progress is best effort: never fail a stage over it
            return
        self._shown = (ok, failed)
        self._notes_seen += len(notes)
        for text in notes:  # above the live line
            self.stream.write(("\r\x1b[K" if self.tty else "") + text + "\n")

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._poll()
            self._draw()

    def _draw(self, final: bool = False) -> None:
        line = progress_line(self.stage, *self._shown, self.total, time.monotonic() - self._started, self.unit)
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K" + ("\n" if final else ""))
        elif final or time.monotonic() - self._last_print >= self.interval_s:
            self.stream.write(line + "\n")
            self._last_print = time.monotonic()
        self.stream.flush()
