"""`train_loop_per_worker`: the one Ray Train loop every family runs, on plain DDP or DeepSpeed.

Per worker: build the family's module from the checkpoint, pick the engine (:mod:`artray.train.strategy`:
torch DDP with fused AdamW and bf16 autocast, or ``deepspeed.initialize``), restore the latest Ray
Train checkpoint if there is one (after a worker failure or a rerun of a stopped job), then per epoch:
stream this worker's shard of the train set (``ray.train.get_dataset_shard``), draw each sample's image
(alpha) and caption, step, validate on the full validation set (every rank, in lockstep, so ZeRO-3
works), save a checkpoint (DeepSpeed: every rank; DDP: rank 0) every ``checkpoint_every`` epochs and the
last, and ``ray.train.report`` it with the metrics.

The per-step path reads nothing back from the device: losses add up on the device and are read once
per epoch (or every ``log_every`` steps when asked); on GPU workers batches are prepared ahead in Ray
Data's collate threads (in order) and copied to the GPU from pinned memory without blocking.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import time

import torch

from artray.console import note, report
from artray.jsonio import dumps_strict
from artray.train.batches import batches_ahead, to_device, train_batches
from artray.train.checkpoint_layout import CKPT_TAG, STATE_FILE


def _train_epoch(cfg, family, engine, shard, state: dict, rank: int, restored: bool, dtype, progress=None) -> float:
    """One pass over this worker's shard; returns the mean micro-batch loss (0 when no batch came).

    Every random draw of an epoch is seeded from the seed and the epoch (alpha and caption draws per
    sample, `sample_rng`; the local shuffle) or also the rank (torch's RNG), so an epoch re-run after a
    restore from the previous epoch's checkpoint draws exactly what the uninterrupted run drew.
    Batches (`PrepareBatch`) are prepared ahead in Ray Data's collate threads on GPU workers, in the
    training thread on CPU workers (:func:`batches_ahead`), and the loss is summed on the device, so on a GPU
    the next batches' decoding overlaps the current step and nothing waits for it.
    """
    # torch draws too (BLIP's ITM negatives): reseeded per epoch, not carried over from earlier epochs
    torch.manual_seed(random.Random(f"torch:{cfg.seed}:{state['epoch']}:{rank}").getrandbits(63))
    from artray.train.data import PrepareBatch

    device = engine.device
    ahead = batches_ahead(cfg, device)
    pin = ahead > 0 and torch.device(device).type == "cuda"  # pinned in the collate thread: an async copy
    loss_sum, n, variants_seen, logged = None, 0, 0, (None, 0)
    collate = PrepareBatch(cfg, family, state["epoch"], pin_memory=pin)
    for inputs, rows, variants in train_batches(shard, cfg, collate, ahead, state["epoch"]):
        variants_seen += variants
        loss = family.loss(engine(**to_device(inputs, device, dtype)))
        engine.backward(loss)
        engine.step()
        loss_sum = loss.detach().float() if loss_sum is None else loss_sum + loss.detach().float()
        n += 1
        state["samples"] = state.get("samples", 0) + rows
        state["micro_step"] += 1
        state["step"] = state["micro_step"] // cfg.grad_accum
        if cfg.log_every and rank == 0 and state["micro_step"] % (cfg.log_every * cfg.grad_accum) == 0:
            total = float(loss_sum)  # the one read-back, every log_every steps
            line = (f"[train] step {state['step']}: train loss {(total - (logged[0] or 0.0)) / (n - logged[1]):.4g}"
                    f" (mean of the last {n - logged[1]} micro-batches)")
            print(line, flush=True)
            note(progress, line)
            logged = (total, n)
        if cfg.fail_at_step is not None and not restored and rank == 0 and state["step"] == cfg.fail_at_step:
            raise RuntimeError(f"fail_at_step={cfg.fail_at_step}: injected failure (test hook)")
        if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
            break
    state["variants_seen"] = state.get("variants_seen", 0) + variants_seen
    return float(loss_sum) / n if n else 0.0


def _save(engine, state: dict, rank: int) -> str | None:
    """A local folder with this rank's part of the checkpoint (None: this rank has nothing to add, DDP's
    ranks other than 0)."""
    if state["strategy"] == "ddp" and rank != 0:
        return None
    path = tempfile.mkdtemp(prefix=f"artray-ckpt-r{rank}-")
    engine.save_checkpoint(path, tag=CKPT_TAG)
    if rank == 0:
        with open(os.path.join(path, STATE_FILE), "w", encoding="utf-8") as f:
            f.write(dumps_strict(state))  # a NaN validation loss is written as null
    return path


def _finished(cfg, state: dict) -> bool:
    """All epochs done, or `max_steps` reached."""
    return state["epoch"] >= cfg.epochs or (cfg.max_steps is not None and state["step"] >= cfg.max_steps)


def wants_checkpoint(cfg, state: dict, stop: bool) -> bool:
    """Whether the epoch just ended is saved: every `checkpoint_every` epochs and the last one, never with 0."""
    if not cfg.checkpoint_every:
        return False
    return stop or _finished(cfg, state) or state["epoch"] % cfg.checkpoint_every == 0


def train_loop_per_worker(loop_config: dict) -> list[dict]:
    """Ray Train entry: `loop_config` = {"cfg": TrainConfig dump, "steps_per_epoch": optimizer steps}.
    Returns every epoch's metrics (the run's, restored epochs included)."""
    if not loop_config["cfg"].get("gpus_per_worker"):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import shutil

    import ray.train

    from artray.families import trainer_class
    from artray.train import strategy as strategies
    from artray.train.config import TrainConfig
    from artray.train.validate import validate

    cfg = TrainConfig.model_validate(loop_config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.seed)
    family = trainer_class(cfg.family)(cfg)
    module = family.build_module()
    epochs_total = cfg.epochs * loop_config["steps_per_epoch"]
    total_steps = min(epochs_total, cfg.max_steps) if cfg.max_steps else epochs_total
    n_params = sum(p.numel() for p in module.parameters())

    state = {"epoch": 0, "micro_step": 0, "step": 0, "history": [], "initial": None, "restored": 0, "world_size": world}
    checkpoint = ray.train.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint is not None else contextlib.nullcontext()) as d:
        saved = None
        if checkpoint is not None:
            with open(os.path.join(d, STATE_FILE), encoding="utf-8") as f:
                saved = json.load(f)
        strategy, why = strategies.resolve(loop_config.get("strategy", cfg.requested_strategy()), n_params,
                                           strategies.of_state(saved) if saved else None,
                                           f"checkpoint {checkpoint.path}" if checkpoint else "")
        if rank == 0:
            line = f"[train] strategy {strategy} ({why})"
            print(line, flush=True)
            note(loop_config.get("progress"), line)
        engine, dtype, described = strategies.build(cfg, strategy, module, world, total_steps, rank)
        state.update(described)
        if saved is not None:
            state = {"strategy": strategy, **saved}  # runs before the choice existed were DeepSpeed runs
            if state["world_size"] != world:
                why = ("ZeRO partitions per worker" if strategy == "deepspeed" else
                       "its data shards and steps per epoch")
                raise RuntimeError(
                    f"checkpoint {checkpoint.path} was written by {state['world_size']} workers ({why}); resume "
                    f"with num_workers={state['world_size']}, or start a new run (new name) from the consolidated "
                    f"export as model")
            engine.load_checkpoint(d, tag=CKPT_TAG)
            state["restored"] += 1
            print(f"[train] rank {rank}: resumed from {checkpoint.path} at epoch {state['epoch']}, "
                  f"step {state['step']}", flush=True)

    val_arts = list(ray.train.get_dataset_shard("val_images").iter_rows())
    val_texts = list(ray.train.get_dataset_shard("val_texts").iter_rows())
    if state["initial"] is None:
        state["initial"] = validate(cfg, family, engine, val_arts, val_texts, dtype)
        if rank == 0:
            print(f"[train] before training: {state['initial']}", flush=True)
            note(loop_config.get("progress"), "[train] before training: " + _brief(state["initial"]))
    shard = ray.train.get_dataset_shard("train")
    while not _finished(cfg, state):
        t0 = time.time()
        engine.train()
        samples_before = state.get("samples", 0)
        train_loss = _train_epoch(cfg, family, engine, shard, state, rank, checkpoint is not None, dtype,
                                  loop_config.get("progress"))
        train_s, samples = time.time() - t0, state.get("samples", 0) - samples_before
        engine.eval()
        metrics = validate(cfg, family, engine, val_arts, val_texts, dtype)
        state["epoch"] += 1
        metrics.update(epoch=state["epoch"], step=state["step"], train_loss=train_loss,
                       epoch_s=round(time.time() - t0, 2), train_s=round(train_s, 3),
                       samples_per_s=round(samples * world / max(train_s, 1e-9), 3), variants_seen=state.get("variants_seen", 0),
                       restored=state["restored"],
                       **{f"initial_{k}": v for k, v in state["initial"].items()})
        if hasattr(family, "truncation"):
            cut = family.truncation()
            metrics["text_truncated_frac"] = cut["truncated"] / max(1, cut["texts"])
        previous = state["history"][-1] if state["history"] else None
        state["history"].append(metrics)
        stop = bool(cfg.early_stop and previous and metrics["val_loss"] > previous["val_loss"])
        if rank == 0:
            print(f"[train] epoch {state['epoch']}: {json.dumps(metrics)}" + (" (val loss rose: early stop)"
                                                                              if stop else ""), flush=True)
            progress = loop_config.get("progress")  # the driver's console line (artray.console)
            note(progress, epoch_line(cfg, metrics) + (" (val loss rose: early stop)" if stop else ""))
            report(progress, 1)
        if not wants_checkpoint(cfg, state, stop):
            ray.train.report(metrics)
        else:
            path = _save(engine, state, rank)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(path) if path else None,
                             checkpoint_dir_name=f"checkpoint_epoch{state['epoch']:04d}")
            if path:
                shutil.rmtree(path, ignore_errors=True)
        if stop:
            break
    return state["history"]  # rank 0's: Ray Train hands it back as Result.return_value


def _brief(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def epoch_line(cfg, metrics: dict) -> str:
    """One console line for an epoch: its loss, validation metrics and speed."""
    shown = {k: metrics[k] for k in ("train_loss", "val_loss", "val_r1", "val_r5", "cider") if k in metrics}
    return (f"[train] epoch {metrics['epoch']}/{cfg.epochs}: {_brief(shown)}, "
            f"{metrics['samples_per_s']:.1f} samples/s, {metrics['epoch_s']:.0f}s")
