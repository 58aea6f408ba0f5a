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
export missing image files, write ``_manifest.json`` last (the protocol of every stage:
`artray.stages.run`). ``_augment_params.json`` pins every setting that shapes the images, so a
resume never mixes two recipes. Read the output with `artray.outputs.read_variants`.
One run at a time per output URI.

Recipes: the defaults are method (A)'s published img2img settings with diffusers' prompt handling
(prompts cut at 77 tokens, a seed per (artwork, variant)); ``preset: cioni2023`` adds what its
AUTOMATIC1111 web UI did besides (prompts encoded in 75-token chunks, variant k seeded with k).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Field, field_validator, model_validator

from artray import corpus, storage
from artray.corpus import FAILURES
from artray.images import DEFAULT_MAX_PIXELS
from artray.outputs import VARIANTS
from artray.runtime import init_ray
from artray.schema import FAILURE_SCHEMA, VARIANT_SCHEMA
from artray.stages import augment_generate as gen
from artray.stages.augment_plan import make_plan, read_train, variant_id
from artray.stages.config import ModelStageConfig
from artray.stages.run import TASK_CPUS, ActorPool, Run, Stage, StageError, Todo, actor_pool, rate, run_stage
from artray.stages.sink import failed_phrase

logger = logging.getLogger(__name__)

STAGE = "augment"
PINNED = ("model", "variants", "seed", "caption", "prompt_template", "strength", "guidance", "steps", "sampler",
          "long_side", "batch_size", "image_format", "jpeg_quality", "filter_model", "filter_threshold")
# Pinned only when they differ from these values: outputs made before the keys existed still resume.
PINNED_IF_SET = {"seed_mode": "per_row", "prompt_encoding": "truncate", "negative_prompt": "", "vae_slicing": False,
                 "vae_tiling": False}
PINNED_ON_GPU = ("channels_last", "compile")  # they change the GPU kernels (bits), and do nothing on CPU
# Named recipes: a preset fills the keys the config does not give. "cioni2023" is method (A) as its web UI
# ran it: the published img2img settings, prompts over 75 tokens encoded in chunks, variant k seeded with k.
PRESETS: dict[str, dict] = {
    "cioni2023": {"caption": "first", "prompt_template": "{caption}", "negative_prompt": "", "strength": 0.34,
                  "guidance": 10.0, "steps": 40, "sampler": "euler_a", "long_side": 576, "seed": 0,
                  "seed_mode": "per_variant", "prompt_encoding": "chunked"},
}


class AugmentError(StageError):
    """The augment job cannot start or finish; the message says what to fix."""


