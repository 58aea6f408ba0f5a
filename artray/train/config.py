"""`TrainConfig`: one typed config for `artray train`, and the published recipes as named presets.

Precedence (lowest first): field defaults → the named ``preset`` → the YAML file → ``--set``
→ CLI flags. A preset only fills keys the user did not give, so ``preset: infonce`` plus
``lr: 1e-5`` trains the SIGIR recipe at another learning rate.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from artray.config import JobConfig
from artray.images import DEFAULT_MAX_PIXELS

Family = Literal["longclip", "cnclip", "blip-retrieval", "git-captioner", "blip-captioner"]

# Every recipe in REFERENCE.md, by name. Values are field → value; `family` is the family it is for.
PRESETS: dict[str, dict] = {
    # Long-CLIP's own fine-tuning (beichenzbc/Long-CLIP train.md): PCM loss, AdamW 1e-6, wd 1e-2,
    # 200 warm-up iterations then cosine, 6 epochs, logit scale reset to ln(100).
    "longclip": {"family": "longclip", "loss": "longclip", "label_smoothing": 0.1, "pca_dim": 32, "optimizer": "adamw",
                     "lr": 1e-6, "weight_decay": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "schedule": "cosine",
                     "warmup_steps": 200, "epochs": 6, "reset_logit_scale": True, "select_metric": "val_r1"},
    # SIGIR 2025 (jcgohr/artwork-caption-gen finetuner.py): plain symmetric InfoNCE, AdaBelief 5e-7,
    # eps 1e-16, betas (0.9, 0.995), wd 1e-3, one-cycle (10 % warm-up, linear), early stop on rising val loss.
    "infonce": {"family": "longclip", "loss": "infonce", "label_smoothing": 0.0, "optimizer": "adabelief", "lr": 5e-7,
                    "weight_decay": 1e-3, "betas": (0.9, 0.995), "eps": 1e-16, "schedule": "onecycle", "pct_start": 0.1,
                    "epochs": 6, "batch_size": 40, "early_stop": True, "select_metric": "val_r1"},
    # Chinese-CLIP fine-tuning scripts (OFA-Sys run_scripts/*_finetune_*.sh): lr 5e-5, wd 0.001,
    # warmup 100, 3 epochs, contrastive; context 52 there, longer allowed here.
    "cnclip": {"family": "cnclip", "loss": "infonce", "optimizer": "adamw", "lr": 5e-5, "weight_decay": 1e-3,
                   "schedule": "cosine", "warmup_steps": 100, "epochs": 3, "context_length": 52, "select_metric": "val_r1"},
    # SIGIR 2025's BLIP fine-tuning (jcgohr/BLIP configs/artpedia_*): ITC + ITM with hard negatives,
    # AdamW 5e-6, wd 0.05, cosine to 0, 6 epochs, batch 16/GPU, text cut to 35 tokens.
    "blip": {"family": "blip-retrieval", "loss": "itc_itm", "optimizer": "adamw", "lr": 5e-6, "weight_decay": 0.05,
                 "schedule": "cosine", "warmup_steps": 0, "epochs": 6, "batch_size": 16, "max_length": 35, "select_metric": "val_r1"},
    # ICCV 2023 workshop (ciodar/cultural-heritage-diffaug): LM loss, AdamW 5e-5, wd 0, cosine with
    # 500 warm-up steps, batch 8, 10 epochs, beams 4, keep the best CIDEr. Set family to git- or blip-captioner.
    "captioner": {"family": "git-captioner", "loss": "lm", "optimizer": "adamw", "lr": 5e-5, "weight_decay": 0.0,
                      "schedule": "cosine", "warmup_steps": 500, "epochs": 10, "batch_size": 8, "num_beams": 4,
                      "max_new_tokens": 100, "select_metric": "cider"},
}


class TrainConfig(JobConfig):
    """Everything one fine-tuning run needs; fields are the YAML keys and the CLI flags."""

    preset: str | None = Field(None, description=f"named recipe filling unset keys: {sorted(PRESETS)}")
    family: Family = Field("longclip", description="model family (decides objective, collation and export)")
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
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    timeout_s: int = Field(600, description="collective timeout: a dead rank fails the run after this")
    max_failures: int = Field(1, description="worker-group restarts from the latest checkpoint")
    fail_at_step: int | None = Field(None, description="test hook: rank 0 raises once at this step")
    export: bool = Field(True, description="write consolidated fp32 weights of the best checkpoint")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset") is not None:
            name = data["preset"]
            if name not in PRESETS:
                raise ValueError(f"unknown preset {name!r}: use one of {sorted(PRESETS)}")
            data = {**PRESETS[name], **data}
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
        if self.family == "cnclip" and self.context_length and self.context_length > 512:
            raise ValueError("cnclip context_length is at most 512 (the text tower's positions)")
        return self

    @property
    def is_retrieval(self) -> bool:
        return self.family in ("longclip", "cnclip", "blip-retrieval")
