"""DeepSpeed inside a Ray Train worker: the config dict, the optimizer and schedule, and the 0-dim fix.

DeepSpeed 0.19.8 crashes on 0-dim parameters (``self.dim() cannot be 0 to view Float as
Byte``) and every CLIP-family model has a 0-dim ``logit_scale``: :func:`reshape_0dim` makes
them shape [1] before ``deepspeed.initialize``; exports reshape them back to ``()``.
A torch optimizer is handed to DeepSpeed (no fused-Adam op build, and AdaBelief is not a
DeepSpeed optimizer), so ZeRO is told to allow it.
"""

from __future__ import annotations

import json
import logging

import torch
from torch import nn

from artray.train.config import TrainConfig

log = logging.getLogger("artray.train")


def reshape_0dim(module: nn.Module) -> list[str]:
    """Give every 0-dim parameter shape [1] in place; return their names."""
    names = []
    for name, p in module.named_parameters():
        if p.dim() == 0:
            p.data = p.data.reshape(1)
            names.append(name)
    return names


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    """The DeepSpeed config for `cfg` (batch sizes, ZeRO stage, precision, clipping)."""
    ds = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size,
        "zero_optimization": {"stage": cfg.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.grad_clip:
        ds["gradient_clipping"] = cfg.grad_clip
    if cfg.precision == "bf16":
        ds["bf16"] = {"enabled": True}
    elif cfg.precision == "fp16":
        ds["fp16"] = {"enabled": True, "initial_scale_power": 16}
    return ds


def make_optimizer(cfg: TrainConfig, module: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW or AdaBelief over trainable parameters; weight decay on matrices only (open_clip's rule).
    `fused`: torch's fused AdamW kernel (CUDA parameters, the DDP strategy)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adabelief":
        try:
            from adabelief_pytorch import AdaBelief
        except ImportError as exc:
            raise ImportError("optimizer adabelief needs the adabelief-pytorch package: "
                              "pip install adabelief-pytorch==0.2.1 (or set optimizer: adamw)") from exc
        return AdaBelief(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decouple=False,
                         rectify=True, print_change_log=False)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **({"fused": True} if fused else {}))


def make_schedule(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """constant or cosine, each after a linear warm-up (transformers' schedules), or one-cycle
    (torch's, max lr = cfg.lr, linear anneal)."""
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    total_steps = max(1, total_steps)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps + 1,
                                                   pct_start=cfg.pct_start, anneal_strategy="linear",
                                                   cycle_momentum=False)
    warmup = min(cfg.warmup_steps, total_steps)
    if cfg.schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, warmup)
    return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)


def initialize(cfg: TrainConfig, module: nn.Module, world_size: int, total_steps: int, rank: int = 0):
    """`deepspeed.initialize` with the config logged; returns (engine, optimizer, schedule, reshaped names)."""
    import deepspeed

    reshaped = reshape_0dim(module)
    ds = deepspeed_config(cfg, world_size)
    if rank == 0:
        log.info("DeepSpeed config: %s (0-dim parameters reshaped to [1]: %s)", json.dumps(ds), reshaped)
        print(f"[train] DeepSpeed config: {json.dumps(ds)}", flush=True)
    optimizer = make_optimizer(cfg, module)
    schedule = make_schedule(cfg, optimizer, total_steps)
    engine, optimizer, _, schedule = deepspeed.initialize(
        model=module, optimizer=optimizer, lr_scheduler=schedule, config=ds, dist_init_required=False)
    return engine, optimizer, schedule, reshaped


def unshape_0dim(state_dict: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """Undo :func:`reshape_0dim` on a consolidated state dict."""
    return {k: (v.reshape(()) if k in names and v.numel() == 1 else v) for k, v in state_dict.items()}
