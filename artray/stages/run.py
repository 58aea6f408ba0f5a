"""The one run protocol of every Ray Data stage (ingest, augment, caption, embed), written once.

`run_stage(stage, cfg)` does, in this order:

1. refuse an output URI equal to the input, and an input without ``_manifest.json``;
2. the stage's own checks (`Stage.check`), then pin the settings that shape its rows in
   ``<output>/_<stage>_params.json``: a resume with other settings is refused (`Stage.pin`);
3. delete ``<output>/_manifest.json``: the output is unfinished until it is written again;
4. start or join Ray (`artray.runtime.init_ray`), take a run id (it names every shard this run commits);
5. read the checkpoint: the keys committed under ``<output>/<table>/`` and each key's latest
   failure (`Run.skip` says what a rerun skips);
6. let the stage plan the work still to do (`Stage.todo`);
7. size the actor pool (`actor_pool`, the same rule for every stage), run the Ray Data pipeline
   (`Stage.transform` → `Stage.commit`); a failed pipeline becomes one clear error (`run_pipeline`);
8. consolidate ``_failures`` (one row per key, none for keys done by now), the stage's counts,
   ``_manifest.json`` last, and one summary line for people.

Steps 2-8 run under the output's run lease (`artray.lease`, ``<output>/_lease.json``): a second run
on the same output is refused before it writes anything. Step 5 also repairs an output that holds a
key twice (written by two runs at once before leases existed): `artray.dedup.compact` rewrites the
shards holding the extra rows, and the summary line says so.

A stage is a `Stage` subclass that declares what is particular to it (its output table, schema,
key, pinned settings, work, map UDF, counts and summary line) and overrides a hook where its
pipeline differs (ingest commits inside its actors; augment plans whole batches). One run at a
time per output URI (the lease).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from artray import corpus, storage
from artray.corpus import MANIFEST
from artray.dedup import compact
from artray.errors import UserError
from artray.lease import Lease
from artray.manifest import build_manifest
from artray.outputs import latest_failures, params_file
from artray.console import StageProgress
from artray.runtime import init_ray
from artray.stages.config import StageConfig
from artray.stages.pipeline_errors import run_pipeline
from artray.stages.sink import StageSink, consolidate_failures, failure_counts

logger = logging.getLogger(__name__)

# CPUs of one read / prepare / encode / write task. Fractional, so these I/O tasks always find a CPU
# beside the actors: Ray Data waits forever, with no error, when actors hold every CPU (STACK.md).
TASK_CPUS = 0.25


class StageError(UserError, RuntimeError):
    """A stage cannot start or finish; the message says what to fix."""


@dataclass
class Run:
    """One run of a stage: its config, run id and checkpoint (what is committed, what failed)."""

    cfg: Any  # the stage's StageConfig
    opts: storage.StorageOptions
    run_id: str
    started: float
    done: set[str]  # keys committed under <output>/<table>/
    failed: dict[str, bool]  # key → retryable, of its latest failure row
    progress: Any = None  # the stage's progress line (`artray.console.StageProgress`), while it runs

    def skip(self, key: str) -> str | None:
        """Why a rerun skips `key`: 'done' (committed), 'failed' (failed for good, no retry_failed), else None."""
        if key in self.done:
            return "done"
        if self.failed.get(key) is False and not self.cfg.retry_failed:
            return "failed"
        return None


@dataclass
class Todo:
    """The work a run still has to do, as the stage planned it on the driver."""

    data: Any = None  # what `Stage.transform` turns into result rows (usually a ray.data.Dataset)
    rows: int = 0  # rows still to make; 0 skips the pipeline
    blocks: int | None = None  # work units the pool is capped by (default: rows / batch_size)
    counts: dict = field(default_factory=dict)  # counts of the plan, for the manifest
    failed: Counter = field(default_factory=Counter)  # failures found while planning: reason → rows
    meta: dict = field(default_factory=dict)  # manifest fields decided while planning


@dataclass(frozen=True)
class ActorPool:
    """A Ray Data actor pool: its size and what each actor reserves."""

    size: int
    cpus: float
    gpus: float

    def strategy(self, **kwargs) -> ray.data.ActorPoolStrategy:
        return ray.data.ActorPoolStrategy(size=self.size, **kwargs)

    def remote_args(self) -> dict:
        """`map_batches` resources of each actor."""
        return {"num_cpus": self.cpus, **({"num_gpus": self.gpus} if self.gpus else {})}


def actor_gpus(cfg, device: str = "auto") -> float:
    """GPUs per actor: none for `device` cpu, else `cfg.gpus_per_actor`, else 1 when the cluster has GPUs."""
    explicit = getattr(cfg, "gpus_per_actor", None)
    if device == "cpu":
        return 0.0
    if explicit is not None:
        return explicit
    return 1.0 if float(ray.cluster_resources().get("GPU", 0)) > 0 else 0.0


def actor_pool(cfg: StageConfig, work: int, *, device: str = "auto", task_ops: int = 1, limit: int | None = None,
               error: type[Exception] = StageError) -> ActorPool:
    """The actor pool of a stage on the connected cluster, for `work` batches.

    Size: `cfg.actors`; else one actor per GPU slot when the actors use GPUs; else as many as
    the CPUs allow once `task_ops` task slots (the pipeline's read/prepare/encode/write operators,
    `TASK_CPUS` each) are kept free; at most `limit` and `work`. A layout that cannot run is
    refused with the fix: more GPUs than the cluster has, or actors that leave no CPU for a task
    (Ray Data would then wait forever, with no error).
    """
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    per_gpu = actor_gpus(cfg, device)
    if per_gpu:
        default = int(gpus // per_gpu)
    else:
        default = int(max(cpus - task_ops * TASK_CPUS, cfg.cpus_per_actor) // cfg.cpus_per_actor)
    wanted = cfg.actors or max(1, min(default, limit) if limit else default)
    if wanted * per_gpu > gpus:
        raise error(f"{wanted} actors x {per_gpu:g} GPUs (gpus_per_actor) but the cluster has {gpus:g} GPUs: lower "
                    "actors or gpus_per_actor, set gpus_per_actor: 0 to run on CPU (slow), or connect to a GPU "
                    "cluster (--address / RAY_ADDRESS)")
    if wanted * cfg.cpus_per_actor + (TASK_CPUS if task_ops else 0) > cpus:
        raise error(f"{wanted} actors x {cfg.cpus_per_actor:g} CPUs (cpus_per_actor) leave no CPU for the pipeline's "
                    f"tasks on a {cpus:g}-CPU cluster (Ray Data would wait forever); lower actors or cpus_per_actor")
    return ActorPool(max(1, min(wanted, work)), cfg.cpus_per_actor, per_gpu)


def rate(n: int, seconds: float, digits: int = 2) -> float:
    """n per second, rounded; 0.0 when nothing was made."""
    return round(n / seconds, digits) if n and seconds > 0 else 0.0


class Stage(ABC):
    """What is particular to one stage; `run_stage` runs everything else. Override hooks, not the skeleton;
    `todo` and `summary_line` every stage must write."""

    name: str = ""  # also the `stage` of its failure rows and manifest
    table: str = ""  # folder of its output rows under the output URI
    schema: pa.Schema = pa.schema([])  # of its output rows
    key: str = ""  # unique key column of its output rows (the `key` of its failure rows)
    error: type[StageError] = StageError
    task_ops: int = 1  # Ray Data task operators beside the actor pool (each task takes TASK_CPUS)
    udf: type | None = None  # the map_batches actor class of the default `transform`
    sink: type[StageSink] = StageSink
    sum_columns: tuple[str, ...] = ()  # per-row figures the sink sums into the stats (bytes, tokens)
    final_columns: tuple[str, ...] = ()  # output columns `finish` reads besides the key
    driver_counts: bool = False  # `commit` sees every committed batch and counts it (no progress counter actor)
    pin_hint: str = "a resume never mixes rows made two ways"  # why a changed setting is refused

    # --- before Ray: refusals and the pinned settings --------------------------------------------
    def check(self, cfg, opts: storage.StorageOptions) -> None:
        """The stage's own refusals, before anything is written."""

    def params(self, cfg) -> dict | None:
        """The settings that shape committed rows; a resume must ask for the same."""
        return None

    def pin(self, cfg, opts: storage.StorageOptions) -> None:
        """Record `params` at the output, or refuse if the ones recorded there differ."""
        wanted = self.params(cfg)
        if wanted is None:
            return
        uri = storage.join(cfg.output, params_file(self.name))
        found = storage.read_json(uri, opts)
        if found is None:
            storage.write_json_atomic(uri, wanted, opts)
        elif found != wanted:
            diff = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
            raise self.error(f"{cfg.output} holds {self.table} made with other settings (committed, asked): {diff}; "
                             f"{self.pin_hint}. Use a new output URI, or delete the old output to start over")

    # --- the work and its pipeline ----------------------------------------------------------------
    @abstractmethod
    def todo(self, run: Run) -> Todo:
        """Plan the rows still to make (skipping what `run.skip` says)."""

    def device(self, cfg) -> str:
        """'cpu', 'cuda' or 'auto' (GPUs when the cluster has them): where the actors run."""
        return "auto"

    def pool(self, run: Run, todo: Todo) -> ActorPool:
        blocks = todo.blocks if todo.blocks is not None else -(-todo.rows // run.cfg.batch_size)
        return actor_pool(run.cfg, blocks, device=self.device(run.cfg), task_ops=self.task_ops, error=self.error)

    def udf_kwargs(self, run: Run, pool: ActorPool) -> dict:
        return {"cfg": run.cfg}

    def map_udf(self, run: Run, ds, pool: ActorPool):
        """`ds` through the stage's UDF on the actor pool: one result row per input row."""
        return ds.map_batches(self.udf, fn_constructor_kwargs=self.udf_kwargs(run, pool),
                              batch_size=run.cfg.batch_size, batch_format="pyarrow", compute=pool.strategy(),
                              **pool.remote_args())

    def transform(self, run: Run, todo: Todo, pool: ActorPool):
        """The todo rows → result rows (`artray.stages.sink`), lazily."""
        return self.map_udf(run, todo.data, pool)

    def commit(self, run: Run, results) -> dict:
        """Execute the pipeline, committing its result rows; returns the stats (written, failed, sums)."""
        sink = self.sink(run.cfg.output, self.table, self.schema, self.name, run.run_id, run.opts,
                         run.cfg.shard_rows, self.sum_columns, progress=run.progress.counter)
        results.write_datasink(sink, ray_remote_args={"num_cpus": TASK_CPUS})
        return sink.stats

    # --- after the pipeline -----------------------------------------------------------------------
    def final_keys(self, run: Run, table: pa.Table) -> set[str]:
        """Keys that are done by now: their failure rows are dropped."""
        return set(table[self.key].to_pylist())

    def finish(self, run: Run, todo: Todo, stats: dict, table: pa.Table, failures: list[dict]) -> dict:
        """The stage's last writes, and its counts for the manifest (`table`: the output's final rows)."""
        return {}

    def manifest_fields(self, run: Run, todo: Todo, stats: dict, wall_s: float) -> dict:
        """Extra manifest fields (timings, rates); `wall_s` is the pipeline's."""
        return {}

    @abstractmethod
    def summary_line(self, manifest: dict) -> str:
        """One line for people: what the run made, skipped and failed, and how fast."""


def run_stage(stage: Stage, cfg: StageConfig) -> dict:
    """Make what `cfg.output` is missing, consolidate failures, write the manifest; returns it."""
    started = time.time()
    opts = cfg.storage_options()
    if cfg.input.rstrip("/") == cfg.output.rstrip("/"):
        raise stage.error(f"input and output are the same URI ({cfg.input}); {stage.name} writes to a new output URI")
    if corpus.read_manifest(cfg.input, opts) is None:
        raise stage.error(f"{cfg.input} has no {MANIFEST}: it is not a finished corpus "
                          "(run `artray corpus import` / `artray corpus ingest` first)")
    stage.check(cfg, opts)
    with Lease(cfg.output, stage.name, opts):  # one run at a time per output; refused here, naming the holder
        return _run_leased(stage, cfg, opts, started)


def _run_leased(stage: Stage, cfg: StageConfig, opts: storage.StorageOptions, started: float) -> dict:
    """`run_stage` once the output's lease is held: steps 2-8."""
    stage.pin(cfg, opts)
    storage.delete(storage.join(cfg.output, MANIFEST), opts)  # unfinished until the manifest is written again
    init_ray()
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + "-" + corpus.new_run_id()
    # the committed keys; an output that holds a key twice (two runs before leases existed) is repaired here
    committed = compact(storage.join(cfg.output, stage.table), stage.schema, stage.key, run_id, opts)
    run = Run(cfg, opts, run_id, started, committed.keys, latest_failures(cfg.output, stage.name, opts))

    todo = stage.todo(run)
    logger.debug("%s: %d rows to make (%s)", stage.name, todo.rows, todo.counts)
    stats, actors = {"written": 0, "failed": {}, **{c: 0 for c in stage.sum_columns}}, 0
    pipeline_started = time.time()
    if todo.rows:
        pool = stage.pool(run, todo)
        # one live line: rows, rate, ETA, failures
        with StageProgress(stage.name, todo.rows, workers_report=not stage.driver_counts) as progress:
            run.progress = progress
            stats = run_pipeline(lambda: stage.commit(run, stage.transform(run, todo, pool)), stage.error, stage.name)
            progress.finish(stats["written"], sum(stats["failed"].values()))
        run.progress = None
        actors = pool.size
    wall = time.time() - pipeline_started

    table = corpus.read_keyed(storage.join(cfg.output, stage.table), stage.schema, stage.key, opts,
                              columns=[stage.key, *stage.final_columns])
    failures = consolidate_failures(cfg.output, stage.name, stage.final_keys(run, table), run.run_id, opts)
    stats = {**stats, "failed": dict(sorted((Counter(stats["failed"]) + todo.failed).items()))}
    counts = {**todo.counts, **stage.finish(run, todo, stats, table, failures), "failed_this_run": stats["failed"],
              **failure_counts(failures, stage.name),
              **({"duplicates_removed": committed.removed} if committed.removed else {})}
    manifest = build_manifest(stage.name, cfg.model_dump(mode="json"), counts, started, run_id=run.run_id,
                              input=cfg.input, output=cfg.output, actors=actors, **todo.meta,
                              **stage.manifest_fields(run, todo, stats, wall))
    corpus.write_manifest(cfg.output, manifest, opts)
    line = stage.summary_line(manifest)
    if committed.removed:
        line += (f"; repaired: removed {committed.removed} duplicate rows (a key committed twice, by two runs at once "
                 f"before run leases), {committed.shards} shards rewritten")
    print(line)
    return manifest
