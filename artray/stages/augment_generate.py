"""The per-batch steps of the augment pipeline, one planned batch (a dataset row) at a time.

* `prepare` (CPU tasks): decode each source image and resize it to the batch's size.
* `Generate` (actor pool): SD img2img on the whole batch at once, one ``torch.Generator``
  per image, prompts cut at 77 tokens or encoded in 75-token chunks (``prompt_encoding``),
  optional CLIP filter; the model is loaded once per actor, with the GPU fast path applied.
* `encode` (CPU tasks): PNG/JPEG bytes of each variant and, optionally, a file for people.
* `GenerateInline`: the three in one actor, for CPU-only runs.

Every item comes out as a result row (`artray.stages.sink`): a variant, or a failure with
its reason. Source problems are keyed by artwork_id (one row per artwork); a batch that
fails to generate yields one retryable failure per variant. Only a bug stops the job.
torch is imported inside `Generate` only, so the CPU task workers start without it.
"""

from __future__ import annotations

import io
import logging
from urllib.parse import quote

import numpy as np
import pyarrow as pa
from PIL import Image

from artray import images as imaging
from artray import storage
from artray.schema import VARIANT_SCHEMA
from artray.stages.augment_plan import BATCH_SCHEMA, PlanError, target_size
from artray.stages.sink import failed_result, ok_result, result_schema

logger = logging.getLogger(__name__)

# diffusers scheduler class per sampler name ("euler_a" is AUTOMATIC1111's "Euler a", method (A)'s sampler).
SAMPLERS = {
    "euler_a": "EulerAncestralDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
    "pndm": "PNDMScheduler",
}
RESULT_SCHEMA = result_schema(pa.schema([f.with_nullable(True) for f in VARIANT_SCHEMA]),
                              pa.field("_pixels", pa.binary()))  # raw RGB between generate and encode
PREPARED_SCHEMA = pa.schema([f for f in BATCH_SCHEMA if f.name != "src_images"] + [
    pa.field("src_pixels", pa.list_(pa.binary())),  # raw RGB at (width, height), null when it failed
    pa.field("src_reasons", pa.list_(pa.string())),
    pa.field("src_details", pa.list_(pa.string())),
    pa.field("src_retryable", pa.list_(pa.bool_())),
])


def _prepare_one(data: bytes | None, uri: str | None, size: tuple[int, int], long_side: int, max_pixels: int,
                 options: storage.StorageOptions) -> bytes:
    if data is None:
        data = storage.read_bytes(uri, options)
    im = imaging.to_rgb(data, max_pixels)
    if target_size(*im.size, long_side) != size:
        raise imaging.ImageError("size_mismatch", f"the corpus records another size than the image's {im.size[0]}x"
                                 f"{im.size[1]}; re-import or re-ingest the corpus")
    return im.resize(size, Image.Resampling.LANCZOS).tobytes()


def prepare(batch: pa.Table, long_side: int, max_image_pixels: int, options: storage.StorageOptions) -> pa.Table:
    """Decode + resize the sources of each planned batch; a bad source becomes a reason, not an error."""
    rows = batch.to_pylist()
    for r in rows:
        size = (r["width"], r["height"])
        r["src_pixels"], r["src_reasons"], r["src_details"], r["src_retryable"] = [], [], [], []
        for data, uri in zip(r.pop("src_images"), r["src_uris"]):
            pixels, reason, detail, retryable = None, None, None, False
            try:
                pixels = _prepare_one(data, uri, size, long_side, max_image_pixels, options)
            except imaging.ImageError as exc:
                reason, detail = exc.reason, f"{exc.detail}; replace the image in the corpus"
            except storage.StorageError as exc:
                reason, detail, retryable = "unreadable_image", f"{exc}; fix image_uri or re-run ingest", True
            for col, val in (("src_pixels", pixels), ("src_reasons", reason), ("src_details", detail),
                             ("src_retryable", retryable)):
                r[col].append(val)
    return pa.Table.from_pylist(rows, schema=PREPARED_SCHEMA)


