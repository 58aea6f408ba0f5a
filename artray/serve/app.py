"""The search API on Ray Serve: a FastAPI ingress holding the models, or composed with one deployment per model.

    serve run serve_configs/retrieval.yaml        (or `serve deploy` it to a running cluster)

Routes: ``POST /search`` (text, base64 or uploaded image, or artwork id → ranked
artworks or texts), ``POST /embed``, ``GET /models``, ``GET /healthz``. Errors are JSON
``{"error": code, "detail": message}`` with a 4xx status for anything the client can fix.
Prometheus metrics (``artray_http_*``, ``artray_encoder_*``, ``artray_index_*``) go through
Ray's metrics export, which Prometheus scrapes on every node.

Two layouts (``args.layout``):

- ``colocated`` (the default): the ingress replica holds every model's encoder and index
  (`ModelDeployment`'s class, built in the ingress; batched as in its own deployment, except that a query
  alone in the replica is answered at once, without the batch queue), so a query is
  one hop, Serve's HTTP proxy → ingress. A replica that dies under a request leaves the proxy with
  no answer; `artray.serve.proxy` (the proxy callback the Serve configs install) answers it with a
  retryable 503.
- ``split``: the ingress (parsing, limits, auth, metrics, answer shape) → ``model-<name>``, one
  deployment per model, one call per request: models scale apart from HTTP (GPU replicas vs CPU
  ingress), and a model replica dying under a request is the ingress's 503 to answer. One Serve
  hop more: a few ms on a small machine (bench/serve.py).

`build_app(args)` is the ``import_path`` of the Serve config: it validates ``args``
(`RetrievalAppConfig`), checks each index against the configured encoder, and binds the ingress
with the models' arguments (colocated) or ``model-<name>`` handles (split). ``artray.serve.app:app`` is the
same application built from the args in the file ``$ARTRAY_SERVE_ARGS``, for Serve's tools that
take an application rather than a builder (``serve build artray.serve.app:app``).
"""

from __future__ import annotations

import hmac
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import (
    NodeDiedError,
    ObjectLostError,
    RayActorError,
    WorkerCrashedError,
)
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    RayServeException,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram
from starlette.exceptions import HTTPException

from artray import __version__
from artray.encoders import EncoderMismatchError
from artray.errors import UserError
from artray.index.retrieval import read_index_manifest
from artray.serve.binding import pin_replica_grpc_to_node
from artray.serve.config import RetrievalAppConfig
from artray.serve.deployments import LATENCY_BOUNDARIES_MS, ModelDeployment
from artray.serve.queries import (
    ApiError,
    EmbedRequest,
    SearchQuery,
    SearchRequest,
    openapi_body,
    parse_embed,
    parse_search,
)
from artray.serve.rerank import apply_scores, unsupported

logger = logging.getLogger("ray.serve")
ROUTES = ("/search", "/embed", "/models", "/healthz")
OPEN_ROUTES = ("/healthz",)  # load balancers probe it without a token
# A replica (or its node) died under a request, or none is up yet: the request was fine, retrying it will
# work once Serve has replaced the replica. 503 + Retry-After tells clients so (500 says "do not retry").
UNAVAILABLE = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError, WorkerCrashedError, NodeDiedError,
               ObjectLostError, BackPressureError)
RETRY_AFTER_S = "1"


def _replica_died_under(exc: BaseException) -> bool:
    """True when `exc`, or what caused it, is a replica or node dying (see UNAVAILABLE).

    Serve wraps one such death in a plain `RayServeException`: when a replica dies while its answer is
    passed on to another deployment's call (a chained call), that call fails with "an upstream actor
    died", the ActorDiedError as its ``__cause__``. The request was fine; a retry works.
    """
    seen = 0
    while exc is not None and seen < 8:  # a short chain; guards against cycles
        if isinstance(exc, UNAVAILABLE):
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


def public_uri(value: str | None) -> str | None:
    """What an API answer shows of a location: URLs, s3:// URIs and hub ids as they are, a path on the
    server's disks by its last part only (clients need not learn the server's folders)."""
    if not value or "://" in value or value.startswith(("hf-hub:", "local-dir:")):
        return value.removeprefix("local-dir:").rstrip("/").rsplit("/", 1)[-1] if value and value.startswith(
            "local-dir:") else value
    local = value.startswith(("/", "./", "../", "~")) or Path(value).exists()
    return value.rstrip("/").rsplit("/", 1)[-1] if local else value


