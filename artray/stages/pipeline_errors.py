"""A stage's Ray Data pipeline that fails becomes one clear error, and lets go of the cluster.

Ray sends a remote failure as a traceback in text, whose first line is Ray's own wrapper
(``ray::Write() (pid=…, ip=…)``); a person needs the cause (``StorageError: could not write
s3://…``). And Ray Data logs the exception object itself, so any handler that keeps log records
(pytest, notebooks) would keep its traceback, the executor and the actor pool with their CPUs/GPUs
alive, and a rerun in the same process would wait forever for them.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
_EXC_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Exit): ")


def root_cause(exc: BaseException) -> str:
    """The last `Type: message` line of the remote traceback that is not Ray's own wrapper."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if _EXC_LINE.match(line) and not line.startswith("ray.")]
    return causes[-1] if causes else (lines[-1] if lines else type(exc).__name__)


def drop_tracebacks(exc: BaseException | None) -> None:
    """Free the frames of a failed run (and of every exception chained to it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__


def run_pipeline(execute: Callable[[], T], error: type[Exception], stage: str) -> T:
    """`execute()`; if it raises, raise `error` with the root cause on one line (and no Ray traceback)."""
    message = None
    try:
        return execute()
    except Exception as exc:  # noqa: BLE001 - re-raised below with the cause, as the stage's own error
        message = (f"the {stage} pipeline failed; committed rows are kept, run the same command again to resume. "
                   f"Cause: {root_cause(exc)} ({type(exc).__name__})")
        drop_tracebacks(exc)
    gc.collect()
    raise error(message)
