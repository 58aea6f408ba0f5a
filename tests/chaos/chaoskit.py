"""The chaos suite's machinery: a multi-node Ray cluster on one machine (`ChaosCluster`), a thread that
injects faults while a stage runs (`Killer`), and where the report goes. Fixtures live in conftest.py."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

WORKER_CPUS = 1
OBJECT_STORE = 220 * 1024 * 1024


class ChaosCluster:
    """A running `Cluster` (head + worker nodes) the driver is connected to, with ways to hurt it."""

    def __init__(self, workers: int = 2, worker_cpus: float = WORKER_CPUS, head_cpus: float = 0,
                 object_store: int = OBJECT_STORE, worker_resources: dict | None = None):
        import ray
        from ray.cluster_utils import Cluster

        if ray.is_initialized():
            raise RuntimeError("a Ray connection is already open in this process; the chaos suite needs its own cluster")
        self._old_tmp = os.environ.get("RAY_TMPDIR")
        # Short: Ray puts Unix sockets under it (108-byte limit).
        self.tmpdir = tempfile.mkdtemp(prefix="arc-", dir="/tmp")
        os.environ["RAY_TMPDIR"] = self.tmpdir
        # A raylet waits for its node's agent to start; on a loaded 2-core box that can take longer than
        # Ray's default, and the raylet then aborts ("Timed out waiting for file …metrics_agent_port…").
        os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
        self.node_args = {"num_cpus": worker_cpus, "object_store_memory": object_store,
                          "resources": worker_resources or {}}
        self.workers_wanted = workers
        self._adders: list[threading.Thread] = []
        self.add_errors: list[str] = []
        self.expected_cpus = workers * worker_cpus + head_cpus
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": head_cpus, "object_store_memory": object_store, "include_dashboard": False})
        try:
            for _ in range(workers):
                self.add_worker_node()
            self.cluster.wait_for_nodes(60)
            ray.init(address=self.cluster.address, logging_level="WARNING")
            self.wait_resources_free(60)
        except BaseException:
            self.shutdown()  # a half-started cluster leaves no process behind
            raise

    @property
    def address(self) -> str:
        return self.cluster.address

    def worker_nodes(self) -> list:
        while True:
            try:  # a replacement may join from another thread while we look
                return sorted(self.cluster.worker_nodes, key=lambda n: n.node_id)
            except RuntimeError:
                time.sleep(0.01)

    def replace_worker_node(self, index: int = 0, wait: bool = True) -> dict:
        """SIGKILL every process of one worker node (raylet, workers, object store) and add a fresh node:
        before returning, or (``wait=False``) in the background, so the next fault can strike while the
        replacement still starts (two nodes lost in quick succession)."""
        nodes = self.worker_nodes()
        node = nodes[index % len(nodes)]
        victims = len(self._stage_processes(node))
        self.cluster.remove_node(node, allow_graceful=False)
        if wait:
            self.add_worker_node()
        else:
            adder = threading.Thread(target=self._add_in_background, daemon=True)
            adder.start()
            self._adders.append(adder)
        return {"fault": "node_removed", "node": node.node_id[:8], "stage_processes_on_node": victims,
                "replacement": "joined" if wait else "joining in the background"}

    def _add_in_background(self) -> None:
        try:
            self.add_worker_node()
        except Exception as exc:  # noqa: BLE001 - surfaces as missing CPUs in wait_resources_free
            self.add_errors.append(f"{type(exc).__name__}: {exc}")

    def add_worker_node(self, tries: int = 3):
        """Add a worker node like the others; callable from the killer thread (a node started off the
        main thread cannot install its exit signal handlers, so `shutdown` stops it instead)."""
        main = threading.current_thread() is threading.main_thread()
        for attempt in range(tries):
            self.cluster._shutdown_at_exit = main
            try:
                return self.cluster.add_node(**self.node_args)
            except Exception:
                if attempt == tries - 1:
                    raise
                time.sleep(2)
            finally:
                self.cluster._shutdown_at_exit = True

    def kill_worker_process(self, match: tuple[str, ...], index: int = 0) -> dict | None:
        """SIGKILL one Ray worker process of this cluster whose title contains one of `match`
        (e.g. the stage's UDF class name, ``Write``); None when no such process runs right now."""
        procs = [p for node in self.worker_nodes() for p in self._stage_processes(node)]
        hits = [(p, t) for p, t in procs if any(m in t for m in match)]
        if not hits:
            return None
        proc, title = hits[index % len(hits)]
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            return None
        return {"fault": "worker_killed", "pid": proc.pid, "process": title.strip()[:80]}

    def running_titles(self) -> list[str]:
        return [t for node in self.worker_nodes() for _, t in self._stage_processes(node)]

    @staticmethod
    def _stage_processes(node) -> list[tuple[psutil.Process, str]]:
        """(process, title) of the Ray worker processes under `node`'s raylet (never another cluster's)."""
        from ray._private import ray_constants

        out = []
        for info in node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, []):
            try:
                children = psutil.Process(info.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for child in children:
                try:
                    title = " ".join(child.cmdline())
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                if title.startswith("ray::"):
                    out.append((child, title))
        return out

    def wait_resources_free(self, timeout: float = 90) -> float:
        """Wait until every resource of the cluster is free again (and all nodes are back); returns the wait.

        Raises AssertionError naming what is still held after `timeout` seconds."""
        import ray

        start = time.time()
        while True:
            total, free = ray.cluster_resources(), ray.available_resources()
            held = {k: round(v - free.get(k, 0), 3) for k, v in total.items()
                    if not k.startswith("node:") and not k.startswith("memory") and k != "object_store_memory"
                    and v - free.get(k, 0) > 1e-6}
            if not held and total.get("CPU", 0) >= self.expected_cpus:
                return time.time() - start
            if time.time() - start > timeout:
                raise AssertionError(f"cluster resources still held {timeout:.0f}s after the stage: {held} "
                                     f"(total {total}, free {free}; node start errors: {self.add_errors})")
            time.sleep(0.5)

    def shutdown(self) -> None:
        import ray

        for adder in self._adders:
            adder.join(120)
        try:
            ray.shutdown()
        finally:
            self.cluster.shutdown()
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            if self._old_tmp is None:
                os.environ.pop("RAY_TMPDIR", None)
            else:
                os.environ["RAY_TMPDIR"] = self._old_tmp


@dataclass
class Killer:
    """A thread that injects faults while a stage runs: fault i fires once `progress()` (committed rows)
    reaches `after_rows[i]` and has grown since the previous fault. Each fault is a callable that returns
    a dict describing what it did, or None when there was nothing to hit yet (it is tried again)."""

    faults: list
    progress: callable
    after_rows: list[int]
    poll_s: float = 0.05
    events: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-killer", daemon=True)
        self.started = time.time()

    def start(self) -> Killer:
        self.started = time.time()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        fired, last_rows, pending = 0, -1, None  # pending: the last event still waiting for a new commit
        while not self._stop.is_set():
            try:
                rows = self.progress()
            except Exception as exc:  # noqa: BLE001 - a listing racing a commit; try again
                self.errors.append(f"progress: {exc}")
                rows = -1
            now = time.time()
            if pending is not None and rows > pending["rows_committed_before"]:
                pending["recovered_s"] = round(now - self.started - pending["at_s"], 2)
                pending = None
            if fired < len(self.faults) and rows >= self.after_rows[fired] and rows > last_rows:
                fault = self.faults[fired]
                try:
                    event = fault()
                except Exception as exc:  # noqa: BLE001 - recorded; the test asserts on the count
                    self.errors.append(f"{getattr(fault, '__name__', fault)}: {type(exc).__name__}: {exc}")
                    event = None
                if event is not None:
                    event.update(at_s=round(now - self.started, 2), rows_committed_before=rows,
                                 fault_s=round(time.time() - now, 2))
                    self.events.append(event)
                    fired, last_rows, pending = fired + 1, rows, event
            self._stop.wait(self.poll_s)


class LocalHTTPServer:
    """A threaded HTTP server on 127.0.0.1 for `handler` (its `url`), serving from a daemon thread until `close`."""

    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def report_path(tmp_root: Path) -> Path:
    """$ARTRAY_CHAOS_REPORT, else chaos-report.jsonl under the pytest temp root."""
    return Path(os.environ.get("ARTRAY_CHAOS_REPORT") or tmp_root / "chaos-report.jsonl")


def committed_rows(dir_uri: str) -> int:
    """Rows in the committed Parquet shards under a local `dir_uri` (footers only: cheap to poll)."""
    import pyarrow.parquet as pq

    from artray import storage

    total = 0
    for shard in storage.list_files(dir_uri, ".parquet"):
        try:
            total += pq.ParquetFile(shard).metadata.num_rows
        except FileNotFoundError:  # replaced or consolidated between listing and reading
            pass
    return total


@dataclass
class Snapshot:
    """What a stage's output holds: per id a content hash (and float columns apart), duplicates, failures."""

    hashes: dict[str, str]
    floats: dict[str, list]
    rows: int
    failures: list[tuple]  # (key, reason, retryable), sorted
    failure_rows: int
    manifest: dict | None

    @classmethod
    def read(cls, output: str, table: str, id_col: str, float_cols: tuple[str, ...] = (), options=None) -> Snapshot:
        import hashlib

        import pyarrow as pa

        from artray import corpus, storage

        options = options or storage.DEFAULT_OPTIONS
        shards = storage.list_files(storage.join(output, table), ".parquet", options)
        data = pa.concat_tables([storage.read_parquet(s, options) for s in shards]) if shards else None
        hashes, floats, rows = {}, {}, 0
        if data is not None:
            rows = data.num_rows
            plain = [c for c in sorted(data.column_names) if c not in float_cols]
            for row in data.select(plain).to_pylist():
                digest = hashlib.sha256(repr(sorted(row.items())).encode()).hexdigest()[:16]
                hashes.setdefault(row[id_col], digest)
            for col in float_cols:
                for key, vec in zip(data[id_col].to_pylist(), data[col].to_pylist()):
                    floats.setdefault(key, []).append(vec)
        failures = corpus.read_failures(output, options).to_pylist()
        return cls(hashes=hashes, floats=floats, rows=rows,
                   failures=sorted((f["key"], f["reason"], f["retryable"]) for f in failures),
                   failure_rows=len(failures), manifest=corpus.read_manifest(output, options))

    def compare(self, clean: Snapshot, atol: float = 1e-5) -> dict:
        """Rows expected / present / lost / extra / duplicated / with other content, against `clean`."""
        import numpy as np

        expected, present = set(clean.hashes), set(self.hashes)
        differ = {k for k in expected & present if clean.hashes[k] != self.hashes[k]}
        for key, vecs in self.floats.items():
            if key in clean.floats and not all(np.allclose(v, clean.floats[key][0], atol=atol) for v in vecs):
                differ.add(key)
        return {"rows_expected": len(expected), "rows_present": len(expected & present),
                "rows_lost": len(expected - present), "rows_extra": len(present - expected),
                "rows_duplicated": self.rows - len(present), "rows_differing": len(differ),
                "failures_consistent": self.failures == clean.failures
                and self.failure_rows == len({f[0] for f in self.failures})}


def run_to_completion(run, cluster: ChaosCluster, max_attempts: int = 4) -> tuple[dict, list[str]]:
    """Call `run()` until it returns (a stage that raised is simply run again, as a user would);
    returns (its result, the error of each failed attempt). Waits for all nodes before a rerun."""
    errors = []
    for _ in range(max_attempts):
        try:
            return run(), errors
        except Exception as exc:  # noqa: BLE001 - the point: any failure → run the same config again
            lines = [line for line in str(exc).splitlines() if line.strip()]
            errors.append(f"{type(exc).__name__}: {lines[-1][:300] if lines else ''}")
            cluster.wait_resources_free(120)
    raise AssertionError(f"the stage did not finish in {max_attempts} attempts: {errors}")