class Generate:
    """Ray Data actor: SD img2img for planned batches; one result row per emitted item."""

    def __init__(self, model: str, options: storage.StorageOptions, use_gpu: bool, dtype: str, sampler: str,
                 strength: float, guidance: float, steps: int, filter_model: str | None, filter_threshold: float,
                 threads: int | None, prompt_encoding: str = "truncate", negative_prompt: str = "",
                 fast_path: dict | None = None, fail_after_batches: int | None = None):
        import diffusers
        import torch
        import transformers

        from artray.models.diffusion import apply_fast_path, load_img2img

        diffusers.utils.logging.disable_progress_bar()  # one bar per actor load is noise in a job log
        transformers.utils.logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        self.device = "cuda" if use_gpu else "cpu"
        self.bundle = load_img2img(model, self.device, getattr(torch, dtype), options)
        self.pipe = self.bundle.pipeline
        if sampler != "euler_a":
            self.pipe.scheduler = getattr(diffusers, SAMPLERS[sampler]).from_config(self.pipe.scheduler.config)
        apply_fast_path(self.pipe, **(fast_path or {}))
        self.chunked, self.negative = prompt_encoding == "chunked", negative_prompt
        # Truncated prompts are cut at 77 tokens on purpose (counted in prompt_truncated); no warning per batch.
        logging.getLogger("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img").setLevel(logging.ERROR)
        self.scorer = None
        if filter_model:
            from artray.stages.augment_filter import ClipImageScorer

            self.scorer = ClipImageScorer(filter_model, self.device, options)
        self.fixed = {"model": model, "strength": strength, "guidance": guidance, "steps": steps, "sampler": sampler,
                      "split": "train"}
        self.threshold, self.fail_after, self.calls = filter_threshold, fail_after_batches, 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError(f"fail_after_batches={self.fail_after} reached: simulated crash (testing only)")
        self.calls += 1
        out = [res for row in batch.to_pylist() for res in self._batch(row)]
        return pa.Table.from_pylist(out, schema=RESULT_SCHEMA)

    def _batch(self, b: dict) -> list[dict]:
        if set(b["src_splits"]) - {"train"}:
            raise PlanError(f"batch {b['batch_id']} holds non-train artworks; val/test must never be augmented")
        src = {sid: i for i, sid in enumerate(b["src_ids"])}
        results, reported, todo = [], set(), []
        for k, parent in enumerate(b["parents"]):
            i = src[parent]
            if b["src_pixels"][i] is not None:
                todo.append(k)
            elif b["emit"][k] and parent not in reported:
                reported.add(parent)
                results.append(failed_result({}, parent, b["src_reasons"][i], b["src_details"][i],
                                             file=b["src_uris"][i], retryable=b["src_retryable"][i]))
        if not todo:
            return results
        size = (b["width"], b["height"])
        used = sorted({src[b["parents"][k]] for k in todo})
        sources = {i: Image.frombytes("RGB", size, b["src_pixels"][i]) for i in used}
        prompts = [b["prompts"][k] for k in todo]
        try:
            pixels = self._generate(prompts, [sources[src[b["parents"][k]]] for k in todo], [b["seeds"][k] for k in todo])
            sims = None
            if self.scorer is not None:
                variants = [Image.fromarray(p) for p in pixels]
                sims = self.scorer.similarity(variants, [sources[i] for i in used],
                                              [used.index(src[b["parents"][k]]) for k in todo])
        except Exception as exc:  # noqa: BLE001 - OOM or a broken input: fail these variants, keep the job going
            if self.device == "cuda":
                import torch

                torch.cuda.empty_cache()
            detail = (f"{type(exc).__name__}: {exc}; the batch is retried on the next run (lower batch_size or "
                      "long_side if it is out of memory)")
            return results + [failed_result({}, b["variant_ids"][k], "generation_error", detail, retryable=True)
                              for k in todo if b["emit"][k]]
        tokens = self.pipe.tokenizer(prompts, truncation=False).input_ids
        limit = self.pipe.tokenizer.model_max_length if not self.chunked else float("inf")  # chunked: nothing is cut
        for j, k in enumerate(todo):
            if not b["emit"][k]:
                continue
            sim = None if sims is None else sims[j]
            row = {**self.fixed, "variant_id": b["variant_ids"][k], "parent_id": b["parents"][k],
                   "variant": b["variants"][k], "seed": b["seeds"][k], "prompt": prompts[j],
                   "prompt_truncated": len(tokens[j]) > limit, "width": size[0], "height": size[1],
                   "_pixels": pixels[j].tobytes(), "similarity": sim,
                   "passed_filter": None if sim is None else sim >= self.threshold}
            results.append(ok_result(row, b["variant_ids"][k]))
        return results

    def _generate(self, prompts: list[str], inits: list[Image.Image], seeds: list[int]) -> np.ndarray:
        """uint8 (N, H, W, 3) images; CPU generators so a seed means the same noise on every device."""
        import torch

        from artray.models.diffusion import chunked_prompt_embeds

        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        if self.chunked:
            embeds, negative = chunked_prompt_embeds(self.pipe, prompts, self.negative)
            text = {"prompt_embeds": embeds, "negative_prompt_embeds": negative}
        else:
            text = {"prompt": prompts, "negative_prompt": [self.negative] * len(prompts) if self.negative else None}
        with torch.inference_mode():
            out = self.pipe(**text, image=inits, strength=self.fixed["strength"],
                            guidance_scale=self.fixed["guidance"], num_inference_steps=self.fixed["steps"],
                            generator=generators, output_type="np").images
        return (out * 255).round().clip(0, 255).astype(np.uint8)  # diffusers' own numpy_to_pil rounding


