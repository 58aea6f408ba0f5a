"""artray's CLI as a subprocess in tests: stopping it the way a user does."""

from __future__ import annotations

import signal
import subprocess


def interrupt(proc: subprocess.Popen, wait_s: float = 90) -> int:
    """Ctrl-C `proc` (SIGINT: `serve run` shuts Serve down, and a local Ray it started), then wait up to `wait_s`;
    kill it if it is still running then. Its exit code."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)
