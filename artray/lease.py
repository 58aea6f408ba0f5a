"""One writer per output: an exclusive, expiring run lease at ``<output>/_lease.json``.

Two runs writing one output (two identical `artray embed` commands, a rerun started while the
first is still alive, two trainings with one run name) would each skip only what was committed
when they started and then commit the same keys twice. So every run that writes an output takes
its lease first, and a second run is refused at start with the holder's name and age.

- Taking it is one exclusive create: locally a hard link of a finished temp file (fails if the lease
  exists, and a reader never sees it half written); on ``s3://`` a conditional put (``PutObject``
  with ``If-None-Match: *``; AWS S3, MinIO and moto >= 5.0.x honour it).
- The lease names its holder (host, pid, Ray job submission id if any, start time) and a random
  token. A background thread renews it every TTL/4 (``renewed_at``); a run whose lease was taken
  from it (it stopped renewing for longer than the TTL) says so at release.
- A lease not renewed for ``ttl_s`` (default 120 s, ``ARTRAY_LEASE_TTL_S``) belongs to a dead run,
  and so does one whose holder provably ran on this machine (same host name and pid namespace) and
  whose process is gone: the next run takes it over, with a warning (locally under a short takeover lock; on S3 with a
  put conditional on the stale lease's ETag, so two runs never both take it).
- ``--force-lease`` (``ARTRAY_FORCE_LEASE=1``) takes a live-looking lease over at once: only after
  making sure its holder is dead (e.g. a driver killed seconds ago on another machine).
- It is released (deleted) when the run ends, failed or not.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from artray import storage
from artray.errors import UserError
from artray.storage import DEFAULT_OPTIONS, StorageOptions

logger = logging.getLogger(__name__)

LEASE_FILE = "_lease.json"
TTL_ENV = "ARTRAY_LEASE_TTL_S"
FORCE_ENV = "ARTRAY_FORCE_LEASE"
DEFAULT_TTL_S = 120.0


class LeaseHeld(UserError, RuntimeError):
    """Another live run holds the output's lease; the message names it and how to proceed."""


def lease_uri(output: str) -> str:
    return storage.join(output, LEASE_FILE)


def default_ttl() -> float:
    try:
        return max(1.0, float(os.environ.get(TTL_ENV, DEFAULT_TTL_S)))
    except ValueError:
        raise UserError(f"{TTL_ENV}={os.environ[TTL_ENV]!r} is not a number of seconds") from None


def force_from_env() -> bool:
    return os.environ.get(FORCE_ENV, "").strip().lower() in ("1", "true", "yes")


def _submission_id() -> str | None:
    """The Ray job submission id when this process is a submitted job's driver."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        return (json.loads(raw).get("metadata") or {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process its parent has not reaped yet is dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


_HELD: set[str] = set()  # tokens of the leases this process holds now


def holder_is_dead(holder: dict) -> bool:
    """True when the holder provably ran on this machine (same host name and pid namespace) and is gone:
    its process is dead, or it is this process and no lease of it is live (a release that failed)."""
    if holder.get("host") != socket.gethostname() or holder.get("pidns") != _pid_namespace() or not holder.get("pid"):
        return False
    pid = int(holder["pid"])
    if pid == os.getpid():
        return holder.get("token") not in _HELD
    return not _pid_alive(pid)


def _age(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f} min"


def describe(holder: dict, now: float | None = None) -> str:
    """'host:pid (job …), started 3.2 min ago, renewed 4s ago' of a lease's holder."""
    now = time.time() if now is None else now
    who = f"{holder.get('host')}:{holder.get('pid')}" + (f" (job {holder['job']})" if holder.get("job") else "")
    return (f"{who} [{holder.get('what', 'run')}], started {_age(now - holder.get('started_at', now))} ago, "
            f"renewed {_age(now - holder.get('renewed_at', now))} ago")


