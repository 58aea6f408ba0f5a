"""`run_train(cfg)`: Ray Data inputs → `TorchTrainer` (DDP or DeepSpeed inside) → keep-best checkpoints → export.

Checkpoints go to ``<output>/<name>/`` (local or ``s3://``). Running the same config again
with the same ``name`` resumes from the latest checkpoint there (Ray Train restores the run);
a worker that dies mid-run restarts the worker group from the latest checkpoint, up to
``max_failures`` times.
"""

from __future__ import annotations

import logging
import math

from artray import storage
from artray.train.config import TrainConfig
from artray.train.data import build_train_table, build_val_tables

log = logging.getLogger("artray.train")

MAXIMISE = {"val_r1": True, "cider": True, "val_loss": False}


def _datasets(cfg: TrainConfig) -> tuple[dict, int]:
    import ray.data

    train = build_train_table(cfg)
    arts, texts = build_val_tables(cfg)
    return {"train": ray.data.from_arrow(train), "val_images": ray.data.from_arrow(arts),
            "val_texts": ray.data.from_arrow(texts)}, train.num_rows


def data_config():
    """Ray Train's dataset setup: the train set split over the workers (validation sets whole on each), and
    run with ``preserve_order``: the collate threads that prepare batches ahead (`prefetch_batches` ≥ 2)
    otherwise hand a batch out as soon as it is ready, so a short last batch could overtake a full one on
    one rank only (ranks gathering features of different sizes) and a resumed epoch stepped in another order."""
    from ray.train import DataConfig

    ordered = DataConfig.default_ingest_options()
    ordered.preserve_order = True
    return DataConfig(datasets_to_split=["train"], execution_options={"train": ordered})


def _run_config(cfg: TrainConfig):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    path, fs = cfg.output, None
    if storage.is_s3(cfg.output):
        fs, path = storage.filesystem(cfg.output, cfg.storage_options())
    return RunConfig(
        name=cfg.name, storage_path=path, storage_filesystem=fs,
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=CheckpointConfig(
            num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=cfg.select_metric,
            checkpoint_score_order="max" if MAXIMISE[cfg.select_metric] else "min"),
    )


def best_checkpoint(result, metric: str):
    """(checkpoint, metrics) with the best `metric` among the kept ones (Ray Train's
    ``Result.get_best_checkpoint``; ties → the later one)."""
    if not result.best_checkpoints:
        raise RuntimeError("the run reported no checkpoint: nothing to export (did it train at least one epoch?)")
    best = result.get_best_checkpoint(metric, "max" if MAXIMISE[metric] else "min")
    score = next(m[metric] for c, m in result.best_checkpoints if c.path == best.path)
    # equal scores: the later checkpoint (more training for the same validation score)
    return [(c, m) for c, m in result.best_checkpoints if m[metric] == score][-1]


def run_train(cfg: TrainConfig) -> dict:
    """Train `cfg` on the current Ray cluster; returns the last and every epoch's metrics, the best
    checkpoint and the export path. The run folder ``<output>/<name>/`` is leased for the run's life
    (`artray.lease`): a second training with the same output and name is refused while this one runs."""
    from artray.lease import Lease

    # one training per run folder: two with the same output + name would write one checkpoint history
    with Lease(storage.join(cfg.output, cfg.name), f"train {cfg.name}", cfg.storage_options()):
        return _fit(cfg)


def _fit(cfg: TrainConfig) -> dict:
    """`run_train` once the run folder's lease is held."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from artray.console import StageProgress
    from artray.train.export import export_checkpoint
    from artray.families import trainer_class
    from artray.train.loop import train_loop_per_worker

    trainer_cls = trainer_class(cfg.family)
    datasets, n_train = _datasets(cfg)
    per_worker = n_train // cfg.num_workers
    if per_worker == 0:
        raise ValueError(f"{n_train} train artworks cannot be split over {cfg.num_workers} workers: "
                         "lower num_workers")
    steps_per_epoch = max(1, math.ceil(per_worker / cfg.batch_size) // cfg.grad_accum)
    log.info("[train] %s on %d workers, %d artworks, %d steps/epoch", cfg.family, cfg.num_workers, n_train,
             steps_per_epoch)
    with StageProgress("train", cfg.epochs, unit="epochs") as progress:  # rank 0's epoch lines reach the console
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": cfg.model_dump(mode="json"), "steps_per_epoch": steps_per_epoch,
                               "strategy": cfg.requested_strategy(), "progress": progress.counter},
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers, use_gpu=cfg.uses_gpu,
                resources_per_worker={"CPU": cfg.cpus_per_worker,
                                      **({"GPU": cfg.gpus_per_worker} if cfg.uses_gpu else {})}),
            torch_config=TorchConfig(backend="nccl" if cfg.uses_gpu else "gloo", timeout_s=cfg.timeout_s),
            datasets=datasets,
            dataset_config=data_config(),
            run_config=_run_config(cfg),
        )
        result = trainer.fit()
    history = result.return_value or []  # every epoch's metrics, from rank 0
    out = {"metrics": result.metrics or (history[-1] if history else {}), "history": history,
           "run_path": storage.join(cfg.output, cfg.name), "best_metrics": None, "best_checkpoint": None,
           "export": None}
    if not cfg.checkpoint_every:  # nothing saved on purpose (benchmarks, smoke runs)
        print(f"[train] {cfg.family} {cfg.name}: last epoch {cfg.select_metric}="
              f"{out['metrics'].get(cfg.select_metric)} (checkpoint_every: 0, nothing saved)")
        return out
    checkpoint, metrics = best_checkpoint(result, cfg.select_metric)
    out.update(best_metrics=metrics, best_checkpoint=checkpoint.path)
    if cfg.export:
        out["export"] = export_checkpoint(checkpoint, cfg, trainer_cls)
        log.debug("exported %s (best %s=%s)", out["export"], cfg.select_metric, metrics[cfg.select_metric])
    print(f"[train] {cfg.family} {cfg.name}: best {cfg.select_metric}={metrics.get(cfg.select_metric)} "
          f"→ checkpoint {out['best_checkpoint']}, export {out['export']}")
    return out
