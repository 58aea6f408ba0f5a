"""What `init_ray` does before starting a private cluster, without starting one: a cluster that
cluster/start-local.sh left running is found (so the user is told to join it instead of paying Ray's
start-up again), and one whose head is gone is not."""

from __future__ import annotations

import socket

from artray import runtime


def _client_env(folder, port: int) -> None:
    folder.mkdir()
    (folder / "client.env").write_text(f"# Written by cluster/start-local.sh\nexport RAY_ADDRESS=127.0.0.1:{port}"
                                       "                        # artray <stage>, ray.init()\n"
                                       "export RAY_AUTH_MODE=token\n", encoding="utf-8")


def test_a_running_local_cluster_is_found_and_a_stopped_one_is_not(tmp_path, monkeypatch, capsys):
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


def test_no_hint_without_a_running_cluster(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runtime, "LOCAL_CLUSTER_ENVS", str(tmp_path / "artray-ray-*" / "client.env"))
    runtime._hint_running_cluster()
    assert capsys.readouterr().err == ""
