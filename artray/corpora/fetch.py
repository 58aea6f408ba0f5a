"""A polite HTTP image fetcher: one URL in, a checked and resized image (or a failure code) out.

Used by the URL ingest stage (`artray.stages.ingest`) inside Ray Data actors, but plain
Python: no Ray here. What it promises:

* a descriptive User-Agent with a contact (Wikimedia and most museum CDNs require one);
* retries with exponential backoff and jitter on 429, 5xx, timeouts and dropped
  connections, honouring ``Retry-After``;
* at most ``per_host_limit`` requests in flight per host *per process* (a semaphore per
  host shared by every `Fetcher` in the process). The ingest stage divides its
  cluster-wide ``per_host_concurrency`` over its actors, so the cluster stays under it;
* connect/read timeouts and an overall download deadline; a ``max_bytes`` cutoff while
  streaming, so an over-large file is never held in memory;
* the body decoded and shrunk with `artray.images.fit_long_side` (never enlarged) under an
  explicit pixel limit, so a decompression bomb is refused from its header.

`Fetcher.fetch` never raises: every problem becomes a `FetchResult` with a short ``reason``
code, a ``detail`` that says what to do, and ``retryable`` (True only for transient causes).
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import requests
from requests.adapters import HTTPAdapter

from artray import __version__
from artray.images import DEFAULT_MAX_PIXELS, ImageError, fit_long_side

PROJECT_URL = "https://github.com/artray"
_RETRY_STATUS = {429, 500, 502, 503, 504, 507, 508, 509, 520, 521, 522, 523, 524}
_PERMANENT_STATUS = {
    404: ("not_found", "the server says this image does not exist (HTTP 404); fix img_url in the source corpus or drop the artwork"),
    410: ("gone", "the image was removed from the server (HTTP 410); find a new URL or drop the artwork"),
    401: ("forbidden", "the server requires authentication (HTTP 401); this URL cannot be fetched anonymously"),
    403: ("forbidden", "the server refused the request (HTTP 403); check the host's bot policy and set user_agent/contact"),
    451: ("forbidden", "the image is unavailable for legal reasons (HTTP 451)"),
}


def default_user_agent(contact: str | None = None) -> str:
    """`artray/<version> (+<project url>; cultural-heritage research[; <contact>])`."""
    extra = f"; {contact}" if contact else ""
    return f"artray/{__version__} (+{PROJECT_URL}; cultural-heritage research{extra})"


@dataclass(frozen=True)
class FetchConfig:
    """How to fetch: identity, patience, limits. Picklable, so it travels to Ray actors."""

    user_agent: str | None = None  # None: default_user_agent(contact)
    contact: str | None = None  # e-mail or URL appended to the User-Agent (and sent as From:)
    connect_timeout_s: float = 10.0
    timeout_s: float = 30.0  # read timeout: longest silence between bytes
    download_timeout_s: float = 120.0  # whole download, so a slow drip cannot hang a thread
    retries: int = 3  # extra attempts after the first, for transient failures only
    backoff_s: float = 1.0  # first backoff; doubles each retry, with jitter
    max_backoff_s: float = 60.0  # cap on any single wait, Retry-After included
    per_host_limit: int = 8  # requests in flight per host in this process
    pool_size: int = 16  # HTTP connections kept per host (set to the thread count)
    max_bytes: int = 50_000_000
    max_long_side: int | None = 1000
    resample: str = "area"  # artray.images.RESAMPLE_FILTERS
    max_image_pixels: int = DEFAULT_MAX_PIXELS

    def headers(self) -> dict[str, str]:
        ua = self.user_agent or default_user_agent(self.contact)
        if self.user_agent and self.contact and self.contact not in ua:
            ua = f"{ua} ({self.contact})"
        headers = {"User-Agent": ua, "Accept": "image/*,*/*;q=0.8"}
        if self.contact and "@" in self.contact:
            headers["From"] = self.contact.removeprefix("mailto:")
        return headers


@dataclass
class FetchResult:
    """The outcome for one URL: an image (ok) or a failure code, plus what it cost."""

    url: str | None
    ok: bool
    image: bytes | None = None
    width: int | None = None
    height: int | None = None
    reason: str | None = None
    detail: str | None = None
    retryable: bool = False
    status: int | None = None
    attempts: int = 0
    bytes_downloaded: int = 0


class FetchError(Exception):
    """One failed attempt (or a permanent failure); carries the failure code."""

    def __init__(self, reason: str, detail: str, retryable: bool, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.retryable = reason, detail, retryable
        self.status, self.retry_after = status, retry_after


_HOST_LOCK = threading.Lock()
_HOST_SEMAPHORES: dict[tuple[str, int], threading.BoundedSemaphore] = {}


def host_semaphore(host: str, limit: int) -> threading.BoundedSemaphore:
    """The process-wide semaphore limiting requests in flight to `host`."""
    with _HOST_LOCK:
        key = (host, max(1, limit))
        if key not in _HOST_SEMAPHORES:
            _HOST_SEMAPHORES[key] = threading.BoundedSemaphore(key[1])
        return _HOST_SEMAPHORES[key]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Fetcher:
    """Downloads images with retries, per-host limits and size/pixel checks; thread-safe."""

    def __init__(self, config: FetchConfig = FetchConfig()):
        self.config = config
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=16, pool_maxsize=max(1, config.pool_size), max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(config.headers())

    def close(self) -> None:
        self.session.close()

    def fetch(self, url: str | None) -> FetchResult:
        """Fetch, check and resize the image at `url`; never raises."""
        result = FetchResult(url=url, ok=False)
        try:
            data = self._download_with_retries(url, result)
            image, info = fit_long_side(
                data, self.config.max_long_side, self.config.max_image_pixels, resample=self.config.resample
            )
        except FetchError as exc:
            result.reason, result.detail, result.retryable, result.status = exc.reason, exc.detail, exc.retryable, exc.status
            return result
        except ImageError as exc:
            reason = exc.reason
            if reason == "undecodable_image" and "truncated" in str(exc.__cause__ or "").lower():
                reason = "truncated_image"
            result.reason, result.retryable = reason, False
            result.detail = f"{exc.detail}; the file at the URL is unusable: replace the URL or drop the artwork"
            return result
        except Exception as exc:  # a bug or an exotic library error: record it, never kill the job
            result.reason, result.retryable = "internal_error", True
            result.detail = f"unexpected {type(exc).__name__}: {exc}; re-run, and report it if it repeats"
            return result
        result.ok, result.image, result.width, result.height = True, image, info.width, info.height
        return result

    def _download_with_retries(self, url: str | None, result: FetchResult) -> bytes:
        parsed = urlparse(url or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise FetchError("bad_url", f"img_url {url!r} is not an http(s) URL; fix it in the source corpus", False)
        cfg = self.config
        for attempt in range(cfg.retries + 1):
            result.attempts = attempt + 1
            try:
                with host_semaphore(parsed.netloc.lower(), cfg.per_host_limit):
                    return self._download_once(url, result)
            except FetchError as exc:
                if not exc.retryable or attempt == cfg.retries:
                    if exc.retryable:
                        exc.detail += f" (gave up after {attempt + 1} attempts; re-run ingest to retry)"
                    raise
                wait = min(cfg.max_backoff_s, cfg.backoff_s * 2**attempt) * (0.5 + random.random())
                if exc.retry_after is not None:
                    wait = min(cfg.max_backoff_s, max(wait, exc.retry_after))
                time.sleep(wait)
        raise AssertionError("unreachable")

    def _download_once(self, url: str, result: FetchResult) -> bytes:
        cfg = self.config
        started = time.monotonic()
        try:
            with self.session.get(url, stream=True, timeout=(cfg.connect_timeout_s, cfg.timeout_s)) as resp:
                status = resp.status_code
                if status != 200:
                    raise _status_error(status, resp.headers.get("Retry-After"))
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > cfg.max_bytes:
                    raise _too_large(int(length), cfg.max_bytes)
                chunks, size = [], 0
                for chunk in resp.iter_content(chunk_size=1 << 16):
                    size += len(chunk)
                    result.bytes_downloaded += len(chunk)
                    if size > cfg.max_bytes:
                        raise _too_large(size, cfg.max_bytes)
                    if time.monotonic() - started > cfg.download_timeout_s:
                        raise FetchError("timeout", f"download took over {cfg.download_timeout_s}s; the server is too slow now", True)
                    chunks.append(chunk)
                return b"".join(chunks)
        except FetchError:
            raise
        except requests.exceptions.Timeout as exc:
            raise FetchError("timeout", f"no answer within the timeout ({exc.__class__.__name__}); the host is slow or down", True) from exc
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
            raise FetchError("incomplete_download", f"the connection broke mid-download ({exc}); transient", True) from exc
        except requests.exceptions.TooManyRedirects as exc:
            raise FetchError("too_many_redirects", f"redirect loop ({exc}); fix img_url", False) from exc
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as exc:
            raise FetchError("bad_url", f"invalid URL ({exc}); fix img_url in the source corpus", False) from exc
        except requests.exceptions.ConnectionError as exc:
            if "timed out" in str(exc).lower():
                raise FetchError("timeout", f"the server stopped sending ({exc}); the host is slow or down", True) from exc
            raise FetchError("connection_error", f"could not connect ({exc}); check the host is up and reachable", True) from exc
        except requests.exceptions.RequestException as exc:
            raise FetchError("connection_error", f"request failed ({exc})", True) from exc


def _status_error(status: int, retry_after: str | None) -> FetchError:
    if status in _PERMANENT_STATUS:
        reason, detail = _PERMANENT_STATUS[status]
        return FetchError(reason, detail, False, status)
    if status == 429:
        return FetchError("rate_limited", "the host rate-limited us (HTTP 429); lower per_host_concurrency or re-run later",
                          True, status, parse_retry_after(retry_after))
    if status in _RETRY_STATUS or status >= 500:
        return FetchError("server_error", f"the server failed (HTTP {status}); transient, re-run later", True, status,
                          parse_retry_after(retry_after))
    return FetchError("http_error", f"unexpected HTTP {status}; check the URL in a browser", False, status)


def _too_large(size: int, limit: int) -> FetchError:
    return FetchError("too_large", f"the file is over max_bytes ({size} > {limit} bytes); raise max_bytes if it is wanted", False)
