"""A client of the search API that rides out replica restarts: `SearchClient` and `artray search`.

    artray search --url http://127.0.0.1:8000 --text "a red circle" --k 5
    artray search --image painting.jpg --target image --model cnclip --retries 5 --backoff 0.5

    from artray.serve.client import SearchClient
    client = SearchClient("http://127.0.0.1:8000", token=os.environ.get("ARTRAY_API_TOKEN"), retries=5)
    client.search(text="a red circle", k=5)["results"]

Every route of the API is a read (``/search`` and ``/embed`` compute an answer and change
nothing), so a request that failed in transit can be sent again safely. The client retries
on connection errors, timeouts and 502/503/504 (a replica restarting, the proxy without a
healthy replica) with exponential backoff and full jitter, bounded both by a number of
retries and by a total time; any other status is final. Standard library only, but for urllib3's
`Retry`, which reads ``Retry-After`` (seconds or an HTTP date) as URL ingest's adapters do.

The token, when the API has auth on, comes from an environment variable on the command
line (never a flag, so it stays out of shell history and process lists).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

from pydantic import Field
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

from artray.config import JobConfig
from artray.errors import UserError

RETRY_STATUSES = frozenset({502, 503, 504})


class SearchClientError(UserError, RuntimeError):
    """The API refused the query or could not be reached; the message is the API's."""

    def __init__(self, message: str, status: int | None = None, attempts: int = 1):
        super().__init__(message)
        self.status, self.attempts = status, attempts


class SearchClientConfig(JobConfig):
    """Queries a running search API and prints the ranked hits (`artray search`)."""

    url: str = Field("http://127.0.0.1:8000", description="base URL of the search API")
    text: str | None = Field(None, description="text query")
    image: str | None = Field(None, description="path of an image file to query with")
    artwork_id: str | None = Field(None, description="query with an artwork of the gallery")
    k: int = Field(10, ge=1, description="results to return")
    model: str | None = Field(None, description="model name (GET /models); default: the API's default")
    target: Literal["image", "text"] | None = Field(None, description="what to return (default: the other modality)")
    token_env: str = Field("ARTRAY_API_TOKEN", description="environment variable holding the API token, if any")
    timeout_s: float = Field(30.0, gt=0, description="one attempt's time limit")
    retries: int = Field(4, ge=0, description="retries after a connection error, timeout or 502/503/504 (0: none)")
    backoff: float = Field(0.25, ge=0, description="first retry's delay bound in seconds; doubles per retry (jittered)")
    retry_deadline_s: float = Field(60.0, gt=0, description="no retry starts later than this after the first attempt")


