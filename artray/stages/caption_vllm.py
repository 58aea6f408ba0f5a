"""The optional vLLM backend of `artray caption`, through `ray.data.llm` (GPU clusters with vllm installed).

Same presets, chat template (the model's own, applied by Ray's chat-template stage),
generation settings and result rows as the transformers backend; vLLM batches
continuously inside each engine actor. Images are checked first with the same decoder as
the transformers backend; the unusable ones become failure rows and bypass the engine.
NOT exercised by artray's tests (no vllm and no GPU there): the transformers backend is
the default and the tested one.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json

import pyarrow as pa

from artray import storage
from artray.images import ImageError
from artray.stages.caption_flags import quality_flags
from artray.stages.caption_generate import (
    RESULT_SCHEMA,
    WORK_SCHEMA,
    CaptionJob,
    ShardImages,
    caption_row,
    failure,
)
from artray.stages.sink import ok_result


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _checked(batch: pa.Table, job: CaptionJob) -> pa.Table:
    """Work rows + `_image_url` (a PNG data URL) or `_failure` (a JSON result row) per row."""
    images = ShardImages(storage.StorageOptions(endpoint_url=job.s3_endpoint))
    out = []
    for row in batch.select(WORK_SCHEMA.names).to_pylist():
        url = bad = None
        try:
            buf = io.BytesIO()
            images.load(row, job.max_image_pixels).save(buf, "PNG")
            url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        except ImageError as exc:
            bad = failure(job, row, exc.reason, exc.detail, False, row["shard"])
        except storage.StorageError as exc:
            bad = failure(job, row, "image_read_error", str(exc), True, row["shard"])
        out.append({**{k: row[k] for k in ("caption_id", "artwork_id", "split", "preset")}, "_image_url": url,
                    "_failure": None if bad is None else json.dumps(bad)})
    return pa.Table.from_pylist(out)


def _failures_only(batch: pa.Table) -> pa.Table:
    return pa.Table.from_pylist([json.loads(f) for f in batch["_failure"].to_pylist()], schema=RESULT_SCHEMA)


def vllm_captions(ds, job: CaptionJob, engine_kwargs: dict, actors: int, io_cpus: float):
    """Work rows → result rows (RESULT_SCHEMA) from vLLM engine actors, one per GPU slot."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from artray.models.weights import pickle_allowed

    gen = job.generation
    sampling = {"max_tokens": gen["max_new_tokens"], "repetition_penalty": gen["repetition_penalty"],
                "ignore_eos": bool(gen.get("ignore_eos")), "n": 1}
    if gen["do_sample"]:
        sampling.update(temperature=gen["temperature"], top_p=gen["top_p"], top_k=gen["top_k"] or -1, seed=gen["seed"])
    else:  # greedy
        sampling["temperature"] = 0.0
    dtype = job.dtype  # vLLM's names are torch's ("auto": the checkpoint's dtype)
    generation_json = json.dumps({**gen, "dtype": dtype, "device": "cuda"}, sort_keys=True)
    config = vLLMEngineProcessorConfig(
        model_source=job.model,  # hub id, path on every node, or s3:// (Ray's own model downloader)
        # safetensors only unless the user opted in to pickle checkpoints (artray.models.weights)
        engine_kwargs={"dtype": dtype, "limit_mm_per_prompt": {"image": 1},
                       **({} if pickle_allowed() else {"load_format": "safetensors"}), **engine_kwargs},
        batch_size=job.batch_size, concurrency=actors, prepare_multimodal_stage={"enabled": True},
        should_continue_on_error=True,
    )

    def preprocess(row: dict) -> dict:
        content = [{"type": "image_url", "image_url": {"url": row["_image_url"]}},
                   {"type": "text", "text": job.prompts[row["preset"]]}]
        return {**row, "messages": [{"role": "user", "content": content}], "sampling_params": sampling}

    def postprocess(row: dict) -> dict:
        work = {k: row[k] for k in ("caption_id", "artwork_id", "split", "preset")}
        if row.get("__inference_error__"):
            return failure(job, work, "generation_error", f"vLLM: {row['__inference_error__']}; re-run to retry", True)
        text, n = row["generated_text"].strip(), int(row["num_generated_tokens"])
        flags = quality_flags(text, n >= gen["max_new_tokens"], job.loop_repeats, prompt=job.prompts[row["preset"]])
        return {**ok_result(caption_row(job, work, text, flags, None, generation_json), work["caption_id"]),
                "_tokens": n}

    # Ray Data does not share a branch point: the cheap image check runs once per branch.
    checked = ds.map_batches(_checked, fn_kwargs={"job": job}, batch_format="pyarrow", num_cpus=io_cpus)
    good = checked.filter(lambda r: r["_failure"] is None)
    bad = checked.filter(lambda r: r["_failure"] is not None).map_batches(_failures_only, batch_format="pyarrow",
                                                                          num_cpus=io_cpus)
    captions = build_processor(config, preprocess=preprocess, postprocess=postprocess)(good)
    return captions.union(bad)
