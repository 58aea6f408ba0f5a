"""The transformers backend of `artray caption`: one model per Ray Data actor, batched generation.

Each actor loads the model once — an MLLM (`load_mllm`: generic image-text-to-text classes, chat
template, left padding), or a GIT/BLIP captioner through its family (`artray.stages.caption_captioner`,
unconditional) — and turns batches of work rows — one per (artwork, preset) — into
result rows (`RESULT_SCHEMA`): a caption row with flags and provenance, or a failure.
Images that cannot be used fail alone; a batch whose `generate` raises is retried one row
at a time so that one bad input never costs its neighbours their captions.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass

import pyarrow as pa

from artray import storage
from artray.images import DEFAULT_MAX_PIXELS, ImageError, to_rgb
from artray.schema import CAPTION_SCHEMA
from artray.stages.caption_config import MLLM
from artray.stages.caption_flags import quality_flags
from artray.stages.sink import failed_result, ok_result, result_schema

RESULT_SCHEMA = result_schema(CAPTION_SCHEMA, pa.field("_tokens", pa.int64()))
# What the pipeline feeds the actors: one row per caption to make, pointing at its artwork's shard row.
WORK_SCHEMA = pa.schema([
    pa.field("caption_id", pa.string()), pa.field("artwork_id", pa.string()), pa.field("split", pa.string()),
    pa.field("preset", pa.string()), pa.field("shard", pa.string()), pa.field("row", pa.int64()),
])
PROGRESS_EVERY_S = 30.0


@dataclass(frozen=True)
class CaptionJob:
    """Everything an actor needs, picklable: the model, the prompts and the generation settings."""

    captioner: str
    model: str
    prompts: dict[str, str]  # preset → user prompt text (before the chat template; "" for a captioner)
    generation: dict  # the settings that shape captions (also checked on resume)
    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = 8
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    loop_repeats: int = 3
    s3_endpoint: str | None = None
    torch_threads: int | None = None
    kind: str = MLLM  # or the captioner family of `model` (git-captioner, blip-captioner)


def caption_id(artwork_id: str, captioner: str, preset: str) -> str:
    return f"{artwork_id}|{captioner}|{preset}"


def resolve_dtype(name: str, device: str):
    """'auto' → bf16 (fp16 where bf16 is unsupported) on CUDA, fp32 on CPU."""
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def generate_kwargs(gen: dict, pad_token_id: int | None) -> dict:
    """`generate` keyword arguments for the settings `gen` (greedy unless do_sample)."""
    kw = {"max_new_tokens": gen["max_new_tokens"], "do_sample": gen["do_sample"], "num_beams": gen["num_beams"],
          "repetition_penalty": gen["repetition_penalty"], "pad_token_id": pad_token_id}
    if "length_penalty" in gen:
        kw["length_penalty"] = gen["length_penalty"]
    if gen["do_sample"]:
        kw.update(temperature=gen["temperature"], top_p=gen["top_p"], top_k=gen["top_k"])
    else:  # the checkpoint's generation_config may carry sampling values; greedy ignores them
        kw.update(temperature=None, top_p=None, top_k=None)
    if gen.get("ignore_eos"):  # fixed-length output for throughput runs
        kw["min_new_tokens"] = gen["max_new_tokens"]
    return kw


def eos_ids(bundle) -> set[int]:
    eos = bundle.model.generation_config.eos_token_id
    eos = eos if isinstance(eos, (list, tuple)) else [eos]
    return {int(e) for e in eos if e is not None} | ({bundle.processor.tokenizer.eos_token_id} - {None})


def generate(bundle, images: list, prompts: list[str], kwargs: dict, eos: set[int]) -> list[tuple[str, int, bool]]:
    """(text, generated tokens, hit max_new_tokens) per (image, chat-templated prompt), batched."""
    import torch

    inputs = bundle.processor(images=images, text=prompts, return_tensors="pt", padding=True)
    inputs = {k: v.to(bundle.device, bundle.dtype) if torch.is_floating_point(v) else v.to(bundle.device)
              for k, v in inputs.items()}
    with torch.inference_mode():
        out = bundle.model.generate(**inputs, **kwargs)
    results = []
    for ids in out[:, inputs["input_ids"].shape[1]:].tolist():
        stop = next((i for i, t in enumerate(ids) if t in eos), None)
        kept = ids if stop is None else ids[:stop]
        text = bundle.processor.tokenizer.decode(kept, skip_special_tokens=True).strip()
        results.append((text, len(kept) + (stop is not None), stop is None and len(ids) >= kwargs["max_new_tokens"]))
    return results


class ShardImages:
    """Images of artworks by (corpus shard URI, row); each shard is read once, the last `keep` stay cached.

    Work rows carry no image bytes, so images never pass through the driver or the object store.
    """

    def __init__(self, options: storage.StorageOptions, keep: int = 2):
        self.options, self.keep, self.cache = options, keep, OrderedDict()

    def load(self, row: dict, max_pixels: int):
        """The artwork's image as RGB (raises ImageError / StorageError with the reason)."""
        shard = row["shard"]
        if shard not in self.cache:
            self.cache[shard] = storage.read_parquet(shard, self.options, columns=["artwork_id", "image", "image_uri"])
            while len(self.cache) > self.keep:
                self.cache.popitem(last=False)
        table, i = self.cache[shard], row["row"]
        if i >= table.num_rows or table["artwork_id"][i].as_py() != row["artwork_id"]:
            raise storage.StorageError(f"{shard} changed while the job ran (row {i} is not {row['artwork_id']}); re-run")
        data, uri = table["image"][i].as_py(), table["image_uri"][i].as_py()
        if data is None:
            if not uri:
                raise ImageError("no_image", "the artwork has neither image bytes nor an image_uri; run "
                                 "`artray corpus ingest` on the corpus to download its img_url first")
            data = storage.read_bytes(uri, self.options)
        return to_rgb(data, max_pixels)


