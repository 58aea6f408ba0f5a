"""`artray corpus ingest`: download the images behind a corpus's `img_url`s into a new corpus, on Ray Data.

The driver reads the output's committed state, then the input corpus one shard at a time,
and sorts every artwork into: done (already in ``<out>/artworks``: skipped), carried over
(already has an image: copied unchanged as its shard is read, so the driver never holds all
the images), failed for good before (skipped unless ``retry_failed``), or to fetch.
The to-fetch rows run through ``ray.data.from_arrow`` → ``map_batches(_FetchBatch)`` on a
fixed actor pool (threads inside each actor for I/O). Each actor commits its batch itself
(`BatchCommitter`: artworks and failures as atomic Parquet shards named after the run id and
the batch's ids) and hands the driver only the batch's counts: the images never travel to
a separate write task (15 % less CPU, 22 % more images/s than write tasks: bench/RESULTS.md).

Resume: the committed output *is* the checkpoint: an id in ``<out>/artworks`` is done, an id
whose latest ``_failures`` row is not retryable is skipped, everything else is fetched. Ray
Data's own checkpointing does not fit: a failed fetch must be written yet stay eligible for
a retry. End of a run, in order: consolidate ``_failures`` (one row per key, none for an
ingested artwork; new shard first, old ones deleted after), rewrite texts if they changed,
write ``_manifest.json`` last. The manifest is deleted when a run starts, so an output
without one is unfinished, and the next run repairs whatever a crash left half-done.
``_ingest_params.json`` pins ``max_long_side`` so a resume never mixes image sizes.
One run at a time per output URI.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Literal
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Field

from artray import corpus, storage
from artray.config import JobConfig
from artray.corpora.fetch import FetchConfig, Fetcher
from artray.corpus import ARTWORKS, MANIFEST, TEXTS
from artray.errors import UserError
from artray.images import DEFAULT_MAX_PIXELS
from artray.manifest import build_manifest
from artray.schema import ARTWORK_SCHEMA, TEXT_SCHEMA
from artray.stages.pipeline_errors import run_pipeline
from artray.stages.sink import (
    BatchCommitter,
    commit_shards,
    consolidate_failures,
    failed_phrase,
    failure_counts,
    failed_result,
    latest_failures,
    ok_result,
    result_schema,
)

logger = logging.getLogger(__name__)

STAGE = "ingest"
PARAMS = "_ingest_params.json"  # settings that shape committed rows; a resume must match them
RESULT_SCHEMA = result_schema(ARTWORK_SCHEMA, pa.field("_bytes", pa.int64()))


class IngestError(UserError, RuntimeError):
    """The ingest job cannot start or finish; the message says what to fix."""


class IngestConfig(JobConfig):
    """Config of `artray corpus ingest`."""

    input: str = Field(description="corpus URI to read (written by `artray corpus import`)")
    output: str = Field(description="corpus URI to write; running again resumes it")
    user_agent: str | None = Field(None, description="HTTP User-Agent (default: artray/<version> (+url; cultural-heritage research; contact))")
    contact: str | None = Field(None, description="e-mail or URL for site operators, added to the User-Agent")
    connect_timeout_s: float = Field(10.0, gt=0)
    timeout_s: float = Field(30.0, gt=0, description="read timeout: longest silence while downloading")
    download_timeout_s: float = Field(120.0, gt=0, description="longest time for one whole download")
    retries: int = Field(3, ge=0, description="retries after the first attempt, for 429/5xx/timeouts/connection errors")
    backoff_s: float = Field(1.0, ge=0, description="first backoff, doubled each retry, with jitter")
    max_backoff_s: float = Field(60.0, ge=0, description="cap on one wait, Retry-After included")
    per_host_concurrency: int = Field(8, ge=1, description="requests in flight per host, cluster-wide (split over the actors)")
    threads_per_actor: int = Field(16, ge=1)
    actors: int | None = Field(None, ge=1, description="fetch actors (default: sized from the cluster's CPUs)")
    actor_num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per actor (decoding and resizing use them)")
    batch_size: int = Field(128, ge=1, description="artworks per actor task; each task commits its own shard")
    shard_rows: int = Field(500, ge=1, description="rows per committed Parquet shard at most (a batch is one shard "
                            "when batch_size <= shard_rows)")
    max_long_side: int | None = Field(1000, ge=1, description="shrink images to this long side (never enlarge)")
    resample: Literal["area", "bicubic", "lanczos"] = Field(
        "area", description="downscaling filter: area (pixel averaging, img2dataset's default), bicubic or lanczos")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="refuse images with more pixels (decompression bombs)")
    max_bytes: int = Field(50_000_000, ge=1, description="refuse downloads larger than this")
    retry_failed: bool = Field(False, description="also re-attempt permanent failures (404, undecodable, ...)")
    ignore_robots: bool = Field(False, description="fetch images whose X-Robots-Tag says noai/noimageai/noindex/"
                                "noimageindex/none (skipped as robots_disallowed by default); only with the owner's permission")
    splits: list[str] | None = Field(None, description="only ingest these splits (default: all)")

    def fetch_config(self, actors: int) -> FetchConfig:
        return FetchConfig(
            user_agent=self.user_agent, contact=self.contact, connect_timeout_s=self.connect_timeout_s,
            timeout_s=self.timeout_s, download_timeout_s=self.download_timeout_s, retries=self.retries,
            backoff_s=self.backoff_s, max_backoff_s=self.max_backoff_s,
            per_host_limit=max(1, self.per_host_concurrency // actors), pool_size=self.threads_per_actor,
            max_bytes=self.max_bytes, max_long_side=self.max_long_side, resample=self.resample,
            max_image_pixels=self.max_image_pixels, ignore_robots=self.ignore_robots,
        )


class _FetchBatch:
    """Ray Data actor UDF: fetch one batch with a thread pool and commit it; returns the batch's stats."""

    def __init__(self, fetch_config: FetchConfig, threads: int, committer: BatchCommitter):
        self.fetcher = Fetcher(fetch_config)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="artray-fetch")
        self.commit = committer

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(ARTWORK_SCHEMA.names).to_pylist()
        return self.commit(pa.Table.from_pylist(list(self.pool.map(self._one, rows)), schema=RESULT_SCHEMA))

    def _one(self, row: dict) -> dict:
        res = self.fetcher.fetch(row["img_url"])  # never raises: every problem is a result
        if res.ok:
            out = ok_result({**row, "image": res.image, "width": res.width, "height": res.height}, row["artwork_id"])
        else:
            out = failed_result(row, row["artwork_id"], res.reason, res.detail, file=row["img_url"],
                                retryable=res.retryable)
        out["_bytes"] = res.bytes_downloaded
        return out


