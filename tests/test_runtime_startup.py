"""What `init_ray` decides before it starts or joins Ray, without starting one: a cluster that
cluster/start-local.sh left running is found and joined by default when that is safe (this user's,
loopback-only, the same Python environment), the user is told to source it otherwise, and one whose
head is gone is not found."""

from __future__ import annotations

import socket
import sys

import pytest

from artray import runtime


def _client_env(folder, port: int, prefix: str | None = None) -> None:
    folder.mkdir()
    (folder / "client.env").write_text(f"# Written by cluster/start-local.sh\nexport RAY_ADDRESS=127.0.0.1:{port}"
                                       "                        # artray <stage>, ray.init()\n"
                                       "export RAY_AUTH_MODE=token\n"
                                       + (f"# python-prefix: {prefix}\n" if prefix else ""), encoding="utf-8")


@pytest.fixture
def head_port():
    """A listening "GCS" on 127.0.0.1."""
    with socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen()
        yield head.getsockname()[1]


def test_a_running_cluster_of_this_python_is_joined_by_default_unless_fresh_ray(tmp_path, monkeypatch, head_port):
    monkeypatch.delenv("ARTRAY_CLUSTER_DIR", raising=False)
    _client_env(tmp_path / "artray-ray-other", head_port, prefix=str(tmp_path / "another-venv"))
    pattern = str(tmp_path / "artray-ray-*" / "client.env")
    assert runtime.joinable_local_cluster(pattern) is None  # its workers would import another environment's code
    _client_env(tmp_path / "artray-ray-mine", head_port, prefix=sys.prefix)
    found = runtime.joinable_local_cluster(pattern)
    assert found["RAY_ADDRESS"] == f"127.0.0.1:{head_port}" and found["RAY_AUTH_MODE"] == "token"
    assert found["dir"] == str(tmp_path / "artray-ray-mine")
    monkeypatch.setenv("ARTRAY_FRESH_RAY", "1")  # tests and --fresh-ray: never join
    assert runtime.fresh_ray_requested()
    monkeypatch.setenv("ARTRAY_FRESH_RAY", "0")
    assert not runtime.fresh_ray_requested()


def test_a_running_local_cluster_is_found_and_a_stopped_one_is_not(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ARTRAY_FRESH_RAY")
    with socket.socket() as head:  # a listening "GCS"
        head.bind(("127.0.0.1", 0))
        head.listen()
        _client_env(tmp_path / "artray-ray-live", head.getsockname()[1])
        with socket.socket() as gone:
            gone.bind(("127.0.0.1", 0))
            dead_port = gone.getsockname()[1]  # bound, never listening: nothing answers there
            _client_env(tmp_path / "artray-ray-dead", dead_port)
            pattern = str(tmp_path / "artray-ray-*" / "client.env")
            assert runtime.running_local_clusters(pattern) == [str(tmp_path / "artray-ray-live" / "client.env")]
            monkeypatch.setattr(runtime, "LOCAL_CLUSTER_ENVS", pattern)
            runtime._hint_running_cluster()
    err = capsys.readouterr().err
    assert f"source {tmp_path / 'artray-ray-live' / 'client.env'}" in err and "skip Ray's start-up" in err
    assert "not joined: its workers run another Python environment" in err  # why it was not joined by default


def test_no_hint_without_a_running_cluster(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ARTRAY_FRESH_RAY")
    monkeypatch.setattr(runtime, "LOCAL_CLUSTER_ENVS", str(tmp_path / "artray-ray-*" / "client.env"))
    runtime._hint_running_cluster()
    assert capsys.readouterr().err == ""


def test_a_joined_heads_workers_get_the_drivers_folder_and_pythonpath_only_where_they_differ(tmp_path, monkeypatch):
    """Any env var gives the job's workers a runtime_env of their own (new worker processes, seconds on 2 cores),
    so a stage passes its folder and PYTHONPATH only where the head's client.env says its workers have others."""
    (tmp_path / "client.env").write_text("export RAY_ADDRESS=127.0.0.1:6379\n# python-prefix: /venv\n"
                                         f"# cwd: {tmp_path}\n# pythonpath: \n", encoding="utf-8")
    head = runtime.read_client_env(str(tmp_path / "client.env"))
    assert (head["python_prefix"], head["cwd"], head["pythonpath"]) == ("/venv", str(tmp_path), "")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    assert runtime.same_machine_worker_env(head) == {}  # same folder, same PYTHONPATH: the head's idle workers serve
    monkeypatch.setenv("PYTHONPATH", "/src/artray")
    monkeypatch.chdir(tmp_path.parent)
    assert runtime.same_machine_worker_env(head) == {runtime.DRIVER_CWD_ENV: str(tmp_path.parent),
                                                     "PYTHONPATH": "/src/artray"}
    assert runtime.same_machine_worker_env(None) == runtime.same_machine_worker_env(head)  # unknown head: both
