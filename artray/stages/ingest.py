"""`artray corpus ingest`: download the images behind a corpus's `img_url`s into a new corpus, on Ray Data.

The driver reads the output's committed state, then the input corpus one shard at a time,
and sorts every artwork into: done (already in ``<out>/artworks``: skipped), carried over
(already has an image: copied unchanged as its shard is read, so the driver never holds all
the images), failed for good before (skipped unless ``retry_failed``), or to fetch.
The to-fetch rows run through ``ray.data.from_blocks`` → ``map_batches(_FetchBatch)`` on a
fixed actor pool (threads inside each actor for I/O). Each actor commits its batch itself
(`BatchCommitter`: artworks and failures as atomic Parquet shards named after the run id and
the batch's ids) and hands the driver only the batch's counts: the images never travel to
a separate write task (15 % less CPU, 22 % more images/s than write tasks: bench/RESULTS.md).

Resume: the committed output *is* the checkpoint: an id in ``<out>/artworks`` is done, an id
whose latest ``_failures`` row is not retryable is skipped, everything else is fetched. Ray
Data's own checkpointing does not fit: a failed fetch must be written yet stay eligible for
a retry. End of a run, in order: consolidate ``_failures`` (one row per key, none for an
ingested artwork; new shard first, old ones deleted after), rewrite texts if they changed,
write ``_manifest.json`` last (the protocol of every stage: `artray.stages.run`). The manifest is
deleted when a run starts, so an output without one is unfinished, and the next run repairs
whatever a crash left half-done. ``_ingest_params.json`` pins ``max_long_side`` so a resume never
mixes image sizes. One run at a time per output URI.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Literal
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Field

from artray import corpus, storage
from artray.corpora.fetch import FetchConfig, Fetcher
from artray.corpus import ARTWORKS, TEXTS
from artray.images import DEFAULT_MAX_PIXELS
from artray.schema import ARTWORK_SCHEMA, TEXT_SCHEMA
from artray.stages.config import StageConfig
from artray.stages.run import ActorPool, Run, Stage, StageError, Todo, actor_pool, rate, run_stage
from artray.stages.sink import (
    BatchCommitter,
    commit_shards,
    failed_phrase,
    failed_result,
    ok_result,
    result_schema,
)

logger = logging.getLogger(__name__)

STAGE = "ingest"
RESULT_SCHEMA = result_schema(ARTWORK_SCHEMA, pa.field("_bytes", pa.int64()))


class IngestError(StageError):
    """The ingest job cannot start or finish; the message says what to fix."""


class IngestConfig(StageConfig):
    """Downloads the images behind a corpus's `img_url`s into a new corpus, politely and resumably."""

    input: str = Field(description="corpus URI to read (written by `artray corpus import`)")
    output: str = Field(description="corpus URI to write; running again resumes it")
    user_agent: str | None = Field(None, description="HTTP User-Agent (default: artray/<version> (+url; cultural-heritage research; contact))")
    contact: str | None = Field(None, description="e-mail or URL for site operators, added to the User-Agent")
    connect_timeout_s: float = Field(10.0, gt=0,
                                     description="seconds to open a connection before the try counts as failed")
    timeout_s: float = Field(30.0, gt=0, description="read timeout: longest silence while downloading")
    download_timeout_s: float = Field(120.0, gt=0, description="longest time for one whole download")
    retries: int = Field(3, ge=0, description="retries after the first attempt, for 429/5xx/timeouts/connection errors")
    backoff_s: float = Field(1.0, ge=0, description="first backoff, doubled each retry, with jitter")
    max_backoff_s: float = Field(60.0, ge=0, description="cap on one wait, Retry-After included")
    per_host_concurrency: int = Field(8, ge=1, description="requests in flight per host, cluster-wide (split over the actors)")
    threads_per_actor: int = Field(16, ge=1, description="concurrent downloads per fetch actor")
    actors: int | None = Field(None, ge=1, description="fetch actors (default: sized from the cluster's CPUs)")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per actor (decoding and resizing use them)")
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


