"""A real S3-compatible server for tests: moto in server mode, as a subprocess on 127.0.0.1
(the session's `s3_endpoint` fixture and the chaos suite's storage faults both start it)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from artray.runtime import free_port


def wait_port(port: int, timeout: float = 30) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`; raise after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


class MotoProcess:
    """`python -m moto.server` on 127.0.0.1:`port` (a fresh free port if None), in memory."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port)
        except RuntimeError:
            self.kill()
            raise

    def stop(self) -> None:
        """SIGTERM and wait: a clean end of the server."""
        self.proc.terminate()
        self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: the server and everything it held are gone at once."""
        self.proc.kill()
        self.proc.wait(30)
