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
    caption_source: Literal["human", "captioner", "both"] = "human"
    captioner: str | None = Field(None, description="captioner name in the caption table (caption_source≠human)")
    caption_preset: str = Field("caption", description="caption-table preset used for training captions")
    alpha: float = Field(0.0, ge=0.0, le=1.0, description="probability of swapping a sample's image for a variant")
    only_passed_filter: bool = Field(True, description="drop variants whose passed_filter is false")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1,
                                  description="refuse train/val images with more pixels (decompression bombs)")
    # objective
    loss: Literal["longclip", "infonce", "itc_itm", "lm"] = "infonce"
    label_smoothing: float = 0.0
    pca_dim: int = 32
    gather_features: bool = Field(True, description="contrastive loss over all workers' batches (with gradients)")
    reset_logit_scale: bool = False
    context_length: int | None = Field(None, description="text tokens (longclip: from checkpoint; cnclip ≤ 512)")
    max_length: int = Field(35, description="blip: text tokens kept (the cut is logged)")
    freeze_vision: bool = False
    grad_checkpointing: bool = False
    # optimisation
    optimizer: Literal["adamw", "adabelief"] = "adamw"
    lr: float = 5e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: Literal["constant", "cosine", "onecycle"] = "cosine"
    warmup_steps: int = 0
    pct_start: float = 0.1
    epochs: int = 3
    max_steps: int | None = Field(None, description="stop after this many optimizer steps (smoke runs)")
    batch_size: int = Field(8, description="samples per worker per micro-batch")
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    zero_stage: int = Field(2, ge=0, le=3)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    early_stop: bool = Field(False, description="stop at the first epoch whose val loss rises")
    seed: int = 42
    # evaluation, checkpoints, cluster
    select_metric: Literal["val_r1", "val_loss", "cider"] = "val_r1"
    keep_checkpoints: int = 2
    checkpoint_every: int = Field(1, ge=0, description="epochs between checkpoints (the last epoch always gets one); "
                                  "0 = none at all: no resume, no export (benchmarks, smoke runs)")
    num_beams: int = 4
    max_new_tokens: int = 40
    num_workers: int = 2
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per worker (0: CPU training; fractions share a GPU)")
    cpus_per_worker: float = 1.0
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
            raise ValueError("alpha > 0 needs variants: the augment output URI")
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

    @property
    def uses_gpu(self) -> bool:
        """Whether workers train on GPUs (``gpus_per_worker`` > 0); Ray Train's ``use_gpu``."""
        return self.gpus_per_worker > 0
