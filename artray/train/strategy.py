"""Which engine a run trains with: plain DDP or DeepSpeed ZeRO, and the rule `strategy: auto` follows.

auto picks DDP for models under :data:`DDP_MAX_PARAMS` parameters (faster than ZeRO there: one
all-reduce per step, no partitioning, fused AdamW) and DeepSpeed when the config names a ZeRO stage
(a recipe that asks for ZeRO), trains in fp16 (DeepSpeed's loss scaling) or the model is larger. A
run that resumes keeps the strategy its checkpoints were written with (the two checkpoint layouts
differ); asking for the other one explicitly is refused with the way out.
"""

from __future__ import annotations

import torch
from torch import nn

DDP_MAX_PARAMS = 1_000_000_000


def resolve(requested: str, n_params: int, previous: str | None, checkpoint: str = "the checkpoint") -> tuple[str, str]:
    """(strategy, why). `requested`: ddp, deepspeed or auto (TrainConfig.requested_strategy());
    `previous`: the strategy of the checkpoint being resumed, if any."""
    if previous is not None:
        if requested not in ("auto", previous):
            raise RuntimeError(
                f"{checkpoint} was written with strategy {previous}, this run asks for {requested}: the checkpoint "
                f"layouts differ. Resume with strategy: {previous} (or auto), or start a new run (new name) with "
                f"model: <the run's export>")
        return previous, "the checkpoint being resumed was written with it"
    if requested != "auto":
        return requested, "asked for by the config (strategy, or a zero_stage / fp16 under auto)"
    size = f"{n_params / 1e6:.1f}M parameters"
    if n_params >= DDP_MAX_PARAMS:
        return "deepspeed", f"auto: {size}, at least {DDP_MAX_PARAMS / 1e9:.0f}B"
    return "ddp", f"auto: {size}, under {DDP_MAX_PARAMS / 1e9:.0f}B"


def build(cfg, strategy: str, module: nn.Module, world: int, total_steps: int, rank: int):
    """(engine, dtype the inputs are cast to, loop-state entries describing the engine)."""
    if strategy == "ddp":
        from artray.train.ddp import DDPEngine

        engine = DDPEngine(cfg, module, total_steps, rank)
        if rank == 0:
            print(f"[train] DDP: {world} workers, precision {cfg.precision}"
                  f"{' (bf16 autocast)' if cfg.precision == 'bf16' else ''}, fused AdamW: "
                  f"{engine.device.type == 'cuda' and cfg.optimizer == 'adamw'}, compile: "
                  f"{cfg.compile and engine.device.type == 'cuda'}", flush=True)
        return engine, torch.float32, {"strategy": "ddp", "reshaped": []}
    from artray.train.engine import deepspeed_config, initialize

    if cfg.compile and rank == 0:
        print("[train] compile: true applies to strategy ddp; DeepSpeed runs uncompiled", flush=True)
    engine, _, _, reshaped = initialize(cfg, module, world, total_steps, rank)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
    return engine, dtype, {"strategy": "deepspeed", "reshaped": reshaped, "deepspeed": deepspeed_config(cfg, world)}


def of_state(state: dict) -> str:
    """The strategy a checkpoint's loop state was written with (runs before the choice existed: deepspeed)."""
    return state.get("strategy", "deepspeed")

