"""Connecting to Ray the same way from the CLI, `ray job submit` entrypoints and tests."""

from __future__ import annotations

import os
import socket


def init_ray(address: str | None = None) -> None:
    """Attach to the cluster at `address` / $RAY_ADDRESS, or start a local one bound to 127.0.0.1.

    A job submitted with `ray job submit` already has RAY_ADDRESS set and joins its cluster.
    A local cluster started here never opens the dashboard, so nothing listens beyond loopback.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level="WARNING")
    else:
        ray.init(include_dashboard=False, logging_level="WARNING")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (artray's local servers never bind another address)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