# --- the two backends: exclusive create, compare-and-replace, read, delete --------------------------
class _Local:
    def __init__(self, uri: str):
        self.path = Path(storage.filesystem(uri)[1])
        self.made: list[Path] = []  # folders the lease created (removed again if the run wrote nothing)

    def create(self, body: bytes) -> object | None:
        """Write `body` if no lease exists; returns a version handle, or None when one exists. The lease
        appears whole (a hard link of a finished temp file), so a racing reader never sees it half written."""
        for _ in range(3):  # a finishing run may remove the empty output folder between mkdir and link
            missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.made = self.made or missing
            tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(body)
                    f.flush()
                    os.fsync(f.fileno())
                os.link(tmp, self.path)
                return body
            except FileExistsError:
                return None
            except FileNotFoundError:
                continue
            finally:
                tmp.unlink(missing_ok=True)
        raise OSError(f"could not create the run lease {self.path}: its folder keeps disappearing")

    def read(self) -> tuple[dict, object] | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw), raw
        except ValueError:  # a lease being created this instant, or garbage: treat it as held, not renewed
            return {"token": None, "started_at": self.path.stat().st_mtime,
                    "renewed_at": self.path.stat().st_mtime}, raw

    def replace(self, body: bytes, expected: object) -> object | None:
        """Replace the lease with `body` if it still holds `expected` (its bytes); None if it changed."""
        lock = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:  # a takeover lock outlives its takeover only if that process died inside it
                if time.time() - lock.stat().st_mtime > 30:
                    lock.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return None
        os.close(fd)
        try:
            try:
                current = self.path.read_bytes()
            except FileNotFoundError:
                current = None
            if current != expected:
                return None
            tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(body)
            os.replace(tmp, self.path)
            return body
        finally:
            lock.unlink(missing_ok=True)

    def delete(self) -> None:
        """Delete the lease, and the output folders it created if the run left them empty (a run refused
        before it wrote anything leaves no trace)."""
        self.path.unlink(missing_ok=True)
        for folder in self.made:  # innermost first
            try:
                folder.rmdir()
            except OSError:  # not empty (the run wrote there) or gone: leave it
                break


class _S3:
    def __init__(self, uri: str, options: StorageOptions):
        import boto3
        from botocore.config import Config

        _, path = storage.filesystem(uri, options)
        self.bucket, self.key = path.split("/", 1)
        region = options.resolved_region()
        endpoint = options.resolved_endpoint()
        if endpoint and "://" not in endpoint:
            endpoint = f"https://{endpoint}"
        # bounded like artray.storage's pyarrow client: a dead endpoint fails a lease call in seconds, not minutes
        config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 4, "mode": "standard"})
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config)

    @staticmethod
    def _code(exc) -> str:
        return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))

    def _put(self, body: bytes, **cond) -> object | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body,
                                          ContentType="application/json", **cond)["ETag"]
        except ClientError as exc:
            if self._code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return None
            if self._code(exc) in ("NotImplemented", "501"):
                raise storage.StorageError(
                    f"the S3 endpoint of {self.bucket} does not support conditional writes (If-None-Match / If-Match), "
                    "which artray's run lease needs to keep two runs from writing one output; use a store that has "
                    "them (AWS S3, MinIO >= 2024, Ceph >= 19) or set ARTRAY_FORCE_LEASE=1 at your own risk") from exc
            raise storage.StorageError(f"could not write the lease s3://{self.bucket}/{self.key}: {exc}") from exc

    def create(self, body: bytes) -> object | None:
        return self._put(body, IfNoneMatch="*")

    def read(self) -> tuple[dict, object] | None:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if self._code(exc) in ("NoSuchKey", "404"):
                return None
            raise storage.StorageError(f"could not read the lease s3://{self.bucket}/{self.key}: {exc}") from exc
        raw = obj["Body"].read()
        try:
            return json.loads(raw), obj["ETag"]
        except ValueError:
            return {"token": None, "started_at": 0.0, "renewed_at": 0.0}, obj["ETag"]

    def replace(self, body: bytes, expected: object) -> object | None:
        return self._put(body, IfMatch=expected)

    def delete(self) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key)