class AugmentConfig(ModelStageConfig):
    """Makes M diffusion img2img variants of every train artwork (method (A): the defaults are its published
    img2img settings; ``preset: cioni2023`` also encodes and seeds as its web UI did)."""

    preset: Literal["cioni2023"] | None = Field(None, description="named recipe filling the keys not given: "
                                                "cioni2023 = method (A) as its web UI ran it (chunked prompts, "
                                                "variant k seeded with seed + k)")
    input: str = Field(description="corpus URI to augment (train split only)")
    output: str = Field(description="variants URI to write; running again resumes it")
    model: str = Field("stable-diffusion-v1-5/stable-diffusion-v1-5",
                       description="SD 1.x img2img checkpoint: hub id, local folder or s3:// folder")
    variants: int = Field(4, ge=1, description="variants per train artwork (M)")
    seed: int = Field(0, description="base seed (see seed_mode)")
    seed_mode: Literal["per_row", "per_variant"] = Field(
        "per_row", description="per_row: each image's seed is a hash of (artwork_id, variant, seed); "
        "per_variant: seed + variant, the same for variant k of every artwork (method A)")
    caption: Literal["first", "per_variant", "all"] = Field(
        "first", description="prompt caption: the first (method A), caption number (variant mod n), or all joined")
    prompt_template: str = Field("{caption}", description="prompt text; {caption} is replaced by the caption")
    prompt_encoding: Literal["truncate", "chunked"] = Field(
        "truncate", description="truncate: prompts cut at the text encoder's 77 tokens (diffusers); chunked: "
        "75-token chunks encoded one by one and concatenated (AUTOMATIC1111, method A's web UI)")
    negative_prompt: str = Field("", description="negative prompt for classifier-free guidance (method A: none)")
    strength: float = Field(0.34, gt=0, le=1, description="img2img denoising strength")
    guidance: float = Field(10.0, ge=0, description="classifier-free guidance scale")
    steps: int = Field(40, ge=1, description="sampler steps")
    sampler: Literal["euler_a", "euler", "ddim", "dpmpp_2m", "lms", "pndm"] = Field("euler_a",
        description="diffusion sampler (euler_a = AUTOMATIC1111's 'Euler a', the published recipe)")
    long_side: int = Field(576, ge=8, description="long side of the init image; sides rounded to multiples of 8")
    batch_size: int = Field(4, ge=1, description="images per generation batch (equal sizes only)")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field("auto", description="auto: fp16 on GPU, fp32 on CPU")
    channels_last: bool = Field(True, description="GPU: channels_last memory format for the UNet and VAE (faster "
                                "convolutions; no effect on CPU)")
    compile: bool = Field(False, description="GPU only: torch.compile the UNet (a compile per image size and batch "
                          "size at the start, faster steps after)")
    vae_slicing: bool = Field(False, description="decode the batch's images one at a time (less GPU memory)")
    vae_tiling: bool = Field(False, description="decode in overlapping tiles: large images in little memory "
                             "(changes pixels at the tile seams)")
    inline_cpu_steps: bool | None = Field(None, description="decode/resize and encode inside the generate actor "
                                          "(default: on CPU yes; on GPU no, CPU tasks overlap them with the GPU)")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per CPU actor (default: ceil(cpus_per_actor))")
    image_format: Literal["png", "jpeg"] = Field("png", description="encoding of the variant bytes (png is lossless)")
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality of the stored variants")
    export_images: bool = Field(False, description="also write every variant as an image file for people to look at")
    export_uri: str | None = Field(None, description="where exported files go (default: <output>/images)")
    filter_model: str | None = Field(None, description="CLIP for the quality filter (.pt file, open_clip:<arch>[:<tag>], "
                                     "hf-hub:<repo> or a transformers CLIP); off when unset")
    filter_threshold: float = Field(0.75, ge=-1, le=1, description="variants with similarity below this get passed_filter=false")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="refuse source images with more pixels")
    shard_rows: int = Field(256, ge=1, description="variant rows per committed Parquet shard at most")
    retry_failed: bool = Field(False, description="also retry artworks that failed for good before (corrupt images, ...)")
    fail_after_batches: int | None = Field(None, ge=0, description="testing only: each actor raises after this many "
                                           "batches, to simulate a crash mid-run", json_schema_extra={"hidden": True})

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset") is not None:
            if data["preset"] not in PRESETS:
                raise ValueError(f"unknown preset {data['preset']!r}: use one of {', '.join(sorted(PRESETS))}")
            data = {**PRESETS[data["preset"]], **data}
        return data

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


def _complete(cfg: AugmentConfig, table: pa.Table) -> set[str]:
    """Artworks with all their variants committed."""
    ids = set(table["variant_id"].to_pylist())
    return {p for p in set(table["parent_id"].to_pylist()) if all(variant_id(p, v) in ids for v in range(cfg.variants))}


def _dtype(cfg: AugmentConfig, gpus: float) -> str:
    return cfg.dtype if cfg.dtype != "auto" else ("float16" if gpus else "float32")


