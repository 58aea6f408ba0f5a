"""The search API under faults: a paced load on ``POST /search`` while one model replica and then every
model replica are killed, once with the retrying client and once without retries, in both layouts.

The app runs as users run it (`serve run` of the tiny config, 127.0.0.1 only) on a multi-node cluster
(`ChaosCluster`: a head and 2 worker nodes) with 2 replicas of the deployment that holds the model
(encoder and index in one replica): ``ingress`` in the colocated layout (the default: the proxy's
`artray.serve.proxy` callback answers for a replica that died under a request), ``model-longclip`` in
the split layout (the ingress answers for it). The load is paced (5 requests/s from 4 threads, at most 300 requests and 60 s per pass)
and lasts until the replicas are back and at least 100 requests were answered. 5 s in, one model
replica is killed through Ray (``ray.kill`` of its actor: the other one keeps serving); once Serve has
replaced it, the worker process of every model replica gets a SIGKILL (no replica left until Serve
starts new ones); each kill waits for a request to be in flight. What is proved: Serve
replaces each killed replica (the replica counts are back, with new replicas); a client that retries
idempotent requests (`SearchClient`) sees no failed request; without retries the failures that do
happen are 502/503/504 or dropped connections — answers a client may retry — never a 500. The
figures go to the chaos report (JSON lines).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import ray
from chaoskit import ChaosCluster
from ray import serve

from artray.runtime import free_port
from artray.scaffold.demo_indexes import demo_indexes
from artray.serve.client import SearchClient, SearchClientError
from artray.serve.local import ServeProcess, serve_config

pytestmark = pytest.mark.chaos

APP = "retrieval"
HOLDER = {"colocated": "ingress", "split": "model-longclip"}  # the deployment whose replicas hold the model
REPLICAS = 2
# Load: one request every PACE_S from THREADS threads, until both replicas are back (+ SETTLE_S), at most
# MAX_REQUESTS requests and MAX_LOAD_S seconds per pass.
PACE_S, THREADS, MAX_REQUESTS, MAX_LOAD_S = 0.2, 4, 300, 60.0
MIN_SENT = 100  # the load goes on (within MAX_LOAD_S) until at least this many requests were answered
KILL_ONE_AT_S, SETTLE_S = 5.0, 3.0  # every replica is killed SETTLE_S after the first killed one is replaced
RECOVER_TIMEOUT_S = 120.0


def _replicas(deployment: str) -> list[str]:
    """Names of the live replica actors of `deployment` (Serve names them SERVE_REPLICA::app#deployment#id)."""
    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["namespace"] == "serve" and a["name"].startswith(prefix))


def _running(deployment: str) -> int:
    status = serve.status().applications[APP]
    d = status.deployments[deployment]
    return d.replica_states.get("RUNNING", 0) if status.status == "RUNNING" and d.status == "HEALTHY" else 0


def _wait_recovered(deployment: str, killed: list[str], started: float) -> float:
    """Seconds from the kill until Serve runs the target replica count again, without the killed ones."""
    while time.monotonic() - started < RECOVER_TIMEOUT_S:
        live = _replicas(deployment)
        if not set(killed) & set(live) and len(live) == REPLICAS and _running(deployment) == REPLICAS:
            return time.monotonic() - started
        time.sleep(0.25)
    raise AssertionError(f"{deployment}: not back to {REPLICAS} running replicas {RECOVER_TIMEOUT_S:.0f}s "
                         f"after killing {killed}: {serve.status().applications[APP].deployments[deployment]}")


def _kill_one(deployment: str):
    """(names, kill): `ray.kill` one model replica actor (no restart by Ray: Serve must replace it)."""
    name = _replicas(deployment)[0]
    actor = ray.get_actor(name, namespace="serve")
    return [name], lambda: ray.kill(actor, no_restart=True)


def _kill_all(deployment: str):
    """(names, kill): SIGKILL the worker process of every model replica, as the OOM killer or a crash would."""
    names = _replicas(deployment)
    pids = [ray.get(ray.get_actor(n, namespace="serve").__ray_call__.remote(lambda self: os.getpid()), timeout=30)
            for n in names]
    return names, lambda: [os.kill(pid, signal.SIGKILL) for pid in pids]