def _actor_count(cfg: IngestConfig, blocks: int, hosts: int) -> int:
    """Explicit `actors`, else as many as the CPUs allow, at most per_host_concurrency per distinct host."""
    cpus = float(ray.cluster_resources().get("CPU", 1))
    by_cpu = max(1, int(cpus // cfg.actor_num_cpus))
    wanted = cfg.actors or min(64, by_cpu, cfg.per_host_concurrency * max(1, hosts))
    if wanted * cfg.actor_num_cpus > cpus:
        raise IngestError(
            f"{wanted} actors x {cfg.actor_num_cpus} CPUs do not fit a {cpus:g}-CPU cluster (Ray Data would wait "
            "forever for the pool); lower actors or actor_num_cpus")
    if wanted > cfg.per_host_concurrency:
        logger.warning("%d actors > per_host_concurrency=%d: each actor still sends 1 request at a time per host, "
                       "so up to %d may reach one host", wanted, cfg.per_host_concurrency, wanted)
    return max(1, min(wanted, blocks))


def _run_pipeline(todo: pa.Table, cfg: IngestConfig, run_id: str) -> tuple[dict, int]:
    """Fetch `todo` on an actor pool and commit the results; returns (stats, actors)."""
    blocks = [todo.slice(i, cfg.batch_size) for i in range(0, todo.num_rows, cfg.batch_size)]
    hosts = {urlparse(u).netloc.lower() for u in todo["img_url"].to_pylist() if u}
    actors = _actor_count(cfg, len(blocks), len(hosts))
    committer = BatchCommitter(cfg.output, ARTWORKS, ARTWORK_SCHEMA, STAGE, run_id, cfg.storage_options(),
                               cfg.shard_rows, sum_columns=("_bytes",))
    ds = ray.data.from_arrow(blocks).map_batches(
        _FetchBatch,
        fn_constructor_kwargs={"fetch_config": cfg.fetch_config(actors), "threads": cfg.threads_per_actor,
                               "committer": committer},
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        # Several batches in flight per actor share its threads, so one slow URL never stalls an actor.
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=4,
                                           max_concurrent_calls_per_actor=4, enable_true_multi_threading=True),
        num_cpus=cfg.actor_num_cpus,
    )
    return committer.collect(ds.iter_batches(batch_size=None, batch_format="pyarrow")), actors


def _sync_texts(cfg: IngestConfig, final_ids: set[str], run_id: str, opts: storage.StorageOptions) -> dict:
    """Texts of the input that point at an ingested artwork (links to missing ones removed)."""
    kept, dropped, links_dropped = [], 0, 0
    texts_in = corpus.read_texts(cfg.input, opts)
    for t in texts_in.to_pylist():
        present = [a for a in t["artwork_ids"] if a in final_ids]
        links_dropped += len(t["artwork_ids"]) - len(present)
        if present:
            kept.append({**t, "artwork_ids": present})
        else:
            dropped += 1
    new = pa.Table.from_pylist(kept, schema=TEXT_SCHEMA)
    dir_uri = storage.join(cfg.output, TEXTS)
    old_shards = storage.list_files(dir_uri, ".parquet", opts)
    if not new.sort_by("text_id").equals(corpus.read_texts(cfg.output, opts).sort_by("text_id")):
        commit_shards(new, dir_uri, f"{run_id}-texts", 100_000, opts)
        for shard in old_shards:
            storage.delete(shard, opts)
    return {"texts_in": texts_in.num_rows, "texts_out": new.num_rows, "texts_dropped": dropped,
            "text_links_dropped": links_dropped}


def _check_params(cfg: IngestConfig, opts: storage.StorageOptions) -> None:
    """Refuse to resume an output whose committed images were shaped by other settings."""
    uri = storage.join(cfg.output, PARAMS)
    wanted = {"max_long_side": cfg.max_long_side}
    found = storage.read_json(uri, opts)
    if found is None:
        storage.write_json_atomic(uri, wanted, opts)
    elif found != wanted:
        raise IngestError(
            f"{cfg.output} was ingested with {found}, this run asks for {wanted}: committed images would mix "
            "both. Use a new output URI, or delete the old output to start over")


def _select(cfg: IngestConfig, artworks: pa.Table, done: set[str], failed: dict[str, bool]) -> pa.Array:
    """Per artwork: 'done', 'carry' (has an image), 'failed' (permanent, skipped) or 'todo'."""
    kinds = []
    cols = [artworks["artwork_id"].to_pylist()] + [pc.is_valid(artworks[c]).to_pylist() for c in ("image", "img_url", "image_uri")]
    for aid, has_image, has_url, has_uri in zip(*cols):
        if aid in done:
            kinds.append("done")
        elif has_image or (has_uri and not has_url):
            kinds.append("carry")
        elif failed.get(aid) is False and not cfg.retry_failed:
            kinds.append("failed")
        else:
            kinds.append("todo")
    return pa.array(kinds, pa.string())


def _wanted(cfg: IngestConfig, artworks: pa.Table) -> pa.Table:
    """`artworks` of the splits this run ingests."""
    if not cfg.splits:
        return artworks
    return artworks.filter(pc.is_in(artworks["split"], pa.array(cfg.splits, pa.string())))


def _carry_over(cfg: IngestConfig, run_id: str, done: set[str], failed: dict[str, bool],
                opts: storage.StorageOptions) -> tuple[pa.Table, Counter]:
    """Sort the input's artworks (see `_select`) one input shard at a time, committing the ones that
    already have an image to the output as they come, so their image bytes are never all in memory at
    once. Returns the rows to fetch (no image bytes: small) and the count of each kind."""
    todo, kinds_seen, carry_shards = [], Counter(), 0
    for shard in storage.list_files(storage.join(cfg.input, ARTWORKS), ".parquet", opts):
        artworks = _wanted(cfg, storage.read_parquet(shard, opts).select(ARTWORK_SCHEMA.names).cast(ARTWORK_SCHEMA))
        kinds = _select(cfg, artworks, done, failed)
        kinds_seen.update(kinds.to_pylist())
        todo.append(artworks.filter(pc.equal(kinds, "todo")))
        carry = artworks.filter(pc.equal(kinds, "carry"))
        carry_shards = commit_shards(carry, storage.join(cfg.output, ARTWORKS), f"{run_id}-carry", cfg.shard_rows,
                                     opts, carry_shards)
    return (pa.concat_tables(todo) if todo else ARTWORK_SCHEMA.empty_table()), kinds_seen


def run_ingest(cfg: IngestConfig) -> dict:
    """Fetch what is missing from `cfg.output`, consolidate, write the manifest; returns it."""
    started = time.time()
    opts = cfg.storage_options()
    if cfg.input.rstrip("/") == cfg.output.rstrip("/"):
        raise IngestError("input and output are the same corpus; ingest writes a new corpus URI")
    if corpus.read_manifest(cfg.input, opts) is None:
        raise IngestError(f"{cfg.input} has no {MANIFEST}: it is not a finished corpus (run `artray corpus import` first)")
    _check_params(cfg, opts)
    storage.delete(storage.join(cfg.output, MANIFEST), opts)  # unfinished until the manifest is written again
    if not ray.is_initialized():
        ray.init()
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + "-" + corpus.new_run_id()

    index = _wanted(cfg, corpus.read_artworks(cfg.input, opts, columns=["artwork_id", "split"]))
    if corpus.has_duplicates(index, "artwork_id"):
        raise IngestError(f"{cfg.input} has duplicate artwork_ids; re-import it")
    done = corpus.committed_ids(storage.join(cfg.output, ARTWORKS), "artwork_id", opts)
    todo, kind_counts = _carry_over(cfg, run_id, done, latest_failures(cfg.output, STAGE, opts), opts)

    fetch_started = time.time()
    stats, actors = (run_pipeline(lambda: _run_pipeline(todo, cfg, run_id), IngestError, STAGE) if todo.num_rows
                     else ({"written": 0, "failed": {}, "_bytes": 0}, 0))
    fetch_wall = time.time() - fetch_started

    ids = corpus.read_artworks(cfg.output, opts, columns=["artwork_id"]).column("artwork_id").to_pylist()
    final_ids = set(ids)
    failures = consolidate_failures(cfg.output, STAGE, final_ids, run_id, opts)
    texts = _sync_texts(cfg, final_ids, run_id, opts)
    counts = {
        "input_artworks": index.num_rows, "skipped_done": kind_counts["done"],
        "skipped_failed": kind_counts["failed"], "carried_over": kind_counts["carry"],
        "to_fetch": kind_counts["todo"], "fetched": stats["written"], "failed_this_run": stats["failed"],
        "output_artworks": len(final_ids), "duplicate_artworks": len(ids) - len(final_ids),
        **failure_counts(failures), **texts,
    }
    manifest = build_manifest(
        STAGE, cfg.model_dump(mode="json"), counts, started, run_id=run_id, input=cfg.input, output=cfg.output,
        actors=actors, bytes_downloaded=stats["_bytes"], fetch_wall_s=round(fetch_wall, 3),
        images_per_s=round(stats["written"] / fetch_wall, 2) if stats["written"] else 0.0,
    )
    corpus.write_manifest(cfg.output, manifest, opts)
    print(summary_line(manifest))
    return manifest


def summary_line(manifest: dict) -> str:
    """One line for people: what was fetched, what failed and why, how fast."""
    c = manifest["counts"]
    return (
        f"[ingest] {manifest['output']}: fetched {c['fetched']}, {failed_phrase(c['failed_this_run'])}"
        + f", skipped {c['skipped_done']} done + {c['skipped_failed']} failed, carried {c['carried_over']}; "
        f"{c['output_artworks']} artworks, {sum(c['failures_total'].values())} in _failures; "
        f"{manifest['bytes_downloaded'] / 1e6:.1f} MB in {manifest['wall_s']:.1f}s ({manifest['images_per_s']} images/s)"
    )
