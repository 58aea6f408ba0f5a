"""`artray serve run <config> --direct-ingress` joining a running Ray: Serve's direct ingress (Ray 2.60), where the
ingress replica answers HTTP on its own port, with the same routes, answers, auth and metrics as through the proxy.

One Serve start for the module: the real CLI as a subprocess, joining the session's Ray (no Ray start-up), the
tiny Long-CLIP index, auth on. The refusal to turn direct ingress on where Serve already runs without it is
tested in tests/test_serve.py, beside a Serve started without it. The chaos-marked test (``-m chaos``) kills
the replica and follows it to its new port.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import ray
import yaml

from artray import corpus
from artray.runtime import free_port
from artray.scaffold.demo_indexes import demo_indexes
from artray.serve import direct
from artray.serve.local import _ensure_serve_shut_down, serve_config
from cli_process import interrupt

REPO = Path(__file__).resolve().parents[1]
TOKEN = "direct-token-" + "x" * 20
URL_LINE = re.compile(r"\[artray\] direct ingress: POST (http://[\d.]+:\d+)/search")


@pytest.fixture(scope="module")
def served(ray_local, tmp_path_factory):
    """(the replica's own URL, the proxy's URL, the corpus folder) of `artray serve run --direct-ingress`."""
    root = tmp_path_factory.mktemp("serve-direct")
    index = demo_indexes(str(root), n=8, tiny_dir=str(tmp_path_factory.getbasetemp() / "tiny"), names=("longclip",))
    (root / "token").write_text(TOKEN)
    config = serve_config(index, free_port(), auth={"token_file": str(root / "token")})
    # an ingress replica drains >= 30 s before it stops (for load balancers); nobody needs that here
    config["controller_options"]["runtime_env"]["env_vars"]["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    gcs = ray.get_runtime_context().gcs_address
    log_path = root / "serve-run.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("artray")), "serve", "run", str(path), "--address", gcs,
                             "--direct-ingress"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=str(root))
    try:
        deadline, url = time.time() + 240, None
        while url is None and time.time() < deadline and proc.poll() is None:
            found = URL_LINE.search(log_path.read_text(errors="replace"))
            url = found and found[1]
            time.sleep(1)
        assert url, f"no direct-ingress URL line (exit code {proc.poll()}):\n{log_path.read_text(errors='replace')[-3000:]}"
        yield url, f"http://127.0.0.1:{config['http_options']['port']}", root / "corpora" / "longclip"
    finally:
        interrupt(proc)  # Ctrl-C: `serve run` shuts Serve down (and a local Ray it started)
        log.close()
        _ensure_serve_shut_down(gcs)


def test_the_replica_answers_search_on_its_own_port_with_auth_like_the_proxy(served):
    url, proxy, folder = served
    port = int(url.rsplit(":", 1)[1])
    assert 30000 <= port <= 31000 and direct.running_mode() is True and direct.urls("retrieval") == [url]
    listeners = [(c.laddr.ip, p.name()) for p in psutil.process_iter() for c in _listening(p) if c.laddr.port == port]
    assert [ip for ip, _ in listeners] == ["127.0.0.1"] and "ServeReplica" in listeners[0][1], listeners
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"  # open, as through the proxy
    denied = httpx.post(f"{url}/search", json={"text": "a painting"})
    assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"

    auth = {"Authorization": f"Bearer {TOKEN}"}
    text = corpus.read_texts(str(folder))["text"][0].as_py()
    answer = httpx.post(f"{url}/search", json={"text": text, "k": 5}, headers=auth).json()
    assert answer["query"] == "text" and len(answer["results"]) == 5
    assert answer["results"] == httpx.post(f"{proxy}/search", json={"text": text, "k": 5}, headers=auth).json()["results"]
    art = corpus.read_artworks(str(folder)).to_pylist()[2]
    image = {"image": base64.b64encode(art["image"]).decode(), "k": 3, "target": "image"}
    top = httpx.post(f"{url}/search", json=image, headers=auth).json()["results"][0]
    assert top["id"] == art["artwork_id"] and top["score"] == pytest.approx(1.0, abs=1e-4)
    reranked = httpx.post(f"{url}/search", json={"text": text, "k": 3, "rerank": "laclip"}, headers=auth)
    assert reranked.status_code == 200 and len(reranked.json()["results"]) == 3


def test_requests_on_the_replica_port_are_counted_in_the_apps_metrics(served):
    url = served[0]
    replica = direct.replicas("retrieval")[url].rsplit("#", 1)[-1]  # SERVE_REPLICA::retrieval#ingress#<id>
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for i in range(6):
        assert httpx.post(f"{url}/search", json={"text": f"query {i}", "k": 2}, headers=auth).status_code == 200
    assert httpx.post(f"{url}/search", json={"text": "x", "k": 2}).status_code == 401
    from test_serve import _metrics, _total  # the node's metrics endpoint, as test_serve reads it

    def ours(samples, name: str, **labels) -> float:  # this replica's series only (earlier modules' may linger)
        return _total(samples, name, replica=replica, **labels)

    deadline = time.time() + 60
    while time.time() < deadline:  # each process exports its metrics every few seconds
        samples = _metrics()
        if (ours(samples, "ray_artray_http_requests_total", route="/search", status="200") >= 6
                and ours(samples, "ray_artray_http_requests_total", status="401") >= 1):
            break
        time.sleep(2)
    assert ours(samples, "ray_artray_http_requests_total", route="/search", status="200") >= 6
    assert ours(samples, "ray_artray_http_requests_total", status="401") >= 1
    assert ours(samples, "ray_artray_http_request_latency_ms_count", route="/search") >= 6


@pytest.mark.chaos
def test_a_replaced_replica_answers_on_another_port_and_serve_run_prints_it(served):
    """The limit of direct ingress: a port belongs to one replica. Kill the ingress replica: Serve starts another
    on another port (the old one is quarantined), the old URL refuses connections, and `artray serve run` prints
    the new URL. (`-m chaos`: kills the module's replica, so it runs last.)"""
    url, _, folder = served
    log_path = folder.parents[1] / "serve-run.log"
    name = direct.replicas("retrieval")[url]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    deadline, new = time.time() + 180, []
    while time.time() < deadline:
        new = [u for u in URL_LINE.findall(log_path.read_text(errors="replace")) if u != url]
        if new:
            break
        time.sleep(1)
    assert new, f"no new URL line after the replica was killed:\n{log_path.read_text(errors='replace')[-3000:]}"
    assert direct.urls("retrieval") == [new[-1]]
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/search", json={"text": "x"}, headers={"Authorization": f"Bearer {TOKEN}"})
    answer = httpx.post(f"{new[-1]}/search", json={"text": "x", "k": 2}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200 and len(answer.json()["results"]) == 2


def _listening(p: psutil.Process) -> list:
    try:
        return [c for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
