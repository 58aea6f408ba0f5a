"""One writer per output (`artray.lease`) and one row per key (`artray.dedup`).

Real processes race for one output's lease, locally and on a real S3 server (moto honours
``If-None-Match: *``); a SIGKILLed holder's lease is taken over; a lease of a live-looking holder on
another machine expires after its TTL; two `artray embed` commands started at once on one output
leave one row per id; an output that already holds duplicates reads once, indexes once (one hit per
id) and is repaired by the next run, which says so.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from artray import corpus, storage
from artray.dedup import compact, first_per_key
from artray.lease import LEASE_FILE, Lease, LeaseHeld, lease_uri
from artray.storage import StorageOptions

REPO = Path(__file__).resolve().parents[1]

RACER = textwrap.dedent('''
    import sys, time
    from artray.lease import Lease, LeaseHeld
    from artray.storage import StorageOptions
    output, endpoint, start_at = sys.argv[1], sys.argv[2] or None, float(sys.argv[3])
    lease = Lease(output, "racer", StorageOptions(endpoint_url=endpoint), ttl_s=30)
    time.sleep(max(0.0, start_at - time.time()))
    try:
        lease.acquire()
    except LeaseHeld as exc:
        print("REFUSED", exc, flush=True)
        sys.exit(3)
    print("GOT", flush=True)
    time.sleep(float(sys.argv[4]))
    lease.release()
''')


def _racers(tmp_path, output: str, endpoint: str | None, n: int = 3, hold_s: float = 3.0):
    script = tmp_path / "racer.py"
    script.write_text(RACER, encoding="utf-8")
    start_at = time.time() + 4  # every process imported and waiting before the start
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return [subprocess.Popen([sys.executable, str(script), output, endpoint or "", str(start_at), str(hold_s)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
            for _ in range(n)]


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path) -> tuple[str, StorageOptions]:
    if request.param == "local":
        return str(tmp_path / "out"), StorageOptions()
    endpoint = request.getfixturevalue("s3_endpoint")
    return f"{request.getfixturevalue('s3_bucket')}/out", StorageOptions(endpoint_url=endpoint)


def test_processes_racing_for_one_output_get_one_lease(output, tmp_path):
    uri, opts = output
    procs = _racers(tmp_path, uri, opts.endpoint_url)
    results = [(p.wait(60), p.stdout.read()) for p in procs]
    winners = [out for rc, out in results if rc == 0]
    losers = [out for rc, out in results if rc == 3]
    assert len(winners) == 1 and len(losers) == len(procs) - 1, results
    winner_pid = next(p.pid for p, (rc, _) in zip(procs, results) if rc == 0)
    for out in losers:  # the refusal names the holder and says how to proceed
        assert f":{winner_pid} [racer]" in out and "is being written by another run" in out, out
        assert "--force-lease" in out and "ARTRAY_LEASE_TTL_S" in out
    assert not storage.exists(lease_uri(uri), opts)  # released at the end


def test_a_killed_holders_lease_is_taken_over_and_a_live_one_expires(output, tmp_path, capsys):
    uri, opts = output
    [holder] = _racers(tmp_path, uri, opts.endpoint_url, n=1, hold_s=600)
    deadline = time.time() + 30
    while not storage.exists(lease_uri(uri), opts) and time.time() < deadline:
        time.sleep(0.2)
    with pytest.raises(LeaseHeld, match=f":{holder.pid} \\[racer\\], started"):
        Lease(uri, "embed", opts).acquire()
    holder.send_signal(signal.SIGKILL)  # a driver killed with -9: it never releases its lease
    holder.wait(10)
    lease = Lease(uri, "embed", opts).acquire()  # same machine, process gone: taken over without waiting
    assert lease.taken_over["pid"] == holder.pid
    assert "took over the run lease of" in capsys.readouterr().out
    lease.release()

    # a holder on another machine cannot be checked: its lease blocks until its TTL has passed
    now = time.time()
    planted = {"host": "other-machine", "pid": 4242, "what": "embed", "started_at": now - 60, "renewed_at": now,
               "ttl_s": 2, "token": "theirs"}
    storage.write_json_atomic(lease_uri(uri), planted, opts)
    with pytest.raises(LeaseHeld, match="other-machine:4242 \\[embed\\], started 60s ago, renewed 0s ago"):
        Lease(uri, "embed", opts).acquire()
    forced = Lease(uri, "embed", opts, force=True).acquire()  # --force-lease: the user knows it is dead
    assert forced.taken_over["token"] == "theirs"
    forced.release()
    storage.write_json_atomic(lease_uri(uri), planted, opts)
    time.sleep(2.5)
    with Lease(uri, "embed", opts) as lease:
        assert lease.taken_over["host"] == "other-machine"


def test_a_lease_is_renewed_while_its_run_lives(tmp_path):
    uri = str(tmp_path / "out")
    with Lease(uri, "train r1", ttl_s=1.0):
        time.sleep(2.5)  # longer than the TTL: renewals keep it held
        with pytest.raises(LeaseHeld, match="train r1"):
            Lease(uri, "train r1").acquire()
    assert not (tmp_path / "out" / LEASE_FILE).exists()


SCHEMA = pa.schema([pa.field("k", pa.string()), pa.field("v", pa.string())])


def _table(keys: list[str]) -> pa.Table:
    return pa.table({"k": keys, "v": [f"{k}-{i}" for i, k in enumerate(keys)]}, schema=SCHEMA)


def test_compact_keeps_the_first_row_of_each_key_and_rewrites_only_what_holds_extras(tmp_path):
    out = str(tmp_path / "t")
    schema = SCHEMA
    storage.write_parquet_atomic(_table(["a", "b", "c"]), f"{out}/part-r1-00000.parquet")
    storage.write_parquet_atomic(_table(["d"]), f"{out}/part-r1-00001.parquet")
    storage.write_parquet_atomic(_table(["b", "c", "e", "e"]), f"{out}/part-r2-00000.parquet")
    read = first_per_key(corpus.read_table(out, schema), "k")
    assert sorted(read["k"].to_pylist()) == ["a", "b", "c", "d", "e"]
    before = {p.name: p.stat().st_mtime_ns for p in Path(out).iterdir()}
    result = compact(out, schema, "k", "r3", StorageOptions())
    assert (result.keys, result.removed, result.shards) == ({"a", "b", "c", "d", "e"}, 3, 1)
    after = corpus.read_table(out, schema)
    assert sorted(after["k"].to_pylist()) == ["a", "b", "c", "d", "e"]
    names = {p.name: p.stat().st_mtime_ns for p in Path(out).iterdir()}
    assert {n: before[n] for n in ("part-r1-00000.parquet", "part-r1-00001.parquet")} == \
        {n: names[n] for n in ("part-r1-00000.parquet", "part-r1-00001.parquet")}  # untouched
    assert "part-r2-00000.parquet" not in names and "part-r3-dedup-00000.parquet" in names
    assert dict(zip(after["k"].to_pylist(), after["v"].to_pylist()))["b"] == "b-1"  # the first shard's row
    assert compact(out, schema, "k", "r4", StorageOptions()).removed == 0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    from artray.scaffold.tiny import make_tiny

    return make_tiny(str(tmp_path_factory.getbasetemp() / "tiny"))  # idempotent: shared by the session's modules


@pytest.fixture(scope="module")
def artpedia(imported_artpedia) -> str:
    return imported_artpedia(8)


def test_two_embed_commands_at_once_leave_one_row_per_id(artpedia, tiny, tmp_path):
    from artray.outputs import EMBEDDINGS

    out = str(tmp_path / "emb")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "ARTRAY_FORCE_LEASE")}
    ray_tmp = tempfile.mkdtemp(prefix="/tmp/arlease")  # short: Ray's socket paths have a length limit
    env.update(PYTHONPATH=str(REPO), RAY_TMPDIR=ray_tmp)
    argv = [str(Path(sys.executable).with_name("artray")), "embed", "--input", artpedia, "--output", out,
            "--family", "longclip", "--checkpoint", tiny["longclip"], "--device", "cpu", "--cpus-per-actor", "0.5"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
             for _ in range(2)]
    results = sorted((p.wait(300), p.stdout.read()) for p in procs)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    (ok, ok_out), (refused, refused_out) = results
    assert (ok, refused) == (0, 2), results
    assert "is being written by another run" in refused_out and "[embed], started" in refused_out, refused_out
    rows = corpus.read_table(storage.join(out, EMBEDDINGS), pa.schema([pa.field("embedding_id", pa.string())]))
    ids = rows["embedding_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 16  # 8 images + 8 texts, each once
    assert not (Path(out) / LEASE_FILE).exists()


def test_a_duplicate_holding_output_reads_once_indexes_once_and_is_repaired(ray_local, artpedia, tiny, tmp_path,
                                                                            capsys):
    from artray.index.build import IndexConfig, build_index
    from artray.index.retrieval import load_index
    from artray.outputs import EMBEDDINGS, read_embeddings
    from artray.stages.embed import EmbedConfig, run_embed

    out = str(tmp_path / "emb")
    cfg = EmbedConfig(input=artpedia, output=out, family="longclip", checkpoint=tiny["longclip"], device="cpu")
    run_embed(cfg)
    shards = Path(out, EMBEDDINGS)
    for shard in sorted(shards.glob("part-*.parquet")):  # what a second run at once left, before leases
        shutil.copy(shard, shards / shard.name.replace("part-", "part-0twin-"))
    raw = corpus.read_table(str(shards), pa.schema([pa.field("embedding_id", pa.string())]))
    assert raw.num_rows == 32  # 16 ids, each twice

    assert read_embeddings(out).num_rows == 16  # readers see each id once
    idx = str(tmp_path / "idx")
    build_index(IndexConfig(embeddings=out, output=idx))
    index = load_index(idx)
    assert index.size("image") == 8 and index.size("text") == 8
    for aid in corpus.read_artworks(artpedia, columns=["artwork_id"])["artwork_id"].to_pylist():
        hits = [h["id"] for h in index.search(index.vector("image", aid), 8, "image")[0]]
        assert len(hits) == len(set(hits)) == 8 and hits[0] == aid  # one hit per id

    capsys.readouterr()
    manifest = run_embed(cfg)  # the next run repairs the output and says so
    line = capsys.readouterr().out
    assert "repaired: removed 16 duplicate rows" in line, line
    assert manifest["counts"]["duplicates_removed"] == 16
    ids = corpus.read_table(str(shards), pa.schema([pa.field("embedding_id", pa.string())]))["embedding_id"]
    assert len(ids) == len(set(ids.to_pylist())) == 16
    assert "duplicates_removed" not in run_embed(cfg)["counts"]  # nothing left to repair
    assert "repaired" not in capsys.readouterr().out
