"""Storage faults: the S3 endpoint a stage writes to goes away in the middle of the run.

Each test starts its own moto server subprocess (never the session's) and runs `artray embed`
from a local corpus to s3:// while the killer waits for the first committed shard, then takes
the endpoint down. The stage must fail with an error naming the s3:// URI, no object under the
output may be a partial shard, and a rerun against the endpoint once it is back must finish with
the output of a clean run.

- An outage (a proxy in front of moto cuts every connection mid-transfer and refuses new ones,
  then listens again on the same port, moto keeping its objects): the rerun resumes, skipping
  exactly the rows committed before it starts (write tasks in flight at the failure may still
  commit whole shards once the endpoint is back; never a partial one).
- A crash (moto SIGKILLed, a fresh empty one started on the same port): what the dead server held
  is gone, so the test plants what a streaming writer leaves behind (apache/arrow#40502): a
  truncated shard under the final name and an unfinished multipart upload. The rerun refuses the
  truncated object by name instead of counting its rows as done; once it is deleted the rerun
  completes, and the multipart upload never shows up as a shard.
"""

from __future__ import annotations

import io
import time

import pyarrow.parquet as pq
import pytest
from chaoskit import Killer, Snapshot
from s3fault import CuttableProxy, MotoProcess
from stage_cases import make_inputs

from artray import corpus, storage
from artray.outputs import EMBEDDINGS
from artray.stages.embed import EmbedConfig, run_embed
from artray.storage import StorageError, StorageOptions

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1800)]

BUCKET = "artray-chaos"
PREFIX = "emb"
_CLEAN: dict[str, tuple[str, Snapshot]] = {}  # the clean run: (local output, snapshot)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    made = make_inputs(tmp_path_factory.mktemp("storage-inputs"))
    yield made
    made["server"].close()


def _cfg(inputs, tiny, output: str, endpoint: str | None = None) -> EmbedConfig:
    return EmbedConfig(input=inputs["corpus"], output=output, family="longclip", checkpoint=tiny["longclip"],
                       batch_size=2, shard_rows=2, device="cpu", cpus_per_actor=0.5, s3_endpoint=endpoint)


def _clean(inputs, tiny, tmp_path_factory) -> tuple[str, Snapshot]:
    if "embed" not in _CLEAN:
        out = str(tmp_path_factory.mktemp("storage-clean") / "out")
        run_embed(_cfg(inputs, tiny, out))
        _CLEAN["embed"] = out, Snapshot.read(out, EMBEDDINGS, "embedding_id", ("vector",))
    return _CLEAN["embed"]


def _shard_keys(client) -> list[str]:
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/{EMBEDDINGS}/")
    return sorted(o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".parquet"))


def _committed_ids(client) -> set[str]:
    """The embedding ids of every shard the server holds under the output (read past the proxy), each
    shard checked to be complete and to repeat no row of another."""
    committed: set[str] = set()
    for key in _shard_keys(client):
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        ids = pq.read_table(io.BytesIO(body), columns=["embedding_id"])["embedding_id"].to_pylist()
        assert ids and not committed & set(ids), f"{key} is partial or repeats committed rows"
        committed |= set(ids)
    return committed


def _run_until_endpoint_fault(cfg: EmbedConfig, client, fault) -> tuple[str, Killer, float]:
    """Run embed while `fault` strikes after the first committed shard; returns (error, killer, s to fail)."""
    killer = Killer([fault], lambda: len(_shard_keys(client)), after_rows=[1], poll_s=0.02)
    killer.start()
    try:
        with pytest.raises(Exception) as failed:
            run_embed(cfg)
    finally:
        killer.stop()
    assert killer.events, f"the endpoint fault never fired: {killer.errors}"
    return str(failed.value), killer, time.time() - killer.started - killer.events[0]["at_s"]


def _assert_clear(error: str, output: str) -> None:
    first = error.strip().splitlines()[0]
    assert output in first, f"the error must name the output URI on its first line: {first[:500]}"
    assert "endpoint" in error and len(first) < 2000, first[:500]


