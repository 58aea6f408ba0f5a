"""`artray augment`: M diffusion img2img variants of every *train* artwork, on Ray Data (method (A)).

The driver reads the train split of the input corpus and plans every (artwork, variant)
pair into batches of equal-size images (`augment_plan`). Batches with a variant not yet
committed run through ``ray.data.from_arrow`` → ``map_batches(prepare)`` (CPU tasks: decode,
resize) → ``map_batches(Generate)`` (actor pool: one SD img2img per GPU actor) →
``map_batches(encode)`` (CPU tasks: PNG bytes, optional files) → ``write_datasink(StageSink)``,
which commits ``<output>/variants/`` and ``<output>/_failures/`` as atomic Parquet shards. With
no GPU, one `GenerateInline` actor op does all three steps (nothing to overlap on CPU).

Resume: the committed ``variant_id``s *are* the checkpoint. A rerun skips them, skips
artworks whose latest failure is permanent (unless ``retry_failed``), and regenerates only
batches with a missing variant (whole, so the images are byte-identical to an
uninterrupted run; see `augment_plan`). End of a run, in order: consolidate ``_failures``,
export missing image files, write ``_manifest.json`` last. ``_augment_params.json`` pins
every setting that shapes the images, so a resume never mixes two recipes.
One run at a time per output URI.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Field, field_validator, model_validator

from artray import corpus, storage
from artray.config import JobConfig
from artray.corpus import FAILURES, MANIFEST
from artray.errors import UserError
from artray.images import DEFAULT_MAX_PIXELS
from artray.manifest import build_manifest
from artray.runtime import init_ray
from artray.schema import FAILURE_SCHEMA, VARIANT_SCHEMA
from artray.stages import augment_generate as gen
from artray.stages.augment_plan import make_plan, read_train, variant_id
from artray.stages.pipeline_errors import run_pipeline
from artray.stages.sink import (
    StageSink,
    consolidate_failures,
    failed_phrase,
    failure_counts,
    latest_failures,
)

logger = logging.getLogger(__name__)

STAGE = "augment"
VARIANTS = "variants"
PARAMS = "_augment_params.json"
AUX_NUM_CPUS = 0.25  # prepare / encode / write tasks; fractional so they never starve behind the actors
PINNED = ("model", "variants", "seed", "caption", "prompt_template", "strength", "guidance", "steps", "sampler",
          "long_side", "batch_size", "image_format", "jpeg_quality", "filter_model", "filter_threshold")


class AugmentError(UserError, RuntimeError):
    """The augment job cannot start or finish; the message says what to fix."""


class AugmentConfig(JobConfig):
    """Config of `artray augment`. Defaults are method (A)'s published recipe."""

    input: str = Field(description="corpus URI to augment (train split only)")
    output: str = Field(description="variants URI to write; running again resumes it")
    model: str = Field("stable-diffusion-v1-5/stable-diffusion-v1-5",
                       description="SD 1.x img2img checkpoint: hub id, local folder or s3:// folder")
    variants: int = Field(4, ge=1, description="variants per train artwork (M)")
    seed: int = Field(0, description="base seed; each image's seed is a hash of (artwork_id, variant, seed)")
    caption: Literal["first", "per_variant", "all"] = Field(
        "first", description="prompt caption: the first (method A), caption number (variant mod n), or all joined")
    prompt_template: str = Field("{caption}", description="prompt text; {caption} is replaced by the caption")
    strength: float = Field(0.34, gt=0, le=1, description="img2img denoising strength")
    guidance: float = Field(10.0, ge=0, description="classifier-free guidance scale")
    steps: int = Field(40, ge=1, description="sampler steps")
    sampler: Literal["euler_a", "euler", "ddim", "dpmpp_2m", "lms", "pndm"] = "euler_a"
    long_side: int = Field(576, ge=8, description="long side of the init image; sides rounded to multiples of 8")
    batch_size: int = Field(4, ge=1, description="images per generation batch (equal sizes only)")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field("auto", description="auto: fp16 on GPU, fp32 on CPU")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per actor, fractional allowed (default: 1 if the cluster has GPUs, else 0)")
    actor_num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per generate actor")
    actors: int | None = Field(None, ge=1, description="generate actors (default: as many as GPUs/CPUs allow)")
    inline_cpu_steps: bool | None = Field(None, description="decode/resize and encode inside the generate actor "
                                          "(default: on CPU yes; on GPU no, CPU tasks overlap them with the GPU)")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per CPU actor (default: ceil(actor_num_cpus))")
    image_format: Literal["png", "jpeg"] = Field("png", description="encoding of the variant bytes (png is lossless)")
    jpeg_quality: int = Field(95, ge=1, le=100)
    export_images: bool = Field(False, description="also write every variant as an image file for people to look at")
    export_uri: str | None = Field(None, description="where exported files go (default: <output>/images)")
    filter_model: str | None = Field(None, description="CLIP for the quality filter (.pt file, open_clip:<arch>[:<tag>], "
                                     "hf-hub:<repo> or a transformers CLIP); off when unset")
    filter_threshold: float = Field(0.75, ge=-1, le=1, description="variants with similarity below this get passed_filter=false")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="refuse source images with more pixels")
    shard_rows: int = Field(256, ge=1, description="variant rows per committed Parquet shard at most")
    retry_failed: bool = Field(False, description="also retry artworks that failed for good before (corrupt images, ...)")
    fail_after_batches: int | None = Field(None, ge=0, description="testing only: each actor raises after this many "
                                           "batches, to simulate a crash mid-run")

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            ok = "{caption}" in value and value.format(caption="x") is not None
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"prompt_template may only use {{caption}} (double other braces): {exc}") from exc
        if not ok:
            raise ValueError("prompt_template must contain {caption}")
        return value

    @model_validator(mode="after")
    def _denoises(self) -> AugmentConfig:
        if int(self.steps * self.strength) < 1:  # diffusers runs int(steps * strength) of the steps
            raise ValueError(f"steps={self.steps} x strength={self.strength} runs no denoising step; raise steps "
                             f"to at least {math.ceil(1 / self.strength)} or raise strength")
        return self

    def export_target(self) -> str | None:
        return (self.export_uri or storage.join(self.output, "images")) if self.export_images else None


