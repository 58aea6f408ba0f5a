"""Lost progress: after a complete run, a seeded random 30 % of the committed shards and the whole
`_failures` table vanish (a bucket lifecycle rule, an operator's `rm`, a restore from an old
snapshot). Running the same config again must rewrite exactly the lost rows, record the same
failures again, and leave every surviving shard untouched (same name, size and mtime).
"""

from __future__ import annotations

import os
import random
import time

import pytest
from chaoskit import Snapshot
from stage_cases import cases, make_inputs

from artray import corpus, storage

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1800)]

SHARE = 0.3
SEED = 11


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    made = make_inputs(tmp_path_factory.mktemp("lost-inputs"))
    yield made
    made["server"].close()


def _stat(paths: list[str]) -> dict[str, tuple[int, int]]:
    return {os.path.basename(p): (os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in paths}


@pytest.mark.parametrize("stage", ["ingest", "augment", "caption", "embed"])
def test_rerun_rewrites_exactly_the_lost_rows(stage, inputs, tiny_models, chaos_cluster, chaos_report, tmp_path):
    case = cases(inputs, tiny_models)[stage]
    out = str(tmp_path / "out")
    case.run(out)
    before = Snapshot.read(out, case.table, case.id_col, case.float_cols)
    assert before.failures, "the input must make failure rows"

    table_dir = storage.join(out, case.table)
    shards = storage.list_files(table_dir, ".parquet")
    lost = sorted(random.Random(SEED).sample(shards, max(1, round(SHARE * len(shards)))))
    lost_ids = {i for s in lost for i in storage.read_parquet(s, columns=[case.id_col])[case.id_col].to_pylist()}
    kept = _stat([s for s in shards if s not in lost])
    for path in lost + storage.list_files(storage.join(out, corpus.FAILURES), ".parquet"):
        os.remove(path)
    time.sleep(0.05)  # mtimes of anything rewritten differ from the originals even on coarse clocks

    started = time.time()
    counts = case.run(out)["counts"]
    wall = time.time() - started
    after = Snapshot.read(out, case.table, case.id_col, case.float_cols)
    now = storage.list_files(table_dir, ".parquet")
    new = [s for s in now if os.path.basename(s) not in kept]
    rewritten = [i for s in new for i in storage.read_parquet(s, columns=[case.id_col])[case.id_col].to_pylist()]
    figures = after.compare(before)
    failed_again = sum(counts["failed_this_run"].values())
    entry = {"suite": "stages", "stage": stage, "fault": f"{len(lost)}/{len(shards)} shards + _failures deleted",
             "faults": 1, "attempts": 1, "rows_lost_on_disk": len(lost_ids), "rows_rewritten": len(rewritten),
             "failures_rerecorded": failed_again, "wall_s": round(wall, 1), "recover_s": round(wall, 1), **figures}
    chaos_report(entry)
    print(entry)

    assert _stat([s for s in now if os.path.basename(s) in kept]) == kept, "a surviving shard was rewritten"
    assert set(kept) <= {os.path.basename(s) for s in now}, "a surviving shard disappeared"
    assert sorted(rewritten) == sorted(lost_ids), "the rerun must write exactly the lost rows, each once"
    assert counts[case.made] == len(lost_ids) and counts[case.skipped] == len(before.hashes) - len(lost_ids)
    assert failed_again == len(before.failures)
    assert figures == {"rows_expected": len(before.hashes), "rows_present": len(before.hashes), "rows_lost": 0,
                       "rows_extra": 0, "rows_duplicated": 0, "rows_differing": 0, "failures_consistent": True}
    chaos_cluster.wait_resources_free(120)
