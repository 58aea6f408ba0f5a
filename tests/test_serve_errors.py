"""How the search app's HTTP layer answers when a replica behind it is gone (regression: it answered
500 "internal_error", which tells clients not to retry, while the request was fine and a retry works
once Serve has replaced the replica). The routes are the app's own (`make_fastapi`); the ingress is a
stand-in whose `search` raises the real Ray/Serve exception a dead replica produces."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, WorkerCrashedError
from ray.serve._private.router import AsyncioRouter
from ray.serve.exceptions import BackPressureError, RayServeException, ReplicaUnavailableError
from starlette.testclient import TestClient

from artray.serve.app import make_fastapi
from artray.serve.config import RetrievalAppConfig


class _Metric:
    """Collects what the app records (the app's counters are Ray metrics, which need a replica)."""

    def __init__(self):
        self.seen = []

    def inc(self, value=1, tags=None):
        self.seen.append(tags)

    def observe(self, value, tags=None):
        self.seen.append(tags)


def _app(exc: Exception):
    async def search(request):
        raise exc

    cfg = RetrievalAppConfig.model_validate({"models": [{"name": "m", "index": "/x"}]})
    ingress = SimpleNamespace(token=None, cfg=cfg, requests=_Metric(), latency=_Metric(), search=search)
    return make_fastapi(ingress), ingress


def _upstream_crash() -> RayServeException:
    """What Serve raises when an encoder replica dies while its answer is chained into the index call
    (made by Serve's own router code; regression: a chaos run got a 500 for it, which no client retries)."""
    router = SimpleNamespace(deployment_id=SimpleNamespace(name="index-m"))
    return AsyncioRouter._make_upstream_crash_error(router, ActorDiedError())


@pytest.mark.parametrize("exc", [ActorDiedError(), ActorUnavailableError("connection lost", None), WorkerCrashedError(),
                                 ReplicaUnavailableError("r1"), BackPressureError(65, 64), _upstream_crash()],
                         ids=lambda e: type(e).__name__ + ("-upstream" if e.__cause__ else ""))
def test_a_dead_or_overloaded_replica_is_a_503_with_retry_after(exc):
    app, ingress = _app(exc)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/search", json={"text": "x"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"] == "unavailable" and type(exc).__name__ in response.json()["detail"]
    assert {"route": "/search", "status": "503", "model": "-"} in ingress.requests.seen  # counted as a 503


@pytest.mark.parametrize("exc", [RuntimeError("boom"), RayServeException("a Serve error, no replica died")],
                         ids=lambda e: type(e).__name__)
def test_a_bug_is_still_a_500(exc):
    app, _ = _app(exc)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/search", json={"text": "x"})
    assert response.status_code == 500 and response.json()["error"] == "internal_error"
