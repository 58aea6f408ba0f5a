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


async def _no_answer(scope, receive, send):
    """What Serve's proxy app does when the replica under a request died: logs it and returns, no answer."""


async def _raises(scope, receive, send):
    raise RuntimeError("the proxy's call to the replica failed")


async def _own_500(scope, receive, send):
    await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"error": "internal_error"}'})


@pytest.mark.parametrize("inner", [_no_answer, _raises], ids=["returned", "raised"])
def test_the_proxy_answers_a_request_nobody_answered_with_a_503(inner):
    """Layout "colocated": the replica that died under a request is the ingress itself, and Serve's proxy
    would leave uvicorn to send 500; the proxy callback (`artray.serve.proxy`) answers 503 + Retry-After."""
    from artray.serve.proxy import AnswerUnansweredRequests, middlewares

    assert [m.cls for m in middlewares()] == [AnswerUnansweredRequests]
    client = TestClient(AnswerUnansweredRequests(inner), raise_server_exceptions=False)  # no lifespan: a bare ASGI app
    response = client.post("/search", json={"text": "x"})
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["error"] == "unavailable" and "retry" in response.json()["detail"]


def test_the_proxy_passes_an_answer_the_app_started_through():
    from artray.serve.proxy import AnswerUnansweredRequests

    response = TestClient(AnswerUnansweredRequests(_own_500), raise_server_exceptions=False).post("/search", json={})
    assert response.status_code == 500 and response.json() == {"error": "internal_error"}


def test_serves_proxy_with_the_callback_answers_503_when_the_replica_dies_under_a_request(ray_local):
    """Real Serve, started with the Serve configs' ``controller_options`` (the proxy callback in the
    controller's environment, inherited by its proxies): a replica that dies while it handles a request
    (here: it exits in the handler) leaves the proxy without an answer, and the client gets 503 +
    Retry-After instead of uvicorn's 500. The colocated layout's ingress dies this way under load."""
    import os

    import httpx
    from ray import serve

    from artray.runtime import free_port
    from artray.serve.local import _ensure_serve_shut_down
    from artray.serve.proxy import ENV, IMPORT_PATH

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class DiesUnderARequest:
        async def __call__(self, request):
            if request.url.path.endswith("/die"):
                os._exit(1)
            return {"ok": True}

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                controller_options={"runtime_env": {"env_vars": {ENV: IMPORT_PATH}}})
    try:
        serve.run(DiesUnderARequest.bind(), name="dies", route_prefix="/")
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=30).json() == {"ok": True}
        response = httpx.get(f"http://127.0.0.1:{port}/die", timeout=60)
        assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
        assert response.json()["error"] == "unavailable"
    finally:
        _ensure_serve_shut_down(ray_local.get_runtime_context().gcs_address)
