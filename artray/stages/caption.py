"""`artray caption`: captions and search queries for a corpus's artworks from a multimodal LLM, on Ray Data.

Method (B) captioned Artpedia with LLaVA-1.5 ("Caption this image", greedy, 200 new
tokens) one image at a time on two hard-coded GPUs, and made retrieval queries with a
second prompt. Here both are named prompt presets (plus any the config defines), and the
work scales with the cluster: one small work row per (artwork, preset) still to make →
``map_batches(CaptionBatch)`` on an actor pool (one model per actor, one actor per GPU or
per CPU slot; the actor reads the images from the corpus shards; batched, left-padded
generation) → ``write_datasink(StageSink)``: caption rows (CAPTION_SCHEMA) and
``_failures`` rows as atomic Parquet shards. With ``backend: vllm`` the same rows come from ``ray.data.llm``.

Resume: a row's key is ``caption_id = <artwork_id>|<captioner>|<preset>``; committed ids
are skipped, permanent failures too unless ``retry_failed``. ``_caption_params.json``
records per captioner the model, prompts and generation settings, and a run that would
mix other settings under the same captioner name is refused. Several captioners (and
presets) can share one output. Manifest last, as in every stage.
"""

from __future__ import annotations

import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import ray

from artray import corpus, storage
from artray.corpus import ARTWORKS, MANIFEST
from artray.manifest import build_manifest
from artray.schema import CAPTION_SCHEMA
from artray.stages.caption_config import (
    PRESETS,
    CaptionConfig,
    CaptionError,
    check_params,
)
from artray.stages.caption_flags import EXCLUDE_BY_DEFAULT, FLAGS, usable
from artray.stages.caption_generate import (
    WORK_SCHEMA,
    CaptionBatch,
    CaptionJob,
    caption_id,
)
from artray.stages.pipeline_errors import run_pipeline
from artray.stages.sink import (
    BufferedStageSink,
    consolidate_failures,
    failed_phrase,
    failure_counts,
    latest_failures,
)

STAGE = "caption"
CAPTIONS = "captions"
IO_NUM_CPUS = 0.25  # write tasks; fractional so they never starve behind the actors
__all__ = ["PRESETS", "CaptionConfig", "CaptionError", "run_caption", "read_captions", "summary_line"]


def _select(cfg: CaptionConfig, captioner: str, presets: list[str], opts) -> tuple[list[dict], Counter, int]:
    """(work rows to make, counts by kind, artworks in scope); a work row points at its artwork's shard row."""
    done = corpus.committed_ids(storage.join(cfg.output, CAPTIONS), "caption_id", opts)
    failed = latest_failures(cfg.output, STAGE, opts)
    work, kinds, seen = [], Counter(), set()
    for shard in storage.list_files(storage.join(cfg.input, ARTWORKS), ".parquet", opts):
        table = storage.read_parquet(shard, opts, columns=["artwork_id", "split"])
        for row, (aid, split) in enumerate(zip(table["artwork_id"].to_pylist(), table["split"].to_pylist())):
            if cfg.splits and split not in cfg.splits:
                continue
            if aid in seen:
                raise CaptionError(f"{cfg.input} has duplicate artwork_id {aid!r}; re-import the corpus")
            seen.add(aid)
            for preset in presets:
                cid = caption_id(aid, captioner, preset)
                kind = ("done" if cid in done else "failed" if failed.get(cid) is False and not cfg.retry_failed
                        else "todo")
                kinds[kind] += 1
                if kind == "todo":
                    work.append({"caption_id": cid, "artwork_id": aid, "split": split, "preset": preset,
                                 "shard": shard, "row": row})
    return work, kinds, len(seen)


def _device(cfg: CaptionConfig) -> str:
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.device == "cuda" and not gpus:
        raise CaptionError("device: cuda, but the Ray cluster has no GPUs; use device: cpu or auto")
    if cfg.backend == "vllm" and not gpus:
        raise CaptionError("backend: vllm needs GPUs in the Ray cluster; use backend: transformers on CPU")
    return "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and gpus) else "cpu"