def _select(run: Run, artworks: pa.Table) -> pa.Array:
    """Per artwork: 'done', 'carry' (has an image), 'failed' (permanent, skipped) or 'todo'."""
    kinds = []
    cols = [artworks["artwork_id"].to_pylist()] + [pc.is_valid(artworks[c]).to_pylist() for c in ("image", "img_url", "image_uri")]
    for aid, has_image, has_url, has_uri in zip(*cols):
        if aid in run.done:
            kinds.append("done")
        elif has_image or (has_uri and not has_url):
            kinds.append("carry")
        else:
            kinds.append(run.skip(aid) or "todo")
    return pa.array(kinds, pa.string())


def _wanted(cfg: IngestConfig, artworks: pa.Table) -> pa.Table:
    """`artworks` of the splits this run ingests."""
    if not cfg.splits:
        return artworks
    return artworks.filter(pc.is_in(artworks["split"], pa.array(cfg.splits, pa.string())))


def _carry_over(run: Run) -> tuple[pa.Table, Counter]:
    """Sort the input's artworks (see `_select`) one input shard at a time, committing the ones that
    already have an image to the output as they come, so their image bytes are never all in memory at
    once. Returns the rows to fetch (no image bytes: small) and the count of each kind."""
    cfg, opts = run.cfg, run.opts
    todo, kinds_seen, carry_shards = [], Counter(), 0
    for shard in storage.list_files(storage.join(cfg.input, ARTWORKS), ".parquet", opts):
        artworks = _wanted(cfg, storage.read_parquet(shard, opts).select(ARTWORK_SCHEMA.names).cast(ARTWORK_SCHEMA))
        kinds = _select(run, artworks)
        kinds_seen.update(kinds.to_pylist())
        todo.append(artworks.filter(pc.equal(kinds, "todo")))
        carry = artworks.filter(pc.equal(kinds, "carry"))
        carry_shards = commit_shards(carry, storage.join(cfg.output, ARTWORKS), f"{run.run_id}-carry", cfg.shard_rows,
                                     opts, carry_shards)
    return (pa.concat_tables(todo) if todo else ARTWORK_SCHEMA.empty_table()), kinds_seen


# Hosts whose robot policy asks for a way to reach the operator in the User-Agent (Wikimedia's:
# "a User-Agent with contact information"; requests without one may be blocked).
CONTACT_REQUIRED = ("wikimedia.org", "wikipedia.org")


def warn_contact(cfg: IngestConfig, hosts: set[str]) -> bool:
    """Warn when images come from a host that requires a contact in the User-Agent and none is set."""
    strict = sorted(h for h in hosts if h.split(":")[0].endswith(CONTACT_REQUIRED))
    if not strict or cfg.contact or cfg.user_agent:
        return False
    logger.warning("%s require a contact (e-mail or URL) in the User-Agent and may block requests without one: "
                   "set --contact you@example.org (or user_agent)", ", ".join(strict[:3]))
    return True


