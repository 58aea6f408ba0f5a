"""A stage's driver joins a running cluster/start-local.sh head the way that head wants to be joined: without
a token when the head has token auth off, even though this machine has a ~/.ray/auth_token (a driver in
token mode cannot join such a head), and by default, without RAY_ADDRESS, when the head is this user's and
runs this Python environment; its workers then see the driver's folder, so relative paths mean the same
files. One real head (cluster/start-local.sh, its own folder and port), real drivers in subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = ("import os, ray; from artray.runtime import init_ray, cluster_auth_mode; "
         "import sys; address = sys.argv[1] if len(sys.argv) > 1 else None; "
         "print('auth', address and cluster_auth_mode(address)); init_ray(address); "
         "print('cpus', int(ray.cluster_resources()['CPU'])); "
         "print('same cwd', ray.get(ray.remote(lambda: os.getcwd()).remote()) == os.getcwd()); "
         "print('runtime_env', sorted(ray.get_runtime_context().runtime_env))")


@pytest.fixture(scope="module")
def head_without_token(tmp_path_factory):
    """A loopback start-local.sh head with token auth off (RAY_AUTH_MODE=disabled), 1 CPU; a HOME that has a
    token file. Yields (address, cluster dir, env for its clients)."""
    from tests.test_cluster_configs import _stop_local, free_port_pair

    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("0123456789abcdef0123456789abcdef\n")
    (home / ".ray" / "auth_token").chmod(0o600)
    short = Path(tempfile.mkdtemp(prefix="arj", dir="/tmp"))  # Ray's socket paths leave 46 characters
    port = free_port_pair()
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE",
                        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "ARTRAY_FRESH_RAY")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), ARTRAY_CLUSTER_DIR=str(short / "c"))
    start_env = {**env, "ARTRAY_RAY_PORT": str(port), "ARTRAY_DASHBOARD_PORT": str(port + 1),
                 "RAY": str(Path(sys.executable).parent / "ray"), "RAY_AUTH_MODE": "disabled"}
    head_cwd = tmp_path_factory.mktemp("head-cwd")  # where its workers start
    out = subprocess.run(["bash", str(REPO / "cluster/start-local.sh"), "--num-cpus=1"], env=start_env, text=True,
                         capture_output=True, timeout=120, cwd=head_cwd)
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        yield f"127.0.0.1:{port}", short / "c", env, head_cwd
    finally:
        _stop_local(short / "c")
        shutil.rmtree(short, ignore_errors=True)


def _driver(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], env=env, cwd=cwd, text=True, capture_output=True,
                          timeout=120)


def test_a_driver_with_a_token_joins_a_head_without_token_auth(head_without_token, tmp_path):
    address, _, env, _ = head_without_token
    joined = _driver(env, tmp_path, address)  # only the address, as `artray <stage> --address` gives it
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "auth disabled" in joined.stdout and "cpus 1" in joined.stdout, joined.stdout
    assert "same cwd True" in joined.stdout, "a joined same-machine cluster's workers work in the driver's folder"


def test_without_an_address_the_running_local_cluster_is_joined_and_said_so(head_without_token, tmp_path):
    address, cluster_dir, env, _ = head_without_token
    assert f"# python-prefix: {sys.prefix}" in (cluster_dir / "client.env").read_text()
    joined = _driver(env, tmp_path)  # no RAY_ADDRESS, no --address
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "cpus 1" in joined.stdout and "same cwd True" in joined.stdout, joined.stdout  # its 1 CPU, not a new 2
    assert f"[artray] joined the running local Ray cluster at {address} ({cluster_dir}" in joined.stderr
    assert "--fresh-ray" in joined.stderr


def test_a_driver_in_the_heads_folder_passes_no_runtime_env(head_without_token):
    """Same folder, same PYTHONPATH as the head's workers: no env vars, so the head's idle workers serve the job
    (a runtime_env of its own would start new worker processes: seconds per run on 2 cores)."""
    address, _, env, head_cwd = head_without_token
    joined = _driver(env, head_cwd, address)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert "same cwd True" in joined.stdout and "runtime_env []" in joined.stdout, joined.stdout
