"""Serve's HTTP proxy answers 503 + Retry-After, not 500, when the replica behind a request died under it.

With the colocated layout (the models inside the ingress replica) a request is one hop: proxy →
ingress. When that replica dies mid-request (OOM killer, a crash, a lost node) Ray 2.60's proxy
logs the ``ActorDiedError`` and returns without an answer, and uvicorn then sends ``500 Internal
Server Error`` — which says "do not retry" though the request was fine. `middlewares` is the proxy
callback (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=artray.serve.proxy:middlewares`` in the
proxy's environment; the Serve configs in serve_configs/ set it through ``controller_options``,
whose environment Serve's proxies inherit): it wraps the proxy's ASGI app, and a request that ends
with no response started gets ``503 {"error": "unavailable", …}`` with ``Retry-After: 1`` instead,
the same answer the ingress gives when a model replica dies under it (layout "split").

Every answer a replica did start passes through untouched: the app's own 4xx/5xx, Serve's 404 for
an unknown route, its 503 when no replica is up. Only "nobody answered" changes.
"""

from __future__ import annotations

import json
import logging

from starlette.middleware import Middleware

logger = logging.getLogger("ray.serve")

IMPORT_PATH = "artray.serve.proxy:middlewares"
ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
UNANSWERED = json.dumps({"error": "unavailable", "detail": "the replica serving this request stopped before it "
                         "answered (it is being replaced); retry the request shortly"}).encode()


class AnswerUnansweredRequests:
    """Pure ASGI middleware: an HTTP request the app below returns from (or raises out of) without having
    started a response gets a 503 with ``Retry-After``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            if started:
                raise
            logger.warning("artray proxy: %s %s failed before any answer; answering 503", scope.get("method"),
                           scope.get("path"), exc_info=True)
        if started:
            return
        try:
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                    (b"content-length", str(len(UNANSWERED)).encode())]})
            await send({"type": "http.response.body", "body": UNANSWERED})
        except Exception:  # noqa: BLE001 - the client is gone (it disconnected first): nobody to answer
            pass


def middlewares() -> list[Middleware]:
    """The proxy callback: Serve's proxy wraps its ASGI app in these."""
    return [Middleware(AnswerUnansweredRequests)]