def test_s3_outage_mid_write_fails_clearly_and_rerun_resumes(inputs, tiny_models, chaos_cluster, chaos_report,
                                                             tmp_path_factory):
    _, clean = _clean(inputs, tiny_models, tmp_path_factory)
    moto = MotoProcess()
    proxy = CuttableProxy(moto.port)
    try:
        s3 = moto.client()
        s3.create_bucket(Bucket=BUCKET)
        output, opts = f"s3://{BUCKET}/{PREFIX}", StorageOptions(endpoint_url=proxy.url)
        cfg = _cfg(inputs, tiny_models, output, proxy.url)
        error, killer, to_fail = _run_until_endpoint_fault(
            cfg, s3, lambda: {"fault": "S3 endpoint down (connections reset)", "connections_cut": proxy.cut()})
        _assert_clear(error, output)
        assert corpus.read_manifest(output, StorageOptions(endpoint_url=moto.url)) is None

        at_error = _committed_ids(s3)
        proxy.resume()
        # Write tasks in flight when the stage failed can still finish once the endpoint is back (Ray
        # Data cancels them without waiting; a task inside pyarrow's S3 retries sees the cancel only when
        # it returns). Each commits a complete shard or nothing, so the rerun counts what is there then.
        chaos_cluster.wait_resources_free(120)
        committed = _committed_ids(s3)
        assert at_error <= committed
        dangling = len(s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))
        started = time.time()
        counts = run_embed(cfg)["counts"]
        wall = time.time() - started
        got = Snapshot.read(output, EMBEDDINGS, "embedding_id", ("vector",), opts)
        figures = got.compare(clean)
        entry = {"suite": "storage", "stage": "embed", "fault": "S3 endpoint down mid-write, back on the same port",
                 "faults": 1, "events": killer.events, "attempts": 2, "rows_committed_at_error": len(at_error),
                 "rows_committed_by_tasks_in_flight": len(committed - at_error),
                 "dangling_multipart_uploads": dangling, "failed_after_s": round(to_fail, 1),
                 "wall_s": round(wall, 1), "recover_s": round(wall, 1), "error": error.splitlines()[0][:300],
                 "resources_free_after_s": round(chaos_cluster.wait_resources_free(120), 1), **figures}
        chaos_report(entry)
        print(entry)
        assert 0 < len(committed) < len(clean.hashes)
        assert counts["skipped_done"] == len(committed) and counts["embedded"] == len(clean.hashes) - len(committed)
        assert figures == {"rows_expected": len(clean.hashes), "rows_present": len(clean.hashes), "rows_lost": 0,
                           "rows_extra": 0, "rows_duplicated": 0, "rows_differing": 0, "failures_consistent": True}
    finally:
        proxy.cut()
        moto.kill()


def test_s3_server_crash_restart_partial_object_never_taken_as_done(inputs, tiny_models, chaos_cluster, chaos_report,
                                                                    tmp_path_factory):
    clean_out, clean = _clean(inputs, tiny_models, tmp_path_factory)
    moto = MotoProcess()
    try:
        moto.client().create_bucket(Bucket=BUCKET)
        output, opts = f"s3://{BUCKET}/{PREFIX}", StorageOptions(endpoint_url=moto.url)
        cfg = _cfg(inputs, tiny_models, output, moto.url)

        def crash():
            moto.kill()
            return {"fault": "S3 server SIGKILLed"}

        error, killer, to_fail = _run_until_endpoint_fault(cfg, moto.client(), crash)
        _assert_clear(error, output)

        moto = MotoProcess(port=moto.port)  # the same endpoint, empty: an in-memory store loses everything
        s3 = moto.client()
        s3.create_bucket(Bucket=BUCKET)
        with open(storage.list_files(storage.join(clean_out, EMBEDDINGS), ".parquet")[0], "rb") as f:
            shard = f.read()
        partial = f"{PREFIX}/{EMBEDDINGS}/part-left-by-a-streaming-writer-00000.parquet"
        s3.put_object(Bucket=BUCKET, Key=partial, Body=shard[: len(shard) // 2])
        unfinished = f"{PREFIX}/{EMBEDDINGS}/part-unfinished-multipart-00000.parquet"
        upload = s3.create_multipart_upload(Bucket=BUCKET, Key=unfinished)
        s3.upload_part(Bucket=BUCKET, Key=unfinished, UploadId=upload["UploadId"], PartNumber=1, Body=shard)

        chaos_cluster.wait_resources_free(120)
        with pytest.raises(StorageError) as refused:
            run_embed(cfg)
        assert f"s3://{BUCKET}/{partial}" in str(refused.value) and "delete" in str(refused.value)

        s3.delete_object(Bucket=BUCKET, Key=partial)  # what the error tells the user to do
        # Write tasks in flight at the crash may have committed whole shards to the new server once it
        # was up (resources were free before the refused rerun, so they have all ended): those count as done.
        committed = _committed_ids(s3)
        started = time.time()
        counts = run_embed(cfg)["counts"]
        wall = time.time() - started
        got = Snapshot.read(output, EMBEDDINGS, "embedding_id", ("vector",), opts)
        figures = got.compare(clean)
        entry = {"suite": "storage", "stage": "embed", "fault": "S3 server killed mid-write, restarted empty",
                 "faults": 1, "events": killer.events, "attempts": 3, "failed_after_s": round(to_fail, 1),
                 "partial_object_refused": True, "rows_committed_by_tasks_in_flight": len(committed),
                 "wall_s": round(wall, 1), "recover_s": round(wall, 1),
                 "error": error.splitlines()[0][:300],
                 "resources_free_after_s": round(chaos_cluster.wait_resources_free(120), 1), **figures}
        chaos_report(entry)
        print(entry)
        assert counts["skipped_done"] == len(committed) and counts["embedded"] == len(clean.hashes) - len(committed)
        assert unfinished not in _shard_keys(s3)
        assert figures == {"rows_expected": len(clean.hashes), "rows_present": len(clean.hashes), "rows_lost": 0,
                           "rows_extra": 0, "rows_duplicated": 0, "rows_differing": 0, "failures_consistent": True}
    finally:
        moto.kill()