class GenerateInline(Generate):
    """`prepare` → `Generate` → `encode` in one actor, for CPU-only runs: with no GPU to keep busy there
    is nothing to overlap, and on a small machine each extra Ray Data operator costs scheduler time on
    the cores the generator needs."""

    def __init__(self, prepare_kwargs: dict, encode_kwargs: dict, **generate_kwargs):
        super().__init__(**generate_kwargs)
        self.prepare_kwargs, self.encode_kwargs = prepare_kwargs, encode_kwargs

    def __call__(self, batch: pa.Table) -> pa.Table:
        return encode(super().__call__(prepare(batch, **self.prepare_kwargs)), **self.encode_kwargs)


def encode_image(pixels: bytes, size: tuple[int, int], fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    im = Image.frombytes("RGB", size, pixels)
    if fmt == "png":
        im.save(buf, format="PNG")
    else:
        im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def export_name(parent_id: str, variant: int, fmt: str) -> str:
    """File name of an exported variant: the artwork id (URL-quoted) and the variant index."""
    return f"{quote(parent_id, safe='')}_v{variant:03d}.{'png' if fmt == 'png' else 'jpg'}"


def encode(batch: pa.Table, fmt: str, quality: int, export_uri: str | None, options: storage.StorageOptions) -> pa.Table:
    """Encode each variant's pixels; also write it under `export_uri` when set (a failed export is logged
    and redone at the end of the run, it never loses the variant)."""
    rows = batch.to_pylist()
    for r in rows:
        pixels, r["_pixels"] = r["_pixels"], None
        if not r["_ok"]:
            continue
        r["image"] = encode_image(pixels, (r["width"], r["height"]), fmt, quality)
        if export_uri:
            try:
                uri = storage.join(export_uri, export_name(r["parent_id"], r["variant"], fmt))
                storage.write_bytes_atomic(uri, r["image"], options)
            except storage.StorageError as exc:
                logger.warning("could not export %s: %s", r["variant_id"], exc)
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
