"""The config of `artray caption`: prompt presets, generation settings (and named decoding recipes), and
the resume guard on them.

A captioner name (default: the model's last path part) labels every row a run makes.
`_caption_params.json` in the output records per captioner the model, its kind (an MLLM, or a
``git-captioner`` / ``blip-captioner`` checkpoint), prompts and generation settings, so a later run
cannot add rows made differently under the same name.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import Field, model_validator

from artray import storage
from artray.config import SplitList
from artray.images import DEFAULT_MAX_PIXELS
from artray.outputs import params_file
from artray.stages.config import ModelStageConfig
from artray.stages.run import StageError

PARAMS = params_file("caption")  # per captioner: model, prompts, generation settings
PRESETS = {
    "caption": "Caption this image",  # method (B), LLaVA-1.5
    "query": "Generate a query for this image, suitable for text-to-image retrieval",  # method (B), query generator
}
MLLM = "mllm"  # the model kind of a multimodal LLM (prompted); captioner checkpoints are their family's name
# Decoding recipes of the source works (`generation_preset`); each fills only the keys a config leaves unset.
GENERATION_PRESETS: dict[str, dict] = {
    # Cioni et al., ICCV-W 2023 (ciodar/cultural-heritage-diffaug, configs/artpedia.yaml / artcap.yaml):
    # GIT/BLIP captioners decode with 4 beams, length_penalty 0.6, 100 new tokens (Artpedia) or 40 (ArtCap).
    "cioni2023-artpedia": {"num_beams": 4, "length_penalty": 0.6, "max_new_tokens": 100, "do_sample": False},
    "cioni2023-artcap": {"num_beams": 4, "length_penalty": 0.6, "max_new_tokens": 40, "do_sample": False},
    # SIGIR 2025 (jcgohr/artwork-caption-gen, LlavaCaptioner): greedy, 200 new tokens.
    "sigir2025": {"num_beams": 1, "max_new_tokens": 200, "do_sample": False},
}


class CaptionError(StageError):
    """The caption job cannot start or finish; the message says what to fix."""


class CaptionConfig(ModelStageConfig):
    """Makes captions and search queries for a corpus's artworks with a multimodal LLM (method (B)), or
    captions with a GIT / BLIP captioner checkpoint (method (A); unconditional, preset ``caption`` only)."""

    input: str = Field(description="corpus URI with images (written by `artray corpus import` or `ingest`)")
    output: str = Field(description="captions URI to write; running again resumes it")
    model: str = Field("llava-hf/llava-1.5-7b-hf", description="MLLM, or a GIT/BLIP captioner (an `artray train` "
                       "export or any such checkpoint; detected): hub id, local folder or s3:// folder")
    captioner: str | None = Field(None, description="name stored in each row (default: last part of model; for "
                                  "an `artray train` export <output>/<name>/export, the run name)")
    presets: list[str] | None = Field(None, description="presets to run: caption, query or names in prompts "
                                      "(default: caption + every user prompt)")
    prompts: dict[str, str] = Field(default_factory=dict, description="user-defined presets: name → prompt text")
    splits: SplitList = Field(None, description="only caption these splits (default: all)")
    max_new_tokens: int = Field(200, ge=1, description="longest generated text in tokens (the SIGIR work: 200)")
    do_sample: bool = Field(False, description="sample instead of greedy decoding")
    temperature: float = Field(1.0, gt=0, description="sampling only")
    top_p: float = Field(1.0, gt=0, le=1, description="sampling only")
    top_k: int | None = Field(None, ge=1, description="sampling only")
    num_beams: int = Field(1, ge=1, description="beams of beam search (1: greedy, as the SIGIR work)")
    length_penalty: float = Field(1.0, description="beam search: exponent of the length normalisation of a beam's "
                                  "score (<1 favours shorter captions; the ICCV work: 0.6)")
    generation_preset: Literal["cioni2023-artpedia", "cioni2023-artcap", "sigir2025"] | None = Field(
        None, description="decoding recipe filling the generation keys you leave unset: cioni2023-artpedia (4 beams, "
        "length_penalty 0.6, 100 tokens), cioni2023-artcap (the same, 40 tokens), sigir2025 (greedy, 200 tokens)")
    repetition_penalty: float = Field(1.0, gt=0, description="penalty on repeated tokens (1.0: none)")
    seed: int = Field(0, description="sampling seed (per batch)")
    ignore_eos: bool = Field(False, description="always generate max_new_tokens (throughput benchmarks)")
    backend: Literal["transformers", "vllm"] = Field("transformers", description="vllm: ray.data.llm, GPU only")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when the cluster has GPUs")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field("auto", description="auto: bf16/fp16 on CUDA, fp32 on CPU")
    batch_size: int = Field(8, ge=1, description="prompts per generate call")
    torch_threads: int | None = Field(None, ge=1, description="torch threads per CPU actor (default: cpus_per_actor)")
    shard_rows: int = Field(500, ge=1, description="rows per committed Parquet shard at most")
    retry_failed: bool = Field(False, description="also re-attempt permanent failures (missing/undecodable images)")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="refuse images with more pixels")
    loop_repeats: int = Field(3, ge=2, description="repeats of a phrase or sentence that flag a loop")
    vllm_engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="vllm backend: engine kwargs")

    @model_validator(mode="before")
    @classmethod
    def _apply_generation_preset(cls, data):
        """A named decoding recipe fills the keys the config does not set (like TrainConfig.preset)."""
        if isinstance(data, dict) and data.get("generation_preset") is not None:
            name = data["generation_preset"]
            if name not in GENERATION_PRESETS:
                raise ValueError(f"unknown generation_preset {name!r}: use one of {', '.join(GENERATION_PRESETS)}")
            data = {**GENERATION_PRESETS[name], **data}
        return data

    @model_validator(mode="after")
    def _check_names(self):
        if clash := sorted(set(self.prompts) & set(PRESETS)):
            raise ValueError(f"prompts {clash} reuse built-in preset names; pick other names")
        names = [*self.prompt_texts(), self.captioner or ""]
        if any("|" in n for n in names):
            raise ValueError("captioner and preset names may not contain '|' (it separates caption_id parts)")
        return self

    def prompt_texts(self) -> dict[str, str]:
        """preset name → prompt text, for the presets this run makes."""
        names = self.presets if self.presets is not None else ["caption", *self.prompts]
        known = {**PRESETS, **self.prompts}
        if unknown := [n for n in names if n not in known]:
            raise ValueError(f"unknown presets {unknown}: use {sorted(PRESETS)} or define them under prompts")
        if not names:
            raise ValueError("presets is empty: name at least one")
        return {n: known[n] for n in dict.fromkeys(names)}

    def captioner_name(self) -> str:
        """`captioner`, else the model's last path part (an `artray train` export folder: its run's name)."""
        path = PurePosixPath(self.model.rstrip("/"))
        return self.captioner or (path.parent.name if path.name == "export" and path.parent.name else path.name)

    def generation(self) -> dict:
        """The settings that shape the captions (recorded in every row, checked on resume)."""
        gen = {"backend": self.backend, "max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
               "num_beams": self.num_beams, "repetition_penalty": self.repetition_penalty, "ignore_eos": self.ignore_eos}
        if self.num_beams > 1 or self.length_penalty != 1.0:  # it only shapes beam search
            gen["length_penalty"] = self.length_penalty
        if self.do_sample:
            gen.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed)
        return gen


def check_params(cfg: CaptionConfig, captioner: str, prompts: dict, generation: dict,
                  opts: storage.StorageOptions, kind: str = MLLM) -> None:
    """Refuse to add rows under `captioner` that another model (or model kind), prompt or setting made before."""
    uri = storage.join(cfg.output, PARAMS)
    params = storage.read_json(uri, opts) or {}
    old = params.get(captioner)
    if old:
        problems = [f"model {old['model']!r} → {cfg.model!r}"] if old["model"] != cfg.model else []
        if old.get("kind", MLLM) != kind:  # outputs written before kinds were recorded hold MLLM captions
            problems.append(f"model kind {old.get('kind', MLLM)!r} → {kind!r}")
        if old["generation"] != generation:
            problems.append(f"generation {old['generation']} → {generation}")
        problems += [f"preset {p!r} prompt {old['prompts'][p]!r} → {t!r}" for p, t in prompts.items()
                     if old["prompts"].get(p, t) != t]
        if problems:
            raise CaptionError(
                f"{cfg.output} already holds captions of captioner {captioner!r} made differently ("
                + "; ".join(problems) + "); committed rows would mix both. Set another `captioner` name, "
                "use a new output, or restore the old settings")
        prompts = {**old["prompts"], **prompts}
    entry = {"model": cfg.model, "kind": kind, "generation": generation, "prompts": prompts}
    if old != entry:
        storage.write_json_atomic(uri, {**params, captioner: entry}, opts)


