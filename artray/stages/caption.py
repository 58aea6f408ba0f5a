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
presets) can share one output. Manifest last, as in every stage (`artray.stages.run`). Read the
output with `artray.outputs.read_captions`.

Method (A)'s captioners work the same way: a GIT or BLIP captioner checkpoint as `model` (an
`artray train` export, or any such checkpoint; `artray.stages.caption_captioner` detects it)
captions each image unconditionally under preset ``caption`` (empty prompt), with the same rows,
resume and failures; ``generation_preset: cioni2023-artpedia | cioni2023-artcap`` decodes as (A) did.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import ray

from artray import storage
from artray.corpus import ARTWORKS
from artray.outputs import CAPTIONS
from artray.schema import CAPTION_SCHEMA
from artray.stages.caption_captioner import model_kind
from artray.stages.caption_config import (
    GENERATION_PRESETS,
    MLLM,
    PRESETS,
    CaptionConfig,
    CaptionError,
    check_params,
)
from artray.stages.caption_flags import FLAGS, usable
from artray.stages.caption_generate import (
    WORK_SCHEMA,
    CaptionBatch,
    CaptionJob,
    caption_id,
)
from artray.stages.run import TASK_CPUS, ActorPool, Run, Stage, Todo, rate, run_stage
from artray.stages.sink import BufferedStageSink, failed_phrase

STAGE = "caption"
__all__ = ["GENERATION_PRESETS", "PRESETS", "CaptionConfig", "CaptionError", "run_caption", "summary_line"]


def _select(run: Run, captioner: str, presets: list[str]) -> tuple[list[dict], Counter, int]:
    """(work rows to make, counts by kind, artworks in scope); a work row points at its artwork's shard row."""
    cfg, opts = run.cfg, run.opts
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
                kind = run.skip(cid) or "todo"
                kinds[kind] += 1
                if kind == "todo":
                    work.append({"caption_id": cid, "artwork_id": aid, "split": split, "preset": preset,
                                 "shard": shard, "row": row})
    return work, kinds, len(seen)