def _public_hits(hits: list[dict]) -> list[dict]:
    return [{**h, "image_uri": public_uri(h.get("image_uri"))} if h.get("image_uri") else h for h in hits]


def error_response(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _authorized(header: str | None, token: str) -> bool:
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


@serve.deployment(name="ingress")
@serve.ingress()
class Ingress:
    """HTTP front: checks requests, calls the model (in this replica, or its deployment) once, shapes the answers."""

    def __init__(self, config: dict, handles: dict[str, DeploymentHandle], models: list[dict],
                 hosted: dict[str, tuple] | None = None):
        pin_replica_grpc_to_node()
        self.cfg = RetrievalAppConfig.model_validate(config)
        # layout "split": a handle per model; "colocated": the models' classes built here, from their arguments
        self.hosted = {name: ModelDeployment.func_or_class(*args) for name, args in (hosted or {}).items()}
        self.handles = {**handles, **{name: LocalModel(m) for name, m in self.hosted.items()}}
        self.models = models
        self.active = 0  # /search and /embed requests in this replica now (see `_search_model`)
        self.by_name = {m["name"]: m for m in models}
        self.token = self.cfg.auth.token()
        if self.token is None:
            logger.warning("artray search API: AUTH IS OFF — anyone who can reach this port can query it. "
                           "Set auth.token_env or auth.token_file in the Serve config to require a bearer token.")
        self.requests = Counter("artray_http_requests_total", description="HTTP requests by route and status",
                                tag_keys=("route", "status", "model"))
        self.latency = Histogram("artray_http_request_latency_ms", description="HTTP request latency",
                                 boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("route",))

    def reconfigure(self, config: dict) -> None:
        """``user_config: {max_batch_size, batch_wait_timeout_s}`` of the ingress: the batching of the models it
        hosts (layout "colocated"; see `ModelDeployment.reconfigure`)."""
        for model in self.hosted.values():
            model.reconfigure(config)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_fastapi(self)

    async def search(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        self.active += 1
        try:
            return await self._search(request, started)
        finally:
            self.active -= 1

    async def _search(self, request: Request, started: float) -> JSONResponse:
        q = await parse_search(request, self.cfg)
        request.state.model = q.model
        info = self.by_name[q.model]
        if not info["galleries"].get(q.target):
            raise ApiError(400, "no_gallery", f"model {q.model!r} has no {q.target} gallery; search another target, "
                           f"or embed the corpus with {q.target}s and rebuild its index")
        model = self.handles[q.model]
        alone = self._alone(q)
        if alone is not None:
            results, problem = alone
            if problem:
                raise ApiError(415, "not_an_image", f"image is not a readable image: {problem}")
        elif q.rerank:
            results = await self._reranked(q, model, info)
        elif q.kind == "text":
            results = await model.search_text.remote(q.value, q.k, q.target)
        elif q.kind == "image":
            results, problem = await model.search_image.remote(q.value, q.k, q.target)
            if problem:
                raise ApiError(415, "not_an_image", f"image is not a readable image: {problem}")
        else:
            results = await model.search_artwork.remote(q.value, q.k, q.target)
            if results is None:
                raise _unknown_artwork(q)
        return JSONResponse({"model": q.model, "query": q.kind, "target": q.target, "k": q.k,
                             "results": _public_hits(results),
                             "took_ms": round((time.perf_counter() - started) * 1000, 3)})

    def _alone(self, q: SearchQuery) -> tuple[list[dict] | None, str | None] | None:
        """A text or image query answered right here when it is the only request in the replica and its model is
        hosted here (layout colocated): no batch queue, no worker-thread hop. None: batch it as usual (other
        requests are in the replica, so they share a forward pass; or the model's encoder is at work)."""
        model = self.hosted.get(q.model)
        if model is None or self.active != 1 or q.rerank or q.kind not in ("text", "image"):
            return None
        return model.search_now(q.kind, q.value, q.k, q.target)

    async def _reranked(self, q: SearchQuery, model: DeploymentHandle, info: dict) -> list[dict]:
        problem = unsupported(q.rerank, info["family"])
        if problem:
            raise ApiError(400, "bad_rerank", f"model {q.model!r}: {problem}")
        hits, scores, problem = await model.rerank_search.remote(q.rerank, q.kind, q.value, q.k, q.target,
                                                                 info["rerank_candidates"])
        if problem == "unknown_artwork" and q.kind == "artwork_id":
            raise _unknown_artwork(q)
        if problem:
            raise ApiError(415, "not_an_image", f"image is not a readable image: {problem}")
        return apply_scores(hits, scores, q.rerank, q.k)

    async def embed(self, request: Request) -> JSONResponse:
        self.active += 1
        try:
            return await self._embed(request)
        finally:
            self.active -= 1

    async def _embed(self, request: Request) -> JSONResponse:
        model, texts, images = await parse_embed(request, self.cfg)
        request.state.model = model
        text_vectors, image_vectors, problems = await self.handles[model].embed.remote(texts, images)
        for i, problem in enumerate(problems):
            if problem:
                raise ApiError(415, "not_an_image", f"images[{i}] is not a readable image: {problem}")
        info = self.by_name[model]
        return JSONResponse({"model": model, "family": info["family"], "checkpoint": info["checkpoint"],
                             "dim": info["dim"], "texts": text_vectors, "images": image_vectors})


class LocalModel:
    """A model held in this replica, called as its deployment's handle is: ``await m.search_text.remote(...)``."""

    def __init__(self, model: ModelDeployment):
        self._model = model

    def __getattr__(self, method: str) -> SimpleNamespace:
        return SimpleNamespace(remote=getattr(self._model, method))


def _unknown_artwork(q: SearchQuery) -> ApiError:
    return ApiError(404, "unknown_artwork", f"artwork {q.value!r} is not in the image gallery of model {q.model!r}")


class Guard:
    """ASGI middleware of every route: the bearer token, and the request counter and latency metrics.

    Plain ASGI rather than ``@app.middleware("http")`` (Starlette's BaseHTTPMiddleware runs each
    request through an extra task group and memory streams: a fixed cost on every request)."""

    def __init__(self, app, ingress):
        self.app, self.ingress = app, ingress

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = scope["path"] if scope["path"] in ROUTES else "other"
        token, status = self.ingress.token, [500]  # an exception escaping the app below is a 500

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if token and route not in OPEN_ROUTES and not _authorized(_header(scope, b"authorization"), token):
                await error_response(401, "unauthorized", "send the API token as `Authorization: Bearer <token>`",
                                     headers={"WWW-Authenticate": "Bearer"})(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            model = scope.get("state", {}).get("model", "-")
            self.ingress.requests.inc(tags={"route": route, "status": str(status[0]), "model": model})
            self.ingress.latency.observe((time.perf_counter() - started) * 1000, tags={"route": route})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def make_fastapi(ingress: Ingress) -> FastAPI:
    """The FastAPI app of one ingress replica: routes, error shapes, auth, metrics and CORS."""
    # The OpenAPI spec (behind the token like every route but /healthz) describes the request bodies,
    # so clients and API fuzzers (tests/test_fuzz_serve_api.py) can be generated from it; no docs UI.
    app = FastAPI(title="artray search", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.detail)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return error_response(exc.status_code, "http_error", str(exc.detail))

    async def _unavailable(request: Request, exc: Exception):
        logger.warning("artray search API: %s on %s: %s", type(exc).__name__, request.url.path, exc)
        status = getattr(exc, "status_code", 503) if isinstance(exc, BackPressureError) else 503
        return error_response(status, "unavailable", f"{type(exc).__name__}: a replica behind the API is down or "
                              "restarting; retry the request shortly", headers={"Retry-After": RETRY_AFTER_S})

    for cls in UNAVAILABLE:  # inside the middleware below, so these responses are counted
        app.add_exception_handler(cls, _unavailable)

    @app.exception_handler(RayServeException)
    async def _serve_error(request: Request, exc: RayServeException):
        if _replica_died_under(exc):
            return await _unavailable(request, exc)
        return await _internal(request, exc)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        logger.exception("artray search API: internal error on %s", request.url.path)
        return error_response(500, "internal_error", f"{type(exc).__name__}: the server failed; see the ingress log")

    app.add_middleware(Guard, ingress=ingress)  # wraps the exception handlers above: their answers are counted

    if ingress.cfg.cors.allow_origins:  # added last, so it is outermost: preflights never need the token
        cors = ingress.cfg.cors
        app.add_middleware(CORSMiddleware, allow_origins=cors.allow_origins, allow_methods=cors.allow_methods,
                           allow_headers=cors.allow_headers, allow_credentials=cors.allow_credentials,
                           max_age=cors.max_age_s)

    @app.post("/search", openapi_extra=openapi_body(SearchRequest, upload="image"))
    async def search(request: Request):
        return await ingress.search(request)

    @app.post("/embed", openapi_extra=openapi_body(EmbedRequest))
    async def embed(request: Request):
        return await ingress.embed(request)

    @app.get("/models")
    async def models():
        return {"default": ingress.cfg.default_model, "models": ingress.models}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "models": [m["name"] for m in ingress.models]}

    return app


def build_app(args: dict) -> serve.Application:
    """Serve application builder (``import_path: artray.serve.app:build_app``; ``args`` as in
    `RetrievalAppConfig`). Refuses a model whose index was built by another encoder."""
    cfg = RetrievalAppConfig.model_validate(args)
    opts = cfg.storage_options()
    handles, hosted, models = {}, {}, []
    for m in cfg.models:
        manifest = read_index_manifest(m.index, opts)
        recorded = manifest["encoder"]
        family, checkpoint = m.expected(recorded)
        if (family, checkpoint) != (recorded["family"], recorded["checkpoint"]):
            raise EncoderMismatchError(
                f"model {m.name!r} is configured as {family}:{checkpoint}, but its index {m.index} was built from "
                f"{recorded['family']}:{recorded['checkpoint']}; embed and index with this checkpoint, or drop "
                "family/checkpoint from the model to use the index's")
        model_args = (m.name, family, checkpoint, m.device, m.dtype, m.index, recorded, cfg.limits.max_image_pixels,
                      cfg.s3_endpoint, manifest.get("corpus"), m.rerank.model_dump(mode="json"))
        if cfg.layout == "colocated":
            hosted[m.name] = model_args
        else:
            handles[m.name] = ModelDeployment.options(name=f"model-{m.name}").bind(*model_args)
        models.append({"name": m.name, "family": family, "checkpoint": public_uri(checkpoint), "dim": recorded["dim"],
                       "index": public_uri(m.index), "galleries": {k: v["vectors"] for k, v in manifest["counts"].items()},
                       "faiss": manifest["faiss"], "built": manifest.get("finished"),
                       "rerank": [r for r in ("laclip", "itm") if not unsupported(r, family)],
                       "rerank_candidates": m.rerank.candidates})
    return Ingress.bind(cfg.model_dump(mode="json"), handles, models, hosted)


ARGS_ENV = "ARTRAY_SERVE_ARGS"  # a YAML file: the app's args, or a Serve config whose artray app has them


def _args_from_file(path: str) -> dict:
    import yaml

    try:
        data = yaml.safe_load(open(path, encoding="utf-8")) or {}
    except OSError as exc:
        raise UserError(f"${ARGS_ENV}={path} cannot be read ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"${ARGS_ENV}={path} is not valid YAML: {exc}") from exc
    if isinstance(data, dict) and "applications" in data:  # a whole Serve config: its artray application's args
        apps = [a for a in data["applications"] if str(a.get("import_path", "")).startswith("artray.serve.app:")]
        if not apps:
            raise UserError(f"{path} has no application with import_path artray.serve.app:…")
        data = apps[0].get("args") or {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold the app's args (models, limits, auth, …) or a Serve config")
    return data


def __getattr__(name: str):
    """``artray.serve.app:app``: the application of `build_app` with the args of ``$ARTRAY_SERVE_ARGS``
    (built on access, so importing this module stays free of side effects)."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    path = os.environ.get(ARGS_ENV)
    if not path:
        raise UserError(f"artray.serve.app:app is built from the args in the file named by ${ARGS_ENV}, which is "
                        f"not set: `{ARGS_ENV}=serve_configs/retrieval.yaml serve build artray.serve.app:app`, or "
                        "use the builder `artray.serve.app:build_app` with args in a Serve config")
    return build_app(_args_from_file(path))