class SearchClient:
    """The search API from Python, retrying idempotent requests (all of them here) on transient faults.

    Retry *n* (n ≥ 1) waits ``uniform(0, min(max_backoff, backoff · 2ⁿ⁻¹))`` seconds first — or the
    server's ``Retry-After``, when it sends one, capped at ``max_backoff`` — and none starts later than
    ``retry_deadline_s`` after the first attempt. ``attempts_made`` counts every HTTP attempt (for load tests).
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, *, retries: int = 4,
                 backoff: float = 0.25, max_backoff: float = 8.0, retry_deadline_s: float = 60.0,
                 timeout_s: float = 30.0, seed: int | None = None):
        if retries < 0 or backoff < 0 or timeout_s <= 0 or retry_deadline_s <= 0:
            raise ValueError("retries and backoff must be >= 0, timeout_s and retry_deadline_s > 0")
        self.url, self.token = url.rstrip("/"), token
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.retry_deadline_s, self.timeout_s = retry_deadline_s, timeout_s
        self._random = random.Random(seed)
        self._lock = threading.Lock()  # one client may serve many threads
        self.attempts_made = 0

    @classmethod
    def from_config(cls, cfg: SearchClientConfig) -> SearchClient:
        return cls(cfg.url, os.environ.get(cfg.token_env) or None, retries=cfg.retries, backoff=cfg.backoff,
                   retry_deadline_s=cfg.retry_deadline_s, timeout_s=cfg.timeout_s)

    # --- routes -------------------------------------------------------------------------------------
    def search(self, text: str | None = None, *, image: bytes | str | Path | None = None,
               artwork_id: str | None = None, k: int = 10, model: str | None = None, target: str | None = None,
               rerank: str | None = None) -> dict:
        """``POST /search`` with one of `text`, `image` (bytes or a file path) or `artwork_id`."""
        body: dict = {"k": k}
        for key, value in (("text", text), ("artwork_id", artwork_id), ("model", model), ("target", target),
                           ("rerank", rerank)):
            if value is not None:
                body[key] = value
        if image is not None:
            body["image"] = _b64(image)
        return self.request("POST", "/search", body)

    def embed(self, texts: list[str] = (), images: list[bytes | str | Path] = (), model: str | None = None) -> dict:
        """``POST /embed``: vectors of `texts` and `images` from one model."""
        body: dict = {"texts": list(texts), "images": [_b64(im) for im in images]}
        if model is not None:
            body["model"] = model
        return self.request("POST", "/embed", body)

    def models(self) -> dict:
        return self.request("GET", "/models")

    def healthz(self) -> dict:
        return self.request("GET", "/healthz")

    # --- transport ----------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        """Send one request (retrying transient faults) and return the parsed JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        started, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            with self._lock:
                self.attempts_made += 1
            try:
                return self._once(method, path, data, headers)
            except _Transient as exc:
                delay = self._delay(attempt, exc.retry_after)
                if attempt > self.retries or time.monotonic() - started + delay > self.retry_deadline_s:
                    tried = f" after {attempt} attempts in {time.monotonic() - started:.1f} s" if attempt > 1 else ""
                    raise SearchClientError(f"{exc}{tried}", exc.status, attempt) from exc.__cause__
                time.sleep(delay)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        bound = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        if retry_after is not None:
            return min(self.max_backoff, retry_after)
        with self._lock:
            return self._random.uniform(0, bound)

    def _once(self, method: str, path: str, data: bytes | None, headers: dict) -> dict:
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                detail = json.loads(raw).get("detail", "")
            except (ValueError, AttributeError):
                detail = raw[:200].decode(errors="replace") or exc.reason
            message = f"{self.url} answered {exc.code}: {detail}"
            if exc.code in RETRY_STATUSES:
                raise _Transient(message, exc.code, retry_after_s(exc.headers.get("Retry-After"))) from exc
            raise SearchClientError(message, exc.code) from exc
        except urllib.error.URLError as exc:
            raise _Transient(f"cannot reach {self.url} ({exc.reason}); is `serve run` up?") from exc
        except (ConnectionError, TimeoutError, http.client.HTTPException) as exc:  # dropped mid-response
            raise _Transient(f"{self.url}{path}: connection failed ({type(exc).__name__}: {exc})") from exc


class _Transient(Exception):
    """A fault worth retrying: no answer, or a 502/503/504."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


def retry_after_s(value: str | None) -> float | None:
    """Seconds a server asks for in ``Retry-After``, parsed by urllib3's `Retry` (delta-seconds or an HTTP date,
    never negative); fractional seconds ("0.5", sent by some proxies) are read too. None when absent or unreadable
    (the backoff stands in). Callers cap it."""
    if not value:
        return None
    try:
        return float(Retry.DEFAULT.parse_retry_after(value))
    except InvalidHeader:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None


def _b64(image: bytes | str | Path) -> str:
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return base64.b64encode(data).decode("ascii")


def search(cfg: SearchClientConfig) -> dict:
    """POST one query to ``/search`` (retrying transient faults) and return the parsed answer."""
    return SearchClient.from_config(cfg).search(cfg.text, image=cfg.image, artwork_id=cfg.artwork_id, k=cfg.k,
                                                model=cfg.model, target=cfg.target)


def format_results(answer: dict) -> str:
    """One line per hit: rank, score, id and a title or text."""
    head = (f"[search] {answer['model']}: {answer['query']} → {answer['target']}, "
            f"{len(answer['results'])} results in {answer['took_ms']:.1f} ms")
    lines = [head]
    for hit in answer["results"]:
        label = hit.get("title") or hit.get("text") or ""
        lines.append(f"{hit['rank']:>3}  {hit['score']:+.4f}  {hit['id']}  {label[:90]}")
    return "\n".join(lines)


def run_search(cfg: SearchClientConfig) -> dict:
    """`artray search`: print the API's answer to one query, a line per hit."""
    answer = search(cfg)
    print(format_results(answer))
    return answer
