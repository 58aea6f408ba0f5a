"""`TrainConfig`: one typed config for `artray train`; the published recipes are named presets.

Precedence (lowest first): field defaults → the named ``preset`` → the YAML file → ``--set``
→ CLI flags. A preset only fills keys the user did not give, so ``preset: infonce`` plus
``lr: 1e-5`` trains the SIGIR recipe at another learning rate. Presets belong to their model
family (``artray.families.<name>.presets``; every trainable family's are offered here), and
``family`` is any registered family with a trainer.
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal

from pydantic import Field, model_validator

from artray import families
from artray.config import JobConfig
from artray.families import TrainFamily
from artray.images import DEFAULT_MAX_PIXELS

log = logging.getLogger("artray.train")


def _preset_names() -> str:
    return ", ".join(sorted(families.presets()))


class TrainConfig(JobConfig):
    """Everything one fine-tuning run needs; fields are the YAML keys and the CLI flags."""

    preset: str | None = Field(None, description="named recipe filling unset keys (each trainable family's "
                               "presets)", json_schema_extra={"choices": "families:presets"})
    family: TrainFamily = Field("longclip", description="model family (decides objective, collation and export)")
    model: str = Field(..., description="checkpoint: hub id, local folder/file or s3:// URI")
    stretch: bool = Field(False, description="longclip: stretch a 77-token CLIP to 248 positions (KPS)")
    corpus: str = Field(..., description="corpus URI (artworks/ + texts/ tables)")
    output: str = Field(..., description="storage_path for checkpoints and the export (local or s3://)")
    name: str = Field("train", description="run name: the folder under output; same name = resume")
    # data mixing
    variants: str | None = Field(None, description="augment output URI (<uri>/variants/) for alpha mixing")
    captions: str | None = Field(None, description="caption output URI (<uri>/captions/) for generated captions")
    caption_source: Literal["human", "captioner", "both"] = Field("human",
        description="training captions: human (the corpus's), captioner (from `captions`), or both (one drawn per sample)")
    captioner: str | None = Field(None, description="captioner name in the caption table (caption_source≠human)")
    caption_preset: str = Field("caption", description="caption-table preset used for training captions")
    alpha: float = Field(0.0, ge=0.0, le=1.0, description="probability of swapping a sample's image for a variant")
    only_passed_filter: bool = Field(True, description="drop variants whose passed_filter is false")
    auto_augment: bool = Field(False, description="torchvision AutoAugment (ImageNet policy) on train images, "
                               "seeded per sample (the ICCV captioner recipe; never on val/test)")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1,
                                  description="refuse train/val images with more pixels (decompression bombs)")
    # objective
    loss: Literal["longclip", "infonce", "itc_itm", "lm"] = Field("infonce",
        description="objective: longclip (PCM, Long-CLIP), infonce (symmetric InfoNCE), itc_itm (BLIP), lm (captioners)")
    label_smoothing: float = Field(0.0,
        description="label smoothing of the contrastive cross-entropy (Long-CLIP uses 0.1)")
    pca_dim: int = Field(32,
        description="longclip loss: components kept for the short-caption match (PCA of the image features)")
    gather_features: bool = Field(True, description="contrastive loss over all workers' batches (with gradients)")
    reset_logit_scale: bool = Field(False,
        description="set the logit scale to ln(100) before training (Long-CLIP's recipe)")
    context_length: int | None = Field(None, description="text tokens (longclip: from checkpoint; cnclip ≤ 512)")
    max_length: int = Field(35, description="blip: text tokens kept (the cut is logged)")
    freeze_vision: bool = Field(False, description="train the text tower only (the image tower's weights stay)")
    grad_checkpointing: bool = Field(False, description="recompute activations in backward: less memory, more compute")
    # optimisation
    optimizer: Literal["adamw", "adabelief"] = Field("adamw",
        description="adamw, or adabelief (the SIGIR work's Long-CLIP optimizer)")
    lr: float = Field(5e-5, description="peak learning rate")
    weight_decay: float = Field(0.0, description="decoupled weight decay (AdamW; AdaBelief as its recipe sets it)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="optimizer betas [beta1, beta2]")
    eps: float = Field(1e-8, description="optimizer epsilon")
    schedule: Literal["constant", "cosine", "onecycle"] = Field("cosine",
        description="learning-rate schedule after warm-up: constant, cosine (to 0), onecycle (pct_start warm-up, linear)")
    warmup_steps: int = Field(0, description="optimizer steps of linear warm-up from 0 (constant and cosine schedules)")
    pct_start: float = Field(0.1, description="onecycle: share of the steps spent warming up")
    epochs: int = Field(3, description="passes over the train split")
    max_steps: int | None = Field(None, description="stop after this many optimizer steps (smoke runs)")
    batch_size: int = Field(8, description="samples per worker per micro-batch")
    grad_accum: int = Field(1, description="micro-batches per optimizer step")
    grad_clip: float | None = Field(1.0, description="clip the gradient norm to this (null: no clipping)")
    strategy: Literal["auto", "ddp", "deepspeed"] = Field("auto",
        description="data parallelism: ddp (torch DDP: fused AdamW, bf16 autocast), deepspeed (ZeRO), or auto: ddp "
                    "for models under 1B parameters unless zero_stage or fp16 is set (then deepspeed)")
    zero_stage: int = Field(2, ge=0, le=3,
                            description="DeepSpeed ZeRO stage (0: plain data parallel; 2: optimizer + gradient sharding; "
                                        "3: + parameters); setting it picks deepspeed under strategy auto")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32",
        description="training precision: fp32, bf16 or fp16 (ddp: bf16 autocast over fp32 weights; deepspeed: "
                    "weights in that type; fp16 only with deepspeed)")
    compile: bool = Field(False, description="ddp on CUDA: torch.compile the model (a no-op with a message on CPU)")
    prefetch_batches: int | None = Field(None, ge=0, le=8,
        description="batches prepared ahead of the training step in Ray Data's collate threads (in order); null: 2 "
                    "on GPU workers, 0 on CPU workers (prepared in the training thread: torch's threads use the "
                    "worker's CPUs already)")
    log_every: int = Field(0, ge=0, description="print the running train loss every N optimizer steps (each print "
                           "reads the loss back from the device; 0: once per epoch)")
    early_stop: bool = Field(False, description="stop at the first epoch whose val loss rises")
    seed: int = Field(42, description="seed of initialisation, shuffling and alpha mixing")
    # evaluation, checkpoints, cluster
    select_metric: Literal["val_r1", "val_loss", "cider"] = Field("val_r1",
        description="metric that picks the best checkpoint to export (val_loss: lowest; others: highest)")
    keep_checkpoints: int = Field(2,
        description="checkpoints kept in the run folder (the best by select_metric among them)")
    checkpoint_every: int = Field(1, ge=0, description="epochs between checkpoints (the last epoch always gets one); "
                                  "0 = none at all: no resume, no export (benchmarks, smoke runs)")
    num_beams: int = Field(4, description="captioners: beams of the validation captions (CIDEr selection)")
    max_new_tokens: int = Field(40, description="captioners: longest validation caption in tokens")
    length_penalty: float = Field(1.0, description="captioners: beam-search length penalty of the validation "
                                  "captions (seed A: 0.6)")
    num_workers: int = Field(2, description="Ray Train workers (one per GPU on a GPU cluster)")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per worker (0: CPU training; fractions share a GPU)")
    cpus_per_worker: float = Field(1.0, description="CPUs reserved per Ray Train worker")
    timeout_s: int = Field(600, description="collective timeout: a dead rank fails the run after this")
    max_failures: int = Field(1, description="worker-group restarts from the latest checkpoint")
    fail_at_step: int | None = Field(None, description="test hook: rank 0 raises once at this step",
                                     json_schema_extra={"hidden": True})
    export: bool = Field(True, description="write consolidated fp32 weights of the best checkpoint")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and "use_gpu" in data:  # deprecated: a bool before gpus_per_worker
            data = dict(data)
            use_gpu = data.pop("use_gpu")
            warnings.warn("TrainConfig: use_gpu is deprecated, set gpus_per_worker (0 = CPU, 1 = one GPU per "
                          "worker)", DeprecationWarning, stacklevel=2)
            log.warning("train config: use_gpu is deprecated; use gpus_per_worker (0 = CPU, 1 = one GPU per worker)")
            data.setdefault("gpus_per_worker", 1 if use_gpu else 0)
        if isinstance(data, dict) and data.get("preset") is not None:
            name, table = data["preset"], families.presets()
            if name not in table:
                raise ValueError(f"unknown preset {name!r}: use one of {_preset_names()}")
            data = {**table[name], **data}
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.caption_source != "human" and not (self.captions and self.captioner):
            raise ValueError(f"caption_source={self.caption_source} needs captions (caption output URI) "
                             "and captioner (its name in that table)")
        if self.alpha > 0 and not self.variants:
            raise ValueError("alpha > 0 needs variants: the augment output URI (alpha: 0 trains on the real "
                             "images only)")
        if self.strategy == "ddp" and self.precision == "fp16":
            raise ValueError("precision fp16 needs strategy: deepspeed (its loss scaling); with ddp use bf16 "
                             "(or fp32)")
        if self.checkpoint_every == 0 and self.export:
            raise ValueError("checkpoint_every: 0 writes no checkpoint, so there is nothing to export: "
                             "set export: false, or checkpoint_every: 1")
        check = getattr(families.get(self.family), "check_train_config", None)  # optional family hook
        if check is not None:
            check(self)
        return self

    @property
    def is_retrieval(self) -> bool:
        return families.get(self.family).kind == "retrieval"

    def requested_strategy(self) -> str:
        """`strategy`, with what the config itself decides under auto: a ZeRO stage named in it (or in its
        preset) or fp16 mean deepspeed; otherwise still "auto" (the worker decides by model size)."""
        if self.strategy != "auto":
            return self.strategy
        if "zero_stage" in self.model_fields_set or self.precision == "fp16":
            return "deepspeed"
        return "auto"

    @property
    def uses_gpu(self) -> bool:
        """Whether workers train on GPUs (``gpus_per_worker`` > 0); Ray Train's ``use_gpu``."""
        return self.gpus_per_worker > 0