def _load_with_kills(url: str, retries: int, deployment: str) -> dict:
    """Paced load from THREADS threads while one model replica, then every model replica is killed."""
    client = SearchClient(url, retries=retries, backoff=0.2, max_backoff=2.0, retry_deadline_s=60, timeout_s=30)
    t0, stop = time.monotonic(), threading.Event()
    outcomes: list[tuple[float, str]] = []  # (start, seconds since t0; "ok" | HTTP status | "connection")
    details: list[str] = []  # what the client was told, for each failure (the report shows why it failed)
    lock, in_flight = threading.Lock(), [0]

    def one(i: int) -> None:
        time.sleep(max(0.0, t0 + i * PACE_S - time.monotonic()))
        started = time.monotonic() - t0
        if stop.is_set() or started > MAX_LOAD_S:
            return
        with lock:
            in_flight[0] += 1
        try:
            answer = client.search(f"a painting of a red circle {i}", k=3)
            outcome = "ok" if len(answer["results"]) == 3 else "short"
            detail = f"{len(answer['results'])} results"
        except SearchClientError as exc:
            outcome, detail = (str(exc.status) if exc.status else "connection"), str(exc)[:300]
        with lock:
            in_flight[0] -= 1
            outcomes.append((round(started, 2), outcome))
            if outcome != "ok":
                details.append(f"{started:.2f}s {outcome}: {detail}")

    def when_busy() -> None:
        """Kill while requests are in flight (else a kill between two paced requests hits nobody)."""
        deadline = time.monotonic() + 5
        while in_flight[0] < 1 and time.monotonic() < deadline:
            time.sleep(0.002)

    kills = {}
    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(one, i) for i in range(MAX_REQUESTS)]
        try:
            time.sleep(KILL_ONE_AT_S)
            for fault, kill, how in (("one replica", _kill_one, "ray.kill of one replica actor"),
                                     ("every replica", _kill_all, "SIGKILL of every replica process")):
                names, fire = kill(deployment)
                when_busy()
                fire()
                at = time.monotonic()
                recover = _wait_recovered(deployment, names, at)
                kills[fault] = {"replicas": names, "how": how, "at_s": round(at - t0, 2),
                                "recover_s": round(recover, 2)}
                time.sleep(SETTLE_S)
            while len(outcomes) < MIN_SENT and time.monotonic() - t0 < MAX_LOAD_S:  # fast recoveries: load on
                time.sleep(0.1)
        finally:
            stop.set()
        for f in futures:
            f.result()
    for k in kills.values():  # requests started between the kill and Serve's recovery
        k["requests_during_outage"] = sum(1 for t, _ in outcomes if k["at_s"] <= t <= k["at_s"] + k["recover_s"])
    failed = [o for o in outcomes if o[1] != "ok"]
    return {"retries": retries, "sent": len(outcomes), "failed": len(failed), "attempts": client.attempts_made,
            "failures_by_kind": {k: sum(1 for _, o in failed if o == k) for k in sorted({o for _, o in failed})},
            "failure_times_s": [t for t, _ in failed], "failure_details": details, "wall_s": round(time.monotonic() - t0, 2), "kills": kills}


@pytest.fixture(scope="module", params=["colocated", "split"])
def app(request, tmp_path_factory):
    """The search app, in each layout, on a head + 2 worker nodes (`ChaosCluster`); one HTTP proxy, on the head."""
    cluster = ChaosCluster(workers=2, worker_cpus=1)
    try:
        root = tmp_path_factory.mktemp("serve-faults")
        indexes = demo_indexes(str(root), n=20, tiny_dir=str(tmp_path_factory.getbasetemp() / "tiny"),
                               names=("longclip",))
        config = serve_config(indexes, free_port(), layout=request.param)
        config["proxy_location"] = "HeadOnly"  # the worker nodes share this machine: one proxy per port
        for d in config["applications"][0]["deployments"]:
            if d["name"] == HOLDER[request.param]:
                d["num_replicas"] = REPLICAS
        with ServeProcess(config, cluster.address) as proc:
            yield proc, HOLDER[request.param]
    finally:
        cluster.shutdown()


def test_killed_replicas_are_replaced_and_a_retrying_client_sees_no_failure(app, chaos_report):
    app, holder = app
    deadline = time.monotonic() + RECOVER_TIMEOUT_S  # /healthz answers once one replica of each is up
    while not (_running(holder) == REPLICAS and len(_replicas(holder)) == REPLICAS):
        assert time.monotonic() < deadline, (_running(holder), _replicas(holder))
        time.sleep(0.5)
    before = set(_replicas(holder))

    retrying = _load_with_kills(app.url, retries=8, deployment=holder)
    chaos_report({"suite": "serve", "pass": "retrying client", "deployment": holder, **retrying})
    after = set(_replicas(holder))
    assert len(after) == REPLICAS and after != before, (before, after)
    assert retrying["failed"] == 0 and retrying["sent"] >= MIN_SENT, retrying
    assert all(k["requests_during_outage"] > 0 for k in retrying["kills"].values()), retrying  # load was on

    raw = _load_with_kills(app.url, retries=0, deployment=holder)  # the same faults, nobody retrying
    chaos_report({"suite": "serve", "pass": "no retries", "deployment": holder, **raw,
             "raw_error_rate": round(raw["failed"] / max(1, raw["sent"]), 4)})
    assert raw["sent"] >= MIN_SENT and all(k["requests_during_outage"] > 0 for k in raw["kills"].values()), raw
    # Every failure a client sees is one it may retry: 503 when a replica died under a request (the ingress's
    # answer in the split layout, the proxy callback's in the colocated one), never 500 (regression: the app
    # answered 500 "internal_error" before; Serve's proxy answers 500 without artray.serve.proxy).
    assert set(raw["failures_by_kind"]) <= {"502", "503", "504", "connection"}, raw

    final = serve.status().applications[APP]
    assert final.status == "RUNNING" and _running(holder) == REPLICAS
    assert SearchClient(app.url, retries=0).search("after the faults", k=2)["results"]