def _resources(cfg: AugmentConfig, batches: int) -> tuple[int, float, str]:
    """(actors, GPUs per actor, dtype) from the config and the cluster; refuses layouts that would hang."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    num_gpus = cfg.num_gpus if cfg.num_gpus is not None else (1.0 if gpus else 0.0)
    if num_gpus > gpus:
        raise AugmentError(f"num_gpus={num_gpus:g} per actor but the cluster has {gpus:g} GPUs; set num_gpus: 0 to run "
                           "on CPU (slow) or connect to a GPU cluster (--address / RAY_ADDRESS)")
    spare = cpus - 3 * AUX_NUM_CPUS
    by_res = int(gpus // num_gpus) if num_gpus else int(spare // cfg.actor_num_cpus)
    actors = max(1, min(cfg.actors or by_res, batches))
    if actors * cfg.actor_num_cpus > spare:
        raise AugmentError(f"{actors} actors x {cfg.actor_num_cpus:g} CPUs leave no CPU for the prepare/encode/write "
                           f"tasks on a {cpus:g}-CPU cluster (Ray Data would wait forever); lower actors or actor_num_cpus")
    dtype = cfg.dtype if cfg.dtype != "auto" else ("float16" if num_gpus else "float32")
    return actors, num_gpus, dtype


def _check_params(cfg: AugmentConfig, device: str, dtype: str, opts: storage.StorageOptions) -> None:
    """Refuse to resume an output whose committed variants were made with another recipe."""
    uri = storage.join(cfg.output, PARAMS)
    wanted = {**{k: getattr(cfg, k) for k in PINNED}, "input": cfg.input, "device": device, "dtype": dtype}
    found = storage.read_json(uri, opts)
    if found is None:
        storage.write_json_atomic(uri, wanted, opts)
    elif found != wanted:
        diff = {k: (found.get(k), v) for k, v in wanted.items() if found.get(k) != v}
        raise AugmentError(f"{cfg.output} holds variants made with other settings (committed, asked): {diff}. "
                           "Use a new output URI, or delete the old output to start over")


def _run_pipeline(batches: list[pa.Table], cfg: AugmentConfig, run_id: str) -> tuple[dict, int]:
    """Prepare → generate → encode → commit the planned batches; returns (sink stats, actors)."""
    opts = cfg.storage_options()
    actors, num_gpus, dtype = _resources(cfg, len(batches))
    threads = None if num_gpus else (cfg.torch_threads or math.ceil(cfg.actor_num_cpus))
    sink = StageSink(cfg.output, VARIANTS, VARIANT_SCHEMA, STAGE, run_id, opts, cfg.shard_rows)
    prepare_kwargs = {"long_side": cfg.long_side, "max_image_pixels": cfg.max_image_pixels, "options": opts}
    encode_kwargs = {"fmt": cfg.image_format, "quality": cfg.jpeg_quality, "export_uri": cfg.export_target(),
                     "options": opts}
    generate_kwargs = {
        "model": cfg.model, "options": opts, "use_gpu": num_gpus > 0, "dtype": dtype, "sampler": cfg.sampler,
        "strength": cfg.strength, "guidance": cfg.guidance, "steps": cfg.steps, "filter_model": cfg.filter_model,
        "filter_threshold": cfg.filter_threshold, "threads": threads, "fail_after_batches": cfg.fail_after_batches}
    actor_args = {"batch_size": 1, "batch_format": "pyarrow", "num_cpus": cfg.actor_num_cpus,
                  "num_gpus": num_gpus or None, "compute": ray.data.ActorPoolStrategy(size=actors)}
    ds = ray.data.from_arrow(batches)
    inline = cfg.inline_cpu_steps if cfg.inline_cpu_steps is not None else not num_gpus
    if inline:  # CPU generators: decode/resize and encode inside the actor (nothing to overlap with)
        ds = ds.map_batches(gen.GenerateInline, fn_constructor_kwargs={
            "prepare_kwargs": prepare_kwargs, "encode_kwargs": encode_kwargs, **generate_kwargs}, **actor_args)
    else:  # GPU generators: CPU tasks decode/resize ahead of the GPU and encode behind it
        ds = ds.map_batches(gen.prepare, fn_kwargs=prepare_kwargs, batch_size=1, batch_format="pyarrow",
                            num_cpus=AUX_NUM_CPUS)
        ds = ds.map_batches(gen.Generate, fn_constructor_kwargs=generate_kwargs, **actor_args)
        ds = ds.map_batches(gen.encode, fn_kwargs=encode_kwargs, batch_size=None, batch_format="pyarrow",
                            num_cpus=AUX_NUM_CPUS)
    ds.write_datasink(sink, ray_remote_args={"num_cpus": AUX_NUM_CPUS})
    return sink.stats, actors


def _export_missing(cfg: AugmentConfig, opts: storage.StorageOptions) -> int:
    """Write the files of committed variants that have none yet (export turned on later, failed exports)."""
    target = cfg.export_target()
    if not target:
        return 0
    have = {storage.basename(u) for u in storage.list_files(target, options=opts)}
    written = 0
    for shard in storage.list_files(storage.join(cfg.output, VARIANTS), ".parquet", opts):
        keys = storage.read_parquet(shard, opts, columns=["parent_id", "variant"]).to_pylist()
        if all(gen.export_name(k["parent_id"], k["variant"], cfg.image_format) in have for k in keys):
            continue
        for r in storage.read_parquet(shard, opts, columns=["parent_id", "variant", "image"]).to_pylist():
            name = gen.export_name(r["parent_id"], r["variant"], cfg.image_format)
            if name not in have:
                storage.write_bytes_atomic(storage.join(target, name), r["image"], opts)
                written += 1
    return written


def _check_model_paths(cfg: AugmentConfig) -> None:
    """Fail before Ray Data starts when a model given as a local path is not there (the actors would
    only report it after their start-up, buried in a remote traceback)."""
    for key in ("model", "filter_model"):
        name = getattr(cfg, key)
        if not name or storage.is_s3(name) or name.startswith(("open_clip:", "hf-hub:")):
            continue
        local = name.removeprefix("file://")
        if local.startswith(("/", ".", "~")) and not Path(local).expanduser().exists():
            raise AugmentError(f"{key}: {name} does not exist; give an existing folder/file, a hub id or an s3:// URI")


def run_augment(cfg: AugmentConfig) -> dict:
    """Generate what is missing in `cfg.output`, consolidate, write the manifest; returns it."""
    started = time.time()
    opts = cfg.storage_options()
    if cfg.input.rstrip("/") == cfg.output.rstrip("/"):
        raise AugmentError("input and output are the same URI; augment writes variants to a new URI")
    if corpus.read_manifest(cfg.input, opts) is None:
        raise AugmentError(f"{cfg.input} has no {MANIFEST}: it is not a finished corpus "
                           "(run `artray corpus import` / `artray corpus ingest` first)")
    _check_model_paths(cfg)
    init_ray()
    _, num_gpus, dtype = _resources(cfg, 1)
    _check_params(cfg, "cuda" if num_gpus else "cpu", dtype, opts)
    storage.delete(storage.join(cfg.output, MANIFEST), opts)  # unfinished until the manifest is written again
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + "-" + corpus.new_run_id()

    train, splits = read_train(cfg.input, opts)
    done = corpus.committed_ids(storage.join(cfg.output, VARIANTS), "variant_id", opts)
    batches, plan_failures, plan = make_plan(train, cfg, done, latest_failures(cfg.output, STAGE, opts), opts)
    del train
    if plan_failures:
        storage.write_parquet_atomic(pa.Table.from_pylist(plan_failures, schema=FAILURE_SCHEMA), storage.join(
            cfg.output, FAILURES, corpus.shard_name(0, f"{run_id}-plan")), opts)
    logger.info("augment plan: %s in %d batches", plan, len(batches))

    gen_started = time.time()
    stats, actors = {"written": 0, "failed": {}}, 0
    if batches:
        stats, actors = run_pipeline(lambda: _run_pipeline(batches, cfg, run_id), AugmentError, STAGE)
    gen_wall = time.time() - gen_started

    final = corpus.read_table(storage.join(cfg.output, VARIANTS), VARIANT_SCHEMA, opts,
                              columns=["variant_id", "parent_id", "prompt", "prompt_truncated", "passed_filter"])
    ids = final["variant_id"].to_pylist()
    id_set = set(ids)
    complete = {p for p in set(final["parent_id"].to_pylist())
                if all(variant_id(p, v) in id_set for v in range(cfg.variants))}
    failures = consolidate_failures(cfg.output, STAGE, id_set | complete, run_id, opts)
    exported = _export_missing(cfg, opts)
    truncated = final.filter(pc.fill_null(final["prompt_truncated"], False))
    passed = pc.sum(pc.cast(pc.fill_null(final["passed_filter"], False), pa.int64())).as_py() or 0
    failed_now = Counter(stats["failed"]) + Counter(r["reason"] for r in plan_failures)
    counts = {
        "artworks_per_split": splits, "train_artworks": splits.get("train", 0), "variants_per_artwork": cfg.variants,
        **plan, "generated": stats["written"], "failed_this_run": dict(sorted(failed_now.items())),
        "output_variants": len(ids), "duplicate_variants": len(ids) - len(id_set), "artworks_augmented": len(complete),
        "prompts_truncated": len(set(truncated["prompt"].to_pylist())), "variants_truncated": truncated.num_rows,
        "passed_filter": passed, "filtered_out": final.num_rows - final["passed_filter"].null_count - passed,
        **failure_counts(failures), "exported_at_end": exported,
    }
    manifest = build_manifest(
        STAGE, cfg.model_dump(mode="json"), counts, started, run_id=run_id, input=cfg.input, output=cfg.output,
        actors=actors, batches=len(batches), generate_wall_s=round(gen_wall, 3),
        images_per_s=round(stats["written"] / gen_wall, 3) if stats["written"] else 0.0,
    )
    corpus.write_manifest(cfg.output, manifest, opts)
    print(summary_line(manifest))
    return manifest


def summary_line(manifest: dict) -> str:
    """One line for people: artworks, variants, failures, speed."""
    c = manifest["counts"]
    return (
        f"[augment] {manifest['output']}: {c['train_artworks']} train artworks x {c['variants_per_artwork']}; "
        f"generated {c['generated']}, {failed_phrase(c['failed_this_run'])}"
        + f", skipped {c['done']} done + {c['skipped_failed']} failed; {c['output_variants']} variants of "
        f"{c['artworks_augmented']} artworks, {sum(c['failures_total'].values())} in _failures, "
        f"{c['prompts_truncated']} prompts cut at 77 tokens; {manifest['images_per_s']} images/s "
        f"({manifest['wall_s']:.1f}s)"
    )