class IngestStage(Stage):
    """Fetch actors commit their own batches (`BatchCommitter`): no write tasks, no sink."""

    name, table, schema, key, error = STAGE, ARTWORKS, ARTWORK_SCHEMA, "artwork_id", IngestError
    task_ops, sum_columns = 0, ("_bytes",)
    driver_counts = True  # each batch's stats reach the driver as it is committed
    pin_hint = "committed images would mix both sizes"

    def params(self, cfg: IngestConfig) -> dict:
        return {"max_long_side": cfg.max_long_side}

    def todo(self, run: Run) -> Todo:
        cfg = run.cfg
        index = _wanted(cfg, corpus.read_artworks(cfg.input, run.opts, columns=["artwork_id", "split"], unique=False))
        if corpus.has_duplicates(index, "artwork_id"):
            raise IngestError(f"{cfg.input} has duplicate artwork_ids; re-import it")
        todo, kinds = _carry_over(run)
        blocks = [todo.slice(i, cfg.batch_size) for i in range(0, todo.num_rows, cfg.batch_size)]
        return Todo(blocks, todo.num_rows, len(blocks), counts={
            "input_artworks": index.num_rows, "skipped_done": kinds["done"], "skipped_failed": kinds["failed"],
            "carried_over": kinds["carry"], "to_fetch": kinds["todo"]})

    def pool(self, run: Run, todo: Todo) -> ActorPool:
        """Sized from the CPUs, at most per_host_concurrency actors per distinct host (and 64)."""
        cfg = run.cfg
        hosts = {urlparse(u).netloc.lower() for block in todo.data for u in block["img_url"].to_pylist() if u}
        warn_contact(cfg, hosts)
        pool = actor_pool(cfg, todo.blocks, device="cpu", task_ops=0, error=IngestError,
                          limit=min(64, cfg.per_host_concurrency * max(1, len(hosts))))
        if pool.size > cfg.per_host_concurrency:
            logger.warning("%d actors > per_host_concurrency=%d: each actor still sends 1 request at a time per host, "
                           "so up to %d may reach one host", pool.size, cfg.per_host_concurrency, pool.size)
        return pool

    def _committer(self, run: Run) -> BatchCommitter:
        return BatchCommitter(run.cfg.output, ARTWORKS, ARTWORK_SCHEMA, STAGE, run.run_id, run.opts,
                              run.cfg.shard_rows, sum_columns=self.sum_columns, progress=run.progress.counter)

    def transform(self, run: Run, todo: Todo, pool: ActorPool):
        cfg = run.cfg
        # from_blocks: the planned batches as they are, their metadata read here. from_arrow would run one Ray
        # task per block just to read it back (new worker processes before the first fetch: ~1-3 s per run).
        return ray.data.from_blocks(todo.data).map_batches(
            _FetchBatch,
            fn_constructor_kwargs={"fetch_config": cfg.fetch_config(pool.size), "threads": cfg.threads_per_actor,
                                   "committer": self._committer(run)},
            batch_size=cfg.batch_size,
            batch_format="pyarrow",
            # Several batches in flight per actor share its threads, so one slow URL never stalls an actor.
            compute=pool.strategy(max_tasks_in_flight_per_actor=4, max_concurrent_calls_per_actor=4,
                                  enable_true_multi_threading=True),
            **pool.remote_args(),
        )

    def commit(self, run: Run, results) -> dict:
        """The actors committed every batch; sum the per-batch stats they return."""
        return self._committer(run).collect(results.iter_batches(batch_size=None, batch_format="pyarrow"),
                                            run.progress)

    def finish(self, run: Run, todo: Todo, stats: dict, table: pa.Table, failures: list[dict]) -> dict:
        ids = table["artwork_id"].to_pylist()
        final_ids = set(ids)
        return {"fetched": stats["written"], "output_artworks": len(final_ids),
                "duplicate_artworks": len(ids) - len(final_ids), **_sync_texts(run.cfg, final_ids, run.run_id, run.opts)}

    def manifest_fields(self, run: Run, todo: Todo, stats: dict, wall_s: float) -> dict:
        return {"bytes_downloaded": stats["_bytes"], "fetch_wall_s": round(wall_s, 3),
                "images_per_s": rate(stats["written"], wall_s)}

    def summary_line(self, manifest: dict) -> str:
        return summary_line(manifest)


def run_ingest(cfg: IngestConfig) -> dict:
    """Fetch what is missing from `cfg.output`, consolidate, write the manifest; returns it."""
    return run_stage(IngestStage(), cfg)


def summary_line(manifest: dict) -> str:
    """One line for people: what was fetched, what failed and why, how fast."""
    c = manifest["counts"]
    return (
        f"[ingest] {manifest['output']}: fetched {c['fetched']}, {failed_phrase(c['failed_this_run'])}"
        + f", skipped {c['skipped_done']} done + {c['skipped_failed']} failed, carried {c['carried_over']}; "
        f"{c['output_artworks']} artworks, {sum(c['failures_total'].values())} in _failures; "
        f"{manifest['bytes_downloaded'] / 1e6:.1f} MB in {manifest['wall_s']:.1f}s ({manifest['images_per_s']} images/s)"
    )