def _actor_plan(cfg: CaptionConfig, device: str, n_rows: int) -> tuple[int, dict]:
    """(actors, ray remote args per actor): one per GPU slot, or as many as the CPUs allow beside I/O tasks."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    if device == "cuda":
        wanted = cfg.actors or max(1, int(gpus // cfg.gpus_per_actor))
        remote = {"num_cpus": cfg.actor_num_cpus, "num_gpus": cfg.gpus_per_actor}
        if wanted * cfg.gpus_per_actor > gpus:
            raise CaptionError(f"{wanted} actors x {cfg.gpus_per_actor} GPUs > {gpus:g} GPUs in the cluster; "
                               "lower actors or gpus_per_actor")
    else:
        wanted = cfg.actors or max(1, int((cpus - 2 * IO_NUM_CPUS) // cfg.actor_num_cpus))
        remote = {"num_cpus": cfg.actor_num_cpus}
    if wanted * cfg.actor_num_cpus + 2 * IO_NUM_CPUS > cpus:
        raise CaptionError(
            f"{wanted} actors x {cfg.actor_num_cpus} CPUs leave no CPU for the write tasks on a {cpus:g}-CPU "
            "cluster (Ray Data would wait forever); lower actors or actor_num_cpus")
    return max(1, min(wanted, -(-n_rows // cfg.batch_size))), remote


def _run_pipeline(cfg: CaptionConfig, work: list[dict], job: CaptionJob, run_id: str, opts) -> tuple[dict, int]:
    """Caption `work` on an actor pool and commit the results; returns (sink stats, actors).

    Work rows are small (ids and a shard pointer); the actors read the images themselves. Blocks of
    about batch_size rows (at most 16 per actor) keep every actor busy, even on a one-shard corpus.
    """
    actors, remote = _actor_plan(cfg, job.device, len(work))
    blocks = min(-(-len(work) // cfg.batch_size), 16 * actors)
    ds = ray.data.from_arrow(_slices(pa.Table.from_pylist(work, schema=WORK_SCHEMA), blocks))
    if cfg.backend == "vllm":
        from artray.stages.caption_vllm import vllm_captions

        ds = vllm_captions(ds, job, cfg.vllm_engine_kwargs, actors, IO_NUM_CPUS)
    else:
        ds = ds.map_batches(CaptionBatch, fn_constructor_kwargs={"job": job}, batch_size=cfg.batch_size,
                            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors), **remote)
    sink = BufferedStageSink(cfg.output, CAPTIONS, CAPTION_SCHEMA, STAGE, run_id, opts, cfg.shard_rows,
                             sum_columns=("_tokens",))
    ds.write_datasink(sink, ray_remote_args={"num_cpus": IO_NUM_CPUS})
    return sink.stats, actors


def _slices(table: pa.Table, n: int) -> list[pa.Table]:
    step = -(-table.num_rows // n)
    return [table.slice(i, step) for i in range(0, table.num_rows, step)]


def run_caption(cfg: CaptionConfig) -> dict:
    """Make the captions `cfg.output` is missing, consolidate failures, write the manifest; returns it."""
    started = time.time()
    opts = cfg.storage_options()
    if cfg.input.rstrip("/") == cfg.output.rstrip("/"):
        raise CaptionError("input and output are the same URI; captions go to their own output URI")
    if corpus.read_manifest(cfg.input, opts) is None:
        raise CaptionError(f"{cfg.input} has no {MANIFEST}: it is not a finished corpus (run `artray corpus import`)")
    if cfg.backend == "vllm":
        from artray.stages.caption_vllm import vllm_available

        if not vllm_available():
            raise CaptionError("backend: vllm needs the vllm package on the GPU nodes (pip install vllm); "
                               "or use backend: transformers")
    captioner, prompts, generation = cfg.captioner_name(), cfg.prompt_texts(), cfg.generation()
    check_params(cfg, captioner, prompts, generation, opts)
    storage.delete(storage.join(cfg.output, MANIFEST), opts)  # unfinished until the manifest is written again
    if not ray.is_initialized():
        from artray.runtime import init_ray

        init_ray()
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + "-" + corpus.new_run_id()

    work, kinds, n_artworks = _select(cfg, captioner, list(prompts), opts)
    device = _device(cfg)
    job = CaptionJob(captioner=captioner, model=cfg.model, prompts=prompts, generation=generation, device=device,
                     dtype=cfg.dtype, batch_size=cfg.batch_size, max_image_pixels=cfg.max_image_pixels,
                     loop_repeats=cfg.loop_repeats, s3_endpoint=cfg.s3_endpoint,
                     torch_threads=cfg.torch_threads or (max(1, int(cfg.actor_num_cpus)) if device == "cpu" else None))
    gen_started = time.time()
    stats, actors = (run_pipeline(lambda: _run_pipeline(cfg, work, job, run_id, opts), CaptionError, STAGE) if work
                     else ({"written": 0, "failed": {}, "_tokens": 0}, 0))
    gen_wall = time.time() - gen_started

    out = corpus.read_table(storage.join(cfg.output, CAPTIONS), CAPTION_SCHEMA, opts,
                            columns=["caption_id", "captioner", "flags"])
    ids = out["caption_id"].to_pylist()
    failures = consolidate_failures(cfg.output, STAGE, set(ids), run_id, opts)
    mine = [f for c, f in zip(out["captioner"].to_pylist(), out["flags"].to_pylist()) if c == captioner]
    flagged = Counter(flag for flags in mine for flag in flags)
    counts = {
        "input_artworks": n_artworks, "presets": list(prompts), "skipped_done": kinds["done"],
        "skipped_failed": kinds["failed"], "to_caption": kinds["todo"], "captioned": stats["written"],
        "failed_this_run": stats["failed"], "output_captions": len(set(ids)), "captioner_captions": len(mine),
        "duplicate_captions": len(ids) - len(set(ids)), "flagged": {f: flagged[f] for f in FLAGS},
        "unusable": sum(not usable(f) for f in mine),
        **failure_counts(failures, STAGE),
    }
    manifest = build_manifest(
        STAGE, cfg.model_dump(mode="json"), counts, started, run_id=run_id, input=cfg.input, output=cfg.output,
        captioner=captioner, model=cfg.model, prompts=prompts, generation=generation, device=device, actors=actors,
        generate_wall_s=round(gen_wall, 3), generated_tokens=stats["_tokens"],
        captions_per_s=round(stats["written"] / gen_wall, 3) if stats["written"] else 0.0,
        tokens_per_s=round(stats["_tokens"] / gen_wall, 2) if stats["written"] else 0.0,
    )
    corpus.write_manifest(cfg.output, manifest, opts)
    print(summary_line(manifest))
    return manifest


def summary_line(manifest: dict) -> str:
    """One line for people: what was captioned, what failed and why, what got flagged, how fast."""
    c = manifest["counts"]
    flags = " ".join(f"{k}={v}" for k, v in c["flagged"].items())
    return (
        f"[caption] {manifest['output']} ({manifest['captioner']}: {'+'.join(c['presets'])}): captioned "
        f"{c['captioned']}, {failed_phrase(c['failed_this_run'])}"
        + f", skipped {c['skipped_done']} done + {c['skipped_failed']} failed; {c['captioner_captions']} captions "
        f"of {manifest['captioner']} in output, flagged {flags}, {c['unusable']} unusable for training; "
        f"{manifest['captions_per_s']} captions/s, {manifest['tokens_per_s']} tokens/s on {manifest['actors']} "
        f"{manifest['device']} actor(s), {manifest['wall_s']:.1f}s in all"
    )


def read_captions(uri: str, options: storage.StorageOptions = storage.DEFAULT_OPTIONS, captioner: str | None = None,
                  preset: str | None = None, exclude_flags: tuple[str, ...] = EXCLUDE_BY_DEFAULT) -> pa.Table:
    """Caption rows at `uri` of one captioner/preset (default: all), without those carrying `exclude_flags`.

    The default leaves out refusals, loops and empty captions: what training should see.
    Pass ``exclude_flags=()`` to get every row.
    """
    table = corpus.read_table(storage.join(uri, CAPTIONS), CAPTION_SCHEMA, options)
    if captioner is not None:
        table = table.filter(pc.equal(table["captioner"], captioner))
    if preset is not None:
        table = table.filter(pc.equal(table["preset"], preset))
    if exclude_flags:
        table = table.filter(pa.array([usable(f, exclude_flags) for f in table["flags"].to_pylist()], pa.bool_()))
    return table
