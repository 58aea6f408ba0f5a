"""Plain torch DDP inside a Ray Train worker, behind the same calls as DeepSpeed's engine.

For models under ~1B parameters plain data parallelism is faster than ZeRO (no partitioning,
one all-reduce per step, fused AdamW on CUDA, bf16 autocast over fp32 weights). The loop and
validation call an engine the same way whichever strategy built it: ``engine(**inputs)``,
``backward(loss)``, ``step()``, ``train()``/``eval()``, ``module``, ``device``,
``save_checkpoint(dir, tag)`` / ``load_checkpoint(dir, tag)``.

Ray Train's ``prepare_model`` moves the module to the worker's device and wraps it in
``DistributedDataParallel`` when there is more than one worker. Nothing here reads a value back
from the device per step: the gradient norm is clipped without being looked at.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch
from torch import nn

log = logging.getLogger("artray.train")

STATE_NAME = "ddp_state.pt"  # model, optimizer and schedule state, written by rank 0


def _fused_ok(device: torch.device) -> bool:
    return device.type == "cuda"


class DDPEngine:
    """A DDP-wrapped module with its optimizer and schedule, stepping every `grad_accum` micro-batches."""

    def __init__(self, cfg, module: nn.Module, total_steps: int, rank: int = 0):
        import ray.train.torch

        from artray.train.engine import make_optimizer, make_schedule

        self.cfg, self.rank, self.module = cfg, rank, module
        self.device = ray.train.torch.get_device()
        self.autocast_dtype = torch.bfloat16 if cfg.precision == "bf16" else None
        # buffers of these models are constants (no BatchNorm statistics): synced once at wrap time, not
        # before every forward
        self.model = self.ddp = ray.train.torch.prepare_model(
            module, parallel_strategy="ddp",
            parallel_strategy_kwargs={"forward_sync_buffers": False, "gradient_as_bucket_view": True})
        if self.ddp is module:  # one worker: nothing to synchronise, no wrapper
            self.ddp = None
        if cfg.compile:
            if self.device.type == "cuda":
                self.model = torch.compile(self.model)
            elif rank == 0:
                print("[train] compile: true is for CUDA workers; skipped on CPU", flush=True)
        self.optimizer = make_optimizer(cfg, module, fused=_fused_ok(self.device))
        self.schedule = make_schedule(cfg, self.optimizer, total_steps)
        self.micro = 0

    # the loop's calls ---------------------------------------------------------------------------
    def __call__(self, **inputs):
        training = self.module.training and torch.is_grad_enabled()
        model = self.model if training else self.module  # validation: no DDP hooks
        if training and self.ddp is not None:
            # gradient accumulation: all-reduce only on the micro-batch that ends an optimizer step (DDP's
            # `no_sync`, set per forward since the forward and its backward are separate calls here)
            self.ddp.require_backward_grad_sync = self._boundary()
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else contextlib.nullcontext())
        with autocast:
            return model(**inputs)

    def _boundary(self) -> bool:
        return (self.micro + 1) % self.cfg.grad_accum == 0

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.cfg.grad_accum if self.cfg.grad_accum > 1 else loss).backward()

    def step(self) -> None:
        boundary = self._boundary()
        self.micro += 1
        if not boundary:
            return
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    # checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self, path: str, tag: str) -> None:
        """Rank 0 writes the whole state (DDP keeps a full replica on every rank); other ranks write nothing."""
        if self.rank != 0:
            return
        os.makedirs(os.path.join(path, tag), exist_ok=True)
        torch.save({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "schedule": self.schedule.state_dict(), "micro": self.micro},
                   os.path.join(path, tag, STATE_NAME))

    def load_checkpoint(self, path: str, tag: str) -> None:
        state = torch.load(os.path.join(path, tag, STATE_NAME), map_location=self.device, weights_only=True)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.micro = state["micro"]


def module_state_dict(ckpt_dir: str, tag: str) -> dict[str, torch.Tensor]:
    """fp32 weights of a DDP checkpoint folder (what export writes)."""
    state = torch.load(os.path.join(ckpt_dir, tag, STATE_NAME), map_location="cpu", weights_only=True)
    return {k: v.float() if v.is_floating_point() else v for k, v in state["module"].items()}
