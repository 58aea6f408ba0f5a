"""Node and worker kills in the middle of ingest, augment, caption and embed.

For each stage: a clean run of the config on the multi-node cluster, then a run of the same config
into a new output while the killer strikes at least twice after rows have been committed (either
removing a worker node and adding a fresh one, or SIGKILLing the stage's actor / write processes).
The stage finishes through Ray's retries, or through reruns of the same config where an attempt
raised. The final output must equal the clean run's: the same row ids, the same content, no
duplicates, the same `_failures`, and every cluster resource free again afterwards.
"""

from __future__ import annotations

import time

import pytest
from chaoskit import Killer, Snapshot, committed_rows, run_to_completion
from stage_cases import cases, make_inputs

from artray import storage

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1800)]

_CLEAN: dict[str, tuple[Snapshot, float]] = {}  # stage → (snapshot, wall s) of its clean run, once per session


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    made = make_inputs(tmp_path_factory.mktemp("chaos-inputs"))
    yield made
    made["server"].close()


@pytest.fixture(scope="module")
def stages(inputs, tiny_models):
    return cases(inputs, tiny_models)


def _clean(case, cluster, tmp_path_factory) -> tuple[Snapshot, float]:
    """The clean run of `case` (made on the first test of the stage that needs it, then reused)."""
    if case.name not in _CLEAN:
        out = str(tmp_path_factory.mktemp(f"clean-{case.name}") / "out")
        started = time.time()
        case.run(out)
        wall = time.time() - started
        cluster.wait_resources_free(120)
        _CLEAN[case.name] = (Snapshot.read(out, case.table, case.id_col, case.float_cols), wall)
    return _CLEAN[case.name]


def _faults(kind: str, cluster, case) -> list:
    if kind == "node":
        # The first replacement joins in the background: the second loss can strike while it starts.
        return [lambda: cluster.replace_worker_node(0, wait=False), lambda: cluster.replace_worker_node(1)]
    udf, write = (f"({case.udf})",), ("ray::Write", "->Write")

    def kill(first, then):
        return lambda: cluster.kill_worker_process(first) or cluster.kill_worker_process(then)

    # The stage's model/fetch actor where one still runs, else a task committing shards.
    return [kill(udf, write), kill(write, udf), kill(udf, write)]


@pytest.mark.parametrize("kind", ["node", "worker"])
@pytest.mark.parametrize("stage", ["ingest", "augment", "caption", "embed"])
def test_stage_survives_kills(stage, kind, stages, inputs, chaos_cluster, chaos_report, tmp_path_factory, tmp_path):
    case = stages[stage]
    if stage == "ingest":
        inputs["server"].delay = 0.0
    clean, clean_wall = _clean(case, chaos_cluster, tmp_path_factory)
    assert clean.rows > 0 and clean.failures, "the clean run must write rows and failure rows"

    out = str(tmp_path / "out")
    if stage == "ingest":
        inputs["server"].delay = 0.4  # the same bytes, served slowly: the run lasts long enough to be hurt
    faults = _faults(kind, chaos_cluster, case)
    killer = Killer(faults, lambda: committed_rows(storage.join(out, case.table)), after_rows=[1] * len(faults))
    started = time.time()
    killer.start()
    try:
        _, errors = run_to_completion(lambda: case.run(out), chaos_cluster)
    finally:
        killer.stop()
        inputs["server"].delay = 0.0
    wall = time.time() - started
    free_s = chaos_cluster.wait_resources_free(120)

    got = Snapshot.read(out, case.table, case.id_col, case.float_cols)
    figures = got.compare(clean)
    entry = {"suite": "stages", "stage": stage, "fault": {"node": "worker node removed + replaced",
                                                          "worker": "worker process SIGKILLed"}[kind],
             "faults": len(killer.events), "events": killer.events, "attempts": len(errors) + 1,
             "errors": errors, "wall_clean_s": round(clean_wall, 1), "wall_s": round(wall, 1),
             "recover_s": max((e.get("recovered_s", 0) for e in killer.events), default=None),
             "resources_free_after_s": round(free_s, 1), **figures}
    chaos_report(entry)
    print(entry)
    assert len(killer.events) >= 2, f"the killer struck {len(killer.events)} times (errors: {killer.errors})"
    assert figures == {"rows_expected": len(clean.hashes), "rows_present": len(clean.hashes), "rows_lost": 0,
                       "rows_extra": 0, "rows_duplicated": 0, "rows_differing": 0, "failures_consistent": True}
    assert got.manifest is not None and got.manifest["stage"] == stage
