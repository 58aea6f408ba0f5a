"""A stage's failed Ray Data pipeline surfaces as one line naming the cause (e.g. the s3:// URI a write
could not reach), not Ray's `ray::Write() (pid=…)` wrapper, and frees its cluster resources."""

from __future__ import annotations

import time

import pytest

from artray.stages.embed import EmbedError
from artray.stages.pipeline_errors import root_cause, run_pipeline
from artray.storage import StorageError

URI = "s3://bucket/out/embeddings/part-00000.parquet"


def test_remote_failure_becomes_one_clear_line_and_frees_the_cluster(ray_local):
    import ray

    def _write_fails(batch):  # nested: pickled by value, the workers cannot import this test module
        raise StorageError(f"could not write {URI}: connection refused. Check the endpoint is reachable")

    with pytest.raises(EmbedError) as err:
        run_pipeline(lambda: ray.data.range(4).map_batches(_write_fails).materialize(), EmbedError, "embed")
    message = str(err.value)
    assert "\n" not in message and message.startswith("the embed pipeline failed")
    assert f"StorageError: could not write {URI}" in message and "run the same command again" in message
    assert err.value.__context__ is None and err.value.__cause__ is None
    deadline = time.time() + 60  # nothing of the failed run keeps a CPU
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        assert time.time() < deadline, "the failed pipeline still holds CPUs"
        time.sleep(0.2)


def test_root_cause_skips_ray_wrappers():
    text = ("ray::Write() (pid=1, ip=1.2.3.4)\nTraceback...\nOSError: AWS Error NETWORK_CONNECTION\n"
            f"artray.storage.StorageError: could not write {URI}\nray.exceptions.RayTaskError: wrapped")
    assert root_cause(RuntimeError(text)) == f"artray.storage.StorageError: could not write {URI}"
