"""`artray serve run <config>` on a machine with no cluster: the Ray it starts (GCS, raylet, agents, the
Serve proxy and replicas) and the search API listen on 127.0.0.1 only (the README's Security section).
Ray's own `serve run <config>` would start a Ray with its defaults, listening on every interface."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

import sockets
from cli_process import interrupt
from artray.runtime import free_port
from artray.scaffold.demo_indexes import demo_indexes
from artray.serve.local import serve_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def index(ray_local, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("serve-run")
    return demo_indexes(str(root), n=8, tiny_dir=str(tmp_path_factory.getbasetemp() / "tiny"), names=("longclip",))


def _wait_up(proc: subprocess.Popen, url: str, timeout_s: float = 240) -> list[tuple[str, str, int]]:
    """The listening sockets of `proc`'s tree once /healthz answers and the ingress replica (which holds the model)
    listens on its Ray worker port and its Serve gRPC port."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                found = sockets.listening(proc.pid)
                if r.status == 200 and sum("ServeReplica" in name for name, _, _ in found) >= 2:
                    return found
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"`artray serve run` did not come up (exit code {proc.poll()})")


def test_artray_serve_run_starts_a_ray_listening_on_loopback_only(index, tmp_path):
    port = free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(serve_config(index, port), sort_keys=False), encoding="utf-8")
    ray_tmp = tempfile.mkdtemp(prefix="/tmp/arserve")  # short: Ray's socket paths have a length limit
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ARTRAY_BIND")}
    env.update(PYTHONPATH=str(REPO), RAY_TMPDIR=ray_tmp)
    log = open(tmp_path / "serve-run.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("artray")), "serve", "run", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path))
    pids: set[int] = set()
    try:
        listening = _wait_up(proc, f"http://127.0.0.1:{port}")
        pids = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        names = {name for name, _, _ in listening}
        assert {"gcs_server", "raylet"} <= names and any("ProxyActor" in n for n in names), listening
        assert sockets.wide(listening) == [], f"listening beyond 127.0.0.1: {sockets.wide(listening)}"
        assert [ip for _, ip, p in listening if p == port] == ["127.0.0.1"]
    finally:
        interrupt(proc)  # Ctrl-C: `serve run` shuts Serve down (and a local Ray it started)
        log.close()
        deadline = time.time() + 30
        while time.time() < deadline and any(psutil.pid_exists(p) for p in pids):
            time.sleep(1)
        for pid in pids:  # the cluster this test started, if anything of it is left
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, (tmp_path / "serve-run.log").read_text(errors="replace")[-3000:]
