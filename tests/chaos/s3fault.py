"""An S3 endpoint that can go down: a dedicated moto server subprocess, optionally behind a TCP
proxy that can be cut (listener closed, every open connection reset mid-transfer) and brought
back on the same port while moto keeps its objects (moto has no on-disk persistence)."""

from __future__ import annotations

import socket
import struct
import threading

import moto_server

from artray.runtime import free_port


class MotoProcess(moto_server.MotoProcess):
    """The test server (tests/moto_server.py) plus a client that fails fast once it is gone."""

    def client(self):
        """A boto3 client straight to this server; fails fast (no retries) once the server is gone."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10))


class CuttableProxy:
    """127.0.0.1:`port` → 127.0.0.1:`target`; `cut()` takes the endpoint down, `resume()` brings it back."""

    def __init__(self, target: int):
        self.target, self.port = target, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.resume()

    def resume(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> int:
        """Close the listener and reset every open connection; returns how many were cut."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
                conn.close()
            except OSError:
                pass
        return len(conns)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