def caption_row(job: CaptionJob, row: dict, text: str, flags: list[str], revision: str | None,
                generation_json: str) -> dict:
    return {"caption_id": row["caption_id"], "artwork_id": row["artwork_id"], "split": row["split"],
            "captioner": job.captioner, "preset": row["preset"], "prompt": job.prompts[row["preset"]],
            "text": text, "flags": flags, "model": job.model, "revision": revision, "generation": generation_json}


def failure(job: CaptionJob, row: dict, reason: str, detail: str, retryable: bool, file: str | None = None) -> dict:
    base = caption_row(job, row, "", [], None, "{}")
    return {**failed_result(base, row["caption_id"], reason, detail, file=file, retryable=retryable), "_tokens": 0}


class MLLMGenerator:
    """An MLLM on one actor: (images, preset names) → (text, generated tokens, hit max_new_tokens) each."""

    def __init__(self, job: CaptionJob, dtype, options: storage.StorageOptions):
        from artray.models.mllm import load_mllm

        self.bundle = load_mllm(job.model, job.device, dtype, options)
        self.templated = {p: self.bundle.prompt(t) for p, t in job.prompts.items()}
        self.revision = getattr(self.bundle.model.config, "_commit_hash", None)
        tok = self.bundle.processor.tokenizer
        self.kwargs = generate_kwargs(job.generation, tok.pad_token_id if tok.pad_token_id is not None
                                      else tok.eos_token_id)
        self.eos = eos_ids(self.bundle)

    def __call__(self, images: list, presets: list[str]) -> list[tuple[str, int, bool]]:
        return generate(self.bundle, images, [self.templated[p] for p in presets], self.kwargs, self.eos)


class CaptionBatch:
    """Ray Data actor UDF: load the model once, caption batches of work rows."""

    def __init__(self, job: CaptionJob):
        import torch

        if job.torch_threads:
            torch.set_num_threads(job.torch_threads)
        self.job = job
        self.options = storage.StorageOptions(endpoint_url=job.s3_endpoint)
        self.images = ShardImages(self.options)
        dtype = resolve_dtype(job.dtype, job.device)
        if job.kind == MLLM:
            self.generator = MLLMGenerator(job, dtype, self.options)
        else:
            from artray.stages.caption_captioner import CaptionerGenerator

            self.generator = CaptionerGenerator(job.kind, job.model, job.device, dtype, self.options,
                                                generate_kwargs(job.generation, None))
        self.revision = self.generator.revision
        self.generation_json = json.dumps({**job.generation, "dtype": str(dtype).removeprefix("torch."),
                                           "device": job.device}, sort_keys=True)
        self.done, self.started, self.reported = 0, time.monotonic(), time.monotonic()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(WORK_SCHEMA.names).to_pylist()
        results: list[dict | None] = [None] * len(rows)
        ready = []
        for i, row in enumerate(rows):
            try:
                ready.append((i, self.images.load(row, self.job.max_image_pixels)))
            except ImageError as exc:
                results[i] = failure(self.job, row, exc.reason, exc.detail, False, row["shard"])
            except storage.StorageError as exc:
                results[i] = failure(self.job, row, "image_read_error", str(exc), True, row["shard"])
        for start in range(0, len(ready), self.job.batch_size):
            self._generate_into(ready[start:start + self.job.batch_size], rows, results)
        self._progress(len(rows))
        return pa.Table.from_pylist(results, schema=RESULT_SCHEMA)

    def _generate_into(self, chunk: list, rows: list[dict], results: list) -> None:
        """Caption `chunk` in one `generate`; on an error, one row at a time, failing only the culprit."""
        if self.job.generation["do_sample"]:  # reproducible for the same batch composition
            import torch

            torch.manual_seed(self.job.generation["seed"] + zlib.crc32(rows[chunk[0][0]]["caption_id"].encode()))
        try:
            out = self.generator([im for _, im in chunk], [rows[i]["preset"] for i, _ in chunk])
        except Exception as exc:  # OOM, a processor error on an odd image, ...
            if len(chunk) > 1:
                for one in chunk:
                    self._generate_into([one], rows, results)
                return
            i = chunk[0][0]
            results[i] = failure(self.job, rows[i], "generation_error", f"{type(exc).__name__}: {exc}; re-run to "
                                 "retry (lower batch_size if it is out of memory)", True)
            return
        for (i, _), (text, n_tokens, hit_max) in zip(chunk, out):
            flags = quality_flags(text, hit_max, self.job.loop_repeats, prompt=self.job.prompts[rows[i]["preset"]])
            row = caption_row(self.job, rows[i], text, flags, self.revision, self.generation_json)
            results[i] = {**ok_result(row, rows[i]["caption_id"]), "_tokens": n_tokens}

    def _progress(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.reported >= PROGRESS_EVERY_S:
            self.reported = now
            print(f"[caption] actor pid={os.getpid()}: {self.done} rows, "
                  f"{self.done / (now - self.started):.2f} rows/s", flush=True)