def _device(cfg: CaptionConfig) -> str:
    """Where the captioner runs: cuda when asked, or on auto when the cluster has GPUs (and actors get some)."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if cfg.device == "cuda" and not gpus:
        raise CaptionError("device: cuda, but the Ray cluster has no GPUs; use device: cpu or auto")
    if cfg.device == "cuda" and cfg.gpus_per_actor == 0:
        raise CaptionError("device: cuda with gpus_per_actor: 0; give the actors a GPU share or use device: cpu")
    if cfg.backend == "vllm" and not gpus:
        raise CaptionError("backend: vllm needs GPUs in the Ray cluster; use backend: transformers on CPU")
    return "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and gpus and cfg.gpus_per_actor != 0) else "cpu"


def captioner_prompts(cfg: CaptionConfig, kind: str) -> dict[str, str]:
    """preset → prompt text of this run: the config's for an MLLM; a captioner (unconditional) has one preset,
    ``caption``, with no prompt."""
    if kind == MLLM:
        return cfg.prompt_texts()
    if cfg.prompts or (cfg.presets is not None and cfg.presets != ["caption"]):
        raise CaptionError(f"{cfg.model} is a {kind} checkpoint: it captions images without a prompt, so only "
                           f"preset 'caption' can run (asked: {list(cfg.prompt_texts())}); drop presets/prompts "
                           "or use an MLLM for queries and custom prompts")
    if cfg.backend == "vllm":
        raise CaptionError(f"{cfg.model} is a {kind} checkpoint: backend vllm runs MLLMs only; "
                           "use backend: transformers")
    return {"caption": ""}


def _job(cfg: CaptionConfig, device: str, kind: str) -> CaptionJob:
    return CaptionJob(captioner=cfg.captioner_name(), model=cfg.model, prompts=captioner_prompts(cfg, kind), kind=kind,
                      generation=cfg.generation(), device=device, dtype=cfg.dtype, batch_size=cfg.batch_size,
                      max_image_pixels=cfg.max_image_pixels, loop_repeats=cfg.loop_repeats, s3_endpoint=cfg.s3_endpoint,
                      torch_threads=cfg.torch_threads or (max(1, int(cfg.cpus_per_actor)) if device == "cpu" else None))


class CaptionStage(Stage):
    """Work rows are small (ids and a shard pointer); the actors read the images themselves."""

    name, table, schema, key, error = STAGE, CAPTIONS, CAPTION_SCHEMA, "caption_id", CaptionError
    task_ops, udf, sink, sum_columns = 2, CaptionBatch, BufferedStageSink, ("_tokens",)
    final_columns = ("captioner", "flags")

    kind = MLLM  # the model kind of this run (`check` finds it)

    def check(self, cfg: CaptionConfig, opts) -> None:
        self.kind = model_kind(cfg.model, opts)
        captioner_prompts(cfg, self.kind)  # a captioner refuses prompts and vllm
        if cfg.backend == "vllm":
            from artray.stages.caption_vllm import vllm_available

            if not vllm_available():
                raise CaptionError("backend: vllm needs the vllm package on the GPU nodes (pip install vllm); "
                                   "or use backend: transformers")

    def pin(self, cfg: CaptionConfig, opts) -> None:
        """Per captioner name: one model (and kind), prompt per preset and generation settings (presets may be
        added)."""
        check_params(cfg, cfg.captioner_name(), captioner_prompts(cfg, self.kind), cfg.generation(), opts, self.kind)

    def device(self, cfg: CaptionConfig) -> str:
        return _device(cfg)

    def todo(self, run: Run) -> Todo:
        cfg, prompts = run.cfg, captioner_prompts(run.cfg, self.kind)
        work, kinds, n_artworks = _select(run, cfg.captioner_name(), list(prompts))
        return Todo(pa.Table.from_pylist(work, schema=WORK_SCHEMA), len(work), counts={
            "input_artworks": n_artworks, "presets": list(prompts), "skipped_done": kinds["done"],
            "skipped_failed": kinds["failed"], "to_caption": kinds["todo"]}, meta={
            "captioner": cfg.captioner_name(), "model": cfg.model, "model_kind": self.kind, "prompts": prompts,
            "generation": cfg.generation(),
            "device": _device(cfg)})

    def udf_kwargs(self, run: Run, pool: ActorPool) -> dict:
        return {"job": _job(run.cfg, _device(run.cfg), self.kind)}

    def transform(self, run: Run, todo: Todo, pool: ActorPool):
        """Blocks of about batch_size rows (at most 16 per actor) keep every actor busy, even on a one-shard corpus."""
        cfg = run.cfg
        ds = ray.data.from_arrow(_slices(todo.data, min(-(-todo.rows // cfg.batch_size), 16 * pool.size)))
        if cfg.backend == "vllm":
            from artray.stages.caption_vllm import vllm_captions

            return vllm_captions(ds, _job(cfg, _device(cfg), self.kind), cfg.vllm_engine_kwargs, pool.size, TASK_CPUS)
        return self.map_udf(run, ds, pool)

    def finish(self, run: Run, todo: Todo, stats: dict, table: pa.Table, failures: list[dict]) -> dict:
        ids, captioner = table["caption_id"].to_pylist(), run.cfg.captioner_name()
        mine = [f for c, f in zip(table["captioner"].to_pylist(), table["flags"].to_pylist()) if c == captioner]
        flagged = Counter(flag for flags in mine for flag in flags)
        return {"captioned": stats["written"], "output_captions": len(set(ids)), "captioner_captions": len(mine),
                "duplicate_captions": len(ids) - len(set(ids)), "flagged": {f: flagged[f] for f in FLAGS},
                "unusable": sum(not usable(f) for f in mine)}

    def manifest_fields(self, run: Run, todo: Todo, stats: dict, wall_s: float) -> dict:
        return {"generate_wall_s": round(wall_s, 3), "generated_tokens": stats["_tokens"],
                "captions_per_s": rate(stats["written"], wall_s, 3),
                "tokens_per_s": rate(stats["_tokens"], wall_s) if stats["written"] else 0.0}

    def summary_line(self, manifest: dict) -> str:
        return summary_line(manifest)


def run_caption(cfg: CaptionConfig) -> dict:
    """Make the captions `cfg.output` is missing, consolidate failures, write the manifest; returns it."""
    return run_stage(CaptionStage(), cfg)


def _slices(table: pa.Table, n: int) -> list[pa.Table]:
    step = -(-table.num_rows // n)
    return [table.slice(i, step) for i in range(0, table.num_rows, step)]


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