class AugmentStage(Stage):
    """The plan keeps batches whole (byte-identical resumes); GPU runs overlap CPU tasks with the actors."""

    name, table, schema, key, error = STAGE, VARIANTS, VARIANT_SCHEMA, "variant_id", AugmentError
    task_ops, final_columns = 3, ("parent_id", "prompt", "prompt_truncated", "passed_filter")  # prepare, encode, write
    pin_hint = "a resume never mixes two recipes"

    def check(self, cfg: AugmentConfig, opts) -> None:
        _check_model_paths(cfg)

    def params(self, cfg: AugmentConfig) -> dict:
        init_ray()  # device and dtype shape the images too: they come from the cluster
        gpus = actor_pool(cfg, 1, task_ops=self.task_ops, error=AugmentError).gpus  # refuses a layout that cannot run
        if cfg.compile and not gpus:
            raise AugmentError("compile: true needs GPU actors (torch.compile of the UNet is CUDA only here); "
                               "set compile: false, or gpus_per_actor > 0 on a cluster with GPUs")
        optional = {k: getattr(cfg, k) for k, legacy in PINNED_IF_SET.items() if getattr(cfg, k) != legacy}
        on_gpu = {k: getattr(cfg, k) for k in PINNED_ON_GPU} if gpus else {}
        return {**{k: getattr(cfg, k) for k in PINNED}, **optional, **on_gpu, "input": cfg.input,
                "device": "cuda" if gpus else "cpu", "dtype": _dtype(cfg, gpus)}

    def todo(self, run: Run) -> Todo:
        cfg, opts = run.cfg, run.opts
        train, splits = read_train(cfg.input, opts)
        batches, plan_failures, plan = make_plan(train, cfg, run.done, run.failed, opts)
        del train
        if plan_failures:
            storage.write_parquet_atomic(pa.Table.from_pylist(plan_failures, schema=FAILURE_SCHEMA), storage.join(
                cfg.output, FAILURES, corpus.shard_name(0, f"{run.run_id}-plan")), opts)
        logger.debug("augment plan: %s in %d batches", plan, len(batches))
        return Todo(batches, plan["to_generate"], len(batches), failed=Counter(r["reason"] for r in plan_failures),
                    counts={"artworks_per_split": splits, "train_artworks": splits.get("train", 0),
                            "variants_per_artwork": cfg.variants, **plan},
                    meta={"batches": len(batches)})

    def transform(self, run: Run, todo: Todo, pool: ActorPool):
        """Prepare → generate → encode the planned batches (one batch per dataset row)."""
        cfg, opts = run.cfg, run.opts
        threads = None if pool.gpus else (cfg.torch_threads or math.ceil(cfg.cpus_per_actor))
        prepare_kwargs = {"long_side": cfg.long_side, "max_image_pixels": cfg.max_image_pixels, "options": opts}
        encode_kwargs = {"fmt": cfg.image_format, "quality": cfg.jpeg_quality, "export_uri": cfg.export_target(),
                         "options": opts}
        generate_kwargs = {
            "model": cfg.model, "options": opts, "use_gpu": pool.gpus > 0, "dtype": _dtype(cfg, pool.gpus),
            "sampler": cfg.sampler, "strength": cfg.strength, "guidance": cfg.guidance, "steps": cfg.steps,
            "prompt_encoding": cfg.prompt_encoding, "negative_prompt": cfg.negative_prompt,
            "fast_path": {"channels_last": cfg.channels_last and pool.gpus > 0, "compile_unet": cfg.compile,
                          "vae_slicing": cfg.vae_slicing, "vae_tiling": cfg.vae_tiling},
            "filter_model": cfg.filter_model, "filter_threshold": cfg.filter_threshold, "threads": threads,
            "fail_after_batches": cfg.fail_after_batches}
        actor_args = {"batch_size": 1, "batch_format": "pyarrow", "compute": pool.strategy(), **pool.remote_args()}
        ds = ray.data.from_arrow(todo.data)
        inline = cfg.inline_cpu_steps if cfg.inline_cpu_steps is not None else not pool.gpus
        if inline:  # CPU generators: decode/resize and encode inside the actor (nothing to overlap with)
            return ds.map_batches(gen.GenerateInline, fn_constructor_kwargs={
                "prepare_kwargs": prepare_kwargs, "encode_kwargs": encode_kwargs, **generate_kwargs}, **actor_args)
        # GPU generators: CPU tasks decode/resize ahead of the GPU and encode behind it
        ds = ds.map_batches(gen.prepare, fn_kwargs=prepare_kwargs, batch_size=1, batch_format="pyarrow",
                            num_cpus=TASK_CPUS)
        ds = ds.map_batches(gen.Generate, fn_constructor_kwargs=generate_kwargs, **actor_args)
        return ds.map_batches(gen.encode, fn_kwargs=encode_kwargs, batch_size=None, batch_format="pyarrow",
                              num_cpus=TASK_CPUS)

    def final_keys(self, run: Run, table: pa.Table) -> set[str]:
        """Committed variants, and artworks with all their variants (their planning failures are gone too)."""
        return set(table["variant_id"].to_pylist()) | _complete(run.cfg, table)

    def finish(self, run: Run, todo: Todo, stats: dict, table: pa.Table, failures: list[dict]) -> dict:
        cfg = run.cfg
        ids = table["variant_id"].to_pylist()
        complete = _complete(cfg, table)
        exported = _export_missing(cfg, run.opts)
        truncated = table.filter(pc.fill_null(table["prompt_truncated"], False))
        passed = pc.sum(pc.cast(pc.fill_null(table["passed_filter"], False), pa.int64())).as_py() or 0
        return {
            "generated": stats["written"], "output_variants": len(ids), "duplicate_variants": len(ids) - len(set(ids)),
            "artworks_augmented": len(complete), "prompts_truncated": len(set(truncated["prompt"].to_pylist())),
            "variants_truncated": truncated.num_rows, "passed_filter": passed,
            "filtered_out": table.num_rows - table["passed_filter"].null_count - passed, "exported_at_end": exported,
        }

    def manifest_fields(self, run: Run, todo: Todo, stats: dict, wall_s: float) -> dict:
        return {"generate_wall_s": round(wall_s, 3), "images_per_s": rate(stats["written"], wall_s, 3)}

    def summary_line(self, manifest: dict) -> str:
        return summary_line(manifest)


def run_augment(cfg: AugmentConfig) -> dict:
    """Generate what is missing in `cfg.output`, consolidate, write the manifest; returns it."""
    return run_stage(AugmentStage(), cfg)


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