# --- the lease ---------------------------------------------------------------------------------------
@dataclass
class Lease:
    """The run lease of one output; a context manager (`acquire` on enter, `release` on exit)."""

    output: str
    what: str = "run"  # who takes it, for the holder line: 'embed', 'index build', 'train <name>'
    options: StorageOptions = DEFAULT_OPTIONS
    ttl_s: float | None = None  # None: ARTRAY_LEASE_TTL_S, else 120 s
    force: bool | None = None  # None: ARTRAY_FORCE_LEASE
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    taken_over: dict | None = None  # the holder of a lease this run took over (expired or forced)
    lost: bool = False  # another run took the lease while this one held it
    _version: object = None
    _started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self):
        self.ttl_s = default_ttl() if self.ttl_s is None else float(self.ttl_s)
        self.force = force_from_env() if self.force is None else self.force
        self.uri = lease_uri(self.output)
        self._store = _S3(self.uri, self.options) if storage.is_s3(self.uri) else _Local(self.uri)

    def _body(self, renewed_at: float) -> bytes:
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "pidns": _pid_namespace(), "job": _submission_id(),
                  "what": self.what,
                  "started_at": self._started, "renewed_at": renewed_at, "ttl_s": self.ttl_s, "token": self.token}
        return json.dumps(holder, indent=2).encode("utf-8")

    def acquire(self) -> Lease:
        """Take the lease, or raise `LeaseHeld` naming the live holder."""
        self._started = time.time()
        for _ in range(20):
            version = self._store.create(self._body(self._started))
            if version is not None:
                self._version = version
                break
            found = self._store.read()
            if found is None:
                continue  # released between our create and read: try again
            holder, seen = found
            now = time.time()
            ttl = float(holder.get("ttl_s") or self.ttl_s)
            expired = now - float(holder.get("renewed_at") or 0) > ttl
            dead = not expired and holder_is_dead(holder)
            if not (expired or dead or self.force):
                raise LeaseHeld(
                    f"{self.output} is being written by another run: {describe(holder, now)} (lease {self.uri}; it "
                    f"expires in {max(0.0, ttl - (now - float(holder.get('renewed_at') or 0))):.0f}s unless renewed). "
                    "Two runs writing one output would commit the same rows twice. Wait for "
                    "it to finish (then run again to resume), or, once you are sure that run is dead, pass "
                    f"--force-lease (or set {FORCE_ENV}=1); a dead run's lease also expires by itself "
                    f"after its TTL ({TTL_ENV})")
            version = self._store.replace(self._body(self._started), seen)
            if version is None:
                time.sleep(0.2)
                continue  # someone else renewed or took it meanwhile: look again
            self._version, self.taken_over = version, holder
            why = "expired" if expired else "its process is gone" if dead else "forced"
            logger.warning("%s: took over the run lease of %s (%s); what it committed is kept and resumed",
                           self.output, describe(holder, now), why)
            print(f"[lease] {self.output}: took over the run lease of {describe(holder, now)} ({why})", flush=True)
            break
        else:
            raise LeaseHeld(f"could not take the run lease {self.uri}: it kept changing hands; is another run "
                            "starting on the same output?")
        _HELD.add(self.token)
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name=f"artray-lease-{self.what}", daemon=True)
        self._thread.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a storage hiccup: try again next beat
                logger.warning("could not renew the run lease %s: %s", self.uri, exc)
            if self.lost:
                return

    def renew(self) -> None:
        """Write a fresh ``renewed_at`` if the lease is still this run's (else mark it lost)."""
        version = self._store.replace(self._body(time.time()), self._version)
        if version is None:
            found = self._store.read()
            if found is None or found[0].get("token") != self.token:
                self.lost = True
                logger.error("%s: this run's lease was taken over by %s; stop this run, the other one writes "
                             "the output now", self.output, describe(found[0]) if found else "nobody (deleted)")
            return
        self._version = version

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this run's. Never raises: a lease that cannot be
        deleted (storage down) expires after its TTL, and a rerun in this process takes it over at once."""
        self._stop.set()
        _HELD.discard(self.token)
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        try:
            found = self._store.read()
            if found is not None and found[0].get("token") == self.token:
                self._store.delete()
        except Exception as exc:  # noqa: BLE001 - the run's own error (if any) is the one to show
            logger.warning("could not release the run lease %s (%s); it expires after %.0fs", self.uri, exc,
                           self.ttl_s)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
