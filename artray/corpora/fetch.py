"""A polite HTTP image fetcher: one URL in, a checked and resized image (or a failure code) out.

Used by the URL ingest stage (`artray.stages.ingest`) inside Ray Data actors, but plain
Python: no Ray here. What it promises:

* a descriptive User-Agent with a contact (Wikimedia and most museum CDNs require one);
* retries on 429, 5xx, timeouts and dropped connections by urllib3's `Retry` on the mounted
  adapters (exponential backoff with jitter, ``Retry-After`` honoured, both capped at
  ``max_backoff_s``); a connection that breaks mid-body is retried under the same policy;
* ``X-Robots-Tag`` honoured: an image whose owner says ``noai``, ``noimageai``, ``noindex``,
  ``noimageindex`` or ``none`` (img2dataset's default set, plus ``none`` = noindex, nofollow), to
  every robot or to artray's user agent, is skipped before its body is read
  (``robots_disallowed``), unless ``ignore_robots`` is set;
* at most ``per_host_limit`` requests in flight per host *per process* (a semaphore per
  host shared by every `Fetcher` in the process). The ingest stage divides its
  cluster-wide ``per_host_concurrency`` over its actors, so the cluster stays under it;
* connect/read timeouts and an overall download deadline, checked after every socket read (so a
  server that drips a Content-Length body byte by byte, each within the read timeout, is cut off
  at the deadline); a ``max_bytes`` cutoff while streaming, so an over-large file is never held
  in memory;
* the body decoded and shrunk with `artray.images.fit_long_side` (never enlarged) under an
  explicit pixel limit, so a decompression bomb is refused from its header.

`Fetcher.fetch` never raises: every problem becomes a `FetchResult` with a short ``reason``
code, a ``detail`` that says what to do, and ``retryable`` (True only for transient causes).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from artray import __version__
from artray.images import DEFAULT_MAX_PIXELS, ImageError, fit_long_side

PROJECT_URL = "https://github.com/artray"
_RETRY_STATUS = frozenset({429, *range(500, 600)})
# X-Robots-Tag rules that keep an image out of a training set: img2dataset's default set
# ("noai", "noimageai", "noindex", "noimageindex") and "none" (= noindex, nofollow).
ROBOTS_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
_VALUED_RULES = frozenset({"max-snippet", "max-image-preview", "max-video-preview", "unavailable_after"})
_READ_SIZE = 1 << 16  # at most this much per socket read; the deadline is checked after each read
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
    ignore_robots: bool = False  # fetch images whose X-Robots-Tag opts out of AI use (only with permission)

    def agent_token(self) -> str:
        """The product token robots rules name us by: "artray", or the first word of a custom user_agent."""
        words = (self.user_agent or "").split("/")[0].split()
        return words[0].lower() if words else "artray"

    def retry_policy(self) -> Retry:
        """urllib3's Retry for the mounted adapters: transient statuses, timeouts and dropped connections."""
        return Retry(total=self.retries, status_forcelist=_RETRY_STATUS, allowed_methods=frozenset({"GET"}),
                     backoff_factor=self.backoff_s, backoff_jitter=self.backoff_s, backoff_max=self.max_backoff_s,
                     respect_retry_after_header=True, retry_after_max=self.max_backoff_s, raise_on_status=False)

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

    def __init__(self, reason: str, detail: str, retryable: bool, status: int | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.retryable, self.status = reason, detail, retryable, status


_HOST_LOCK = threading.Lock()
_HOST_SEMAPHORES: dict[tuple[str, int], threading.BoundedSemaphore] = {}


def host_semaphore(host: str, limit: int) -> threading.BoundedSemaphore:
    """The process-wide semaphore limiting requests in flight to `host`."""
    with _HOST_LOCK:
        key = (host, max(1, limit))
        if key not in _HOST_SEMAPHORES:
            _HOST_SEMAPHORES[key] = threading.BoundedSemaphore(key[1])
        return _HOST_SEMAPHORES[key]


def robots_directive(values: list[str], agents: set[str]) -> str | None:
    """The first rule of ROBOTS_DIRECTIVES that `X-Robots-Tag` header `values` set for every robot or one of
    `agents` (lower-case product tokens), or None.

    Each value is a comma-separated list of rules; a rule written ``bot: rule`` applies to that bot only, and so
    do the rules after it in the same value (``X-Robots-Tag: otherbot: noai, noindex``); ``max-snippet: 20``
    and the other rules that take a value are not bot names."""
    for value in values:
        target = None
        for rule in value.lower().split(","):
            name, colon, rest = rule.partition(":")
            if colon and name.strip() not in _VALUED_RULES:
                target, rule = name.strip(), rest
            rule = rule.strip()
            if rule in ROBOTS_DIRECTIVES and (target is None or target in agents):
                return rule
    return None


class _BodyBroke(Exception):
    """The connection failed while the body was read (after the status line): retried under the same Retry."""

    def __init__(self, error: Exception, retries: Retry, fetch_error: FetchError):
        super().__init__(str(error))
        self.error, self.retries, self.fetch_error = error, retries, fetch_error


class _Session(requests.Session):
    """A `requests.Session` that reads the environment's proxy and CA-bundle settings once per scheme and host
    instead of on every request: requests scans ``os.environ`` four times per request for them (~0.3 ms of
    CPU per image, more in a Ray worker's larger environment), and they do not change while a stage runs."""

    def __init__(self):
        super().__init__()
        self._env_settings: dict[tuple, dict] = {}

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        if proxies or not self.trust_env:  # per-request proxies, or no environment to read: as requests does
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlparse(url)
        key = (parts.scheme, parts.netloc.lower(), stream, verify, cert, tuple(sorted(self.proxies.items())))
        found = self._env_settings.get(key)
        if found is None:
            found = self._env_settings[key] = super().merge_environment_settings(url, proxies, stream, verify, cert)
        return {**found, "proxies": dict(found["proxies"])}


class Fetcher:
    """Downloads images with retries, per-host limits and size/pixel checks; thread-safe."""

    def __init__(self, config: FetchConfig = FetchConfig()):
        self.config = config
        self.agents = {"artray", config.agent_token()}
        self.session = _Session()
        adapter = HTTPAdapter(pool_connections=16, pool_maxsize=max(1, config.pool_size),
                              max_retries=config.retry_policy())
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(config.headers())

    def close(self) -> None:
        self.session.close()

    def fetch(self, url: str | None) -> FetchResult:
        """Fetch, check and resize the image at `url`; never raises."""
        result = FetchResult(url=url, ok=False)
        try:
            data = self._download(url, result)
            image, info = fit_long_side(
                data, self.config.max_long_side, self.config.max_image_pixels, resample=self.config.resample
            )
        except FetchError as exc:
            if exc.retryable:
                tried = f"gave up after {result.attempts} attempts; " if result.attempts > 1 else ""
                exc.detail += f" ({tried}re-run ingest to retry)"
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

    def _download(self, url: str | None, result: FetchResult) -> bytes:
        """The body at `url`. Statuses, timeouts and refused connections are retried inside urllib3 (the
        adapter's Retry); a body that breaks part-way is retried here, continuing that Retry's count."""
        parsed = urlparse(url or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise FetchError("bad_url", f"img_url {url!r} is not an http(s) URL; fix it in the source corpus", False)
        retries = None  # the Retry that counts broken bodies, from the first one's response on
        while True:
            try:
                with host_semaphore(parsed.netloc.lower(), self.config.per_host_limit):
                    return self._download_once(url, result)
            except _BodyBroke as broke:
                try:
                    retries = (retries or broke.retries).increment("GET", url, error=broke.error)
                except (urllib3.exceptions.MaxRetryError, urllib3.exceptions.HTTPError):
                    raise broke.fetch_error from broke.error
                retries.sleep()

    def _download_once(self, url: str, result: FetchResult) -> bytes:
        cfg = self.config
        started = time.monotonic()
        try:
            with self.session.get(url, stream=True, timeout=(cfg.connect_timeout_s, cfg.timeout_s)) as resp:
                retries = resp.raw.retries or cfg.retry_policy()
                result.attempts += len(retries.history) + 1
                status = resp.status_code
                if status != 200:
                    raise _status_error(status)
                directive = robots_directive(resp.raw.headers.getlist("X-Robots-Tag"), self.agents)
                if directive and not cfg.ignore_robots:
                    raise FetchError("robots_disallowed", f"the server's X-Robots-Tag says {directive!r} for this "
                                     "image: its owner opted out of this use. Drop the artwork, or set ignore_robots "
                                     "only with the owner's permission", False, status)
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > cfg.max_bytes:
                    raise _too_large(int(length), cfg.max_bytes)
                return self._read_body(resp, started, result, retries)
        except (FetchError, _BodyBroke):
            raise
        except requests.exceptions.Timeout as exc:
            result.attempts += cfg.retries + 1  # urllib3 retried it until its Retry ran out
            raise FetchError("timeout", f"no answer within the timeout ({exc.__class__.__name__}); the host is slow or down", True) from exc
        except requests.exceptions.TooManyRedirects as exc:
            raise FetchError("too_many_redirects", f"redirect loop ({exc}); fix img_url", False) from exc
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as exc:
            raise FetchError("bad_url", f"invalid URL ({exc}); fix img_url in the source corpus", False) from exc
        except requests.exceptions.ConnectionError as exc:
            result.attempts += cfg.retries + 1  # urllib3 retried it until its Retry ran out
            if "timed out" in str(exc).lower():
                raise FetchError("timeout", f"the server stopped sending ({exc}); the host is slow or down", True) from exc
            raise FetchError("connection_error", f"could not connect ({exc}); check the host is up and reachable", True) from exc
        except requests.exceptions.RequestException as exc:
            raise FetchError("connection_error", f"request failed ({exc})", True) from exc

    def _read_body(self, resp: requests.Response, started: float, result: FetchResult, retries: Retry) -> bytes:
        """The body, one socket read at a time (``read1``), so the whole-download deadline and ``max_bytes``
        are checked after every read: reading 64 KiB chunks instead would wait for each whole chunk, and a
        server sending one byte per read timeout would never be cut off."""
        cfg = self.config
        deadline = started + cfg.download_timeout_s
        chunks, size = [], 0
        try:
            while True:
                chunk = resp.raw.read1(_READ_SIZE)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                result.bytes_downloaded += len(chunk)
                if size > cfg.max_bytes:
                    raise _too_large(size, cfg.max_bytes)
                if time.monotonic() > deadline:
                    raise FetchError("timeout", f"the download took over download_timeout_s={cfg.download_timeout_s}s "
                                     f"({size} bytes so far); the server is too slow now (not retried in this run)", True)
                chunks.append(chunk)
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise _BodyBroke(exc, retries, FetchError(
                "timeout", f"the server stopped sending mid-download ({exc}); the host is slow or down", True)) from exc
        except (urllib3.exceptions.ProtocolError, urllib3.exceptions.DecodeError,
                urllib3.exceptions.SSLError, OSError) as exc:
            raise _BodyBroke(exc, retries, FetchError(
                "incomplete_download", f"the connection broke mid-download ({exc}); transient", True)) from exc


def _status_error(status: int) -> FetchError:
    """The failure for a final non-200 status (urllib3 has already retried the transient ones)."""
    if status in _PERMANENT_STATUS:
        reason, detail = _PERMANENT_STATUS[status]
        return FetchError(reason, detail, False, status)
    if status == 429:
        return FetchError("rate_limited", "the host rate-limited us (HTTP 429); lower per_host_concurrency or re-run later",
                          True, status)
    if status in _RETRY_STATUS:
        return FetchError("server_error", f"the server failed (HTTP {status}); transient, re-run later", True, status)
    return FetchError("http_error", f"unexpected HTTP {status}; check the URL in a browser", False, status)


def _too_large(size: int, limit: int) -> FetchError:
    return FetchError("too_large", f"the file is over max_bytes ({size} > {limit} bytes); raise max_bytes if it is wanted", False)
