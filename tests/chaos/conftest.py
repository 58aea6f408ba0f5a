"""Fixtures for the chaos suite (`pytest -m chaos tests/chaos`): a real multi-node Ray cluster on one
machine, a fault injector that kills its nodes and worker processes while a stage runs, and the
JSON-lines report the reliability table is built from (`bench/reliability_table.py`).

The cluster is `ray.cluster_utils.Cluster`: a head with no CPUs (only the driver and Ray's own
actors live there) and worker nodes with one CPU each, so a stage's tasks and actors always run on
nodes a fault may take away, and the whole cluster fits a 2-core machine. Its Ray temp dir is
private (RAY_TMPDIR), so a plain `ray.init()` elsewhere on the machine never joins it by accident.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from chaoskit import ChaosCluster, report_path


def start_cluster(**kwargs) -> ChaosCluster:
    """A `ChaosCluster`, tried twice: on a loaded machine a node can time out during start-up."""
    try:
        return ChaosCluster(**kwargs)
    except Exception:  # noqa: BLE001 - the half-started cluster is already torn down
        time.sleep(5)
        return ChaosCluster(**kwargs)


@pytest.fixture
def chaos_cluster():
    """A fresh head + 2 one-CPU worker nodes, connected; torn down after the test (no leaked processes).

    For other layouts call `make_chaos_cluster(workers=..., worker_cpus=..., worker_resources=...)`."""
    c = start_cluster()
    try:
        yield c
    finally:
        c.shutdown()


@pytest.fixture
def make_chaos_cluster():
    """Factory for a `ChaosCluster` with other settings; at most one per test, torn down after it."""
    made: list[ChaosCluster] = []

    def make(**kwargs) -> ChaosCluster:
        assert not made, "one chaos cluster per test"
        made.append(start_cluster(**kwargs))
        return made[0]

    yield make
    for c in made:
        c.shutdown()


@pytest.fixture(scope="session")
def chaos_report(tmp_path_factory):
    """`record(dict)` appends one JSON line to the chaos report (see `report_path`)."""
    path = report_path(tmp_path_factory.getbasetemp())
    lock = threading.Lock()

    def record(entry: dict) -> None:
        with lock, open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    record.path = path
    yield record
    print(f"\nchaos report: {path}")
