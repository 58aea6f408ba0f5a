"""Training throughput: artray's Ray Train loop (DDP and/or DeepSpeed) vs a plain single-process PyTorch loop.

    .venv/bin/python bench/train.py [--family longclip] [--epochs 2] [--batch-size 8] [--n 60] [--workers 1]
    .venv/bin/python bench/train.py --strategy ddp,deepspeed       # both engines, one after the other
    .venv/bin/python bench/train.py --full-size --use-gpu [--family cnclip]    # on a GPU machine only

Same model, same data, same batch size per step, one run, side by side:

* **artray**: ``run_train`` with ``num_workers`` Ray Train workers, once per ``--strategy``
  (``ddp``: torch DDP, fused AdamW and bf16 autocast on CUDA; ``deepspeed``: ZeRO stage ``--zero``),
  the family's objective; samples/s = all workers' train samples / train time per epoch as
  reported by the loop (validation and checkpointing excluded), the median of the epochs after
  the first (the first includes warm-up; one short epoch on a noisy machine can be far off, so
  not the best one);
* **plain**: one process, the same family module and objective (no gathering across
  workers), ``torch.optim.AdamW`` (fused on CUDA), the same number of samples per epoch; the
  same median, with 1 and with 2 torch threads on CPU (the faster one is compared);
* **plain in Ray** (CPU only): the same plain loop as a Ray task holding the worker's CPUs, while Ray is up: a
  Ray worker process like Train's (Ray's ``OMP_NUM_THREADS`` = its CPUs, Ray's worker niceness, core-worker
  threads, Ray's daemons beside it). ``ratio_in_ray`` = artray / it: the cost of artray's loop (Ray Train,
  Ray Data, the engine) over a plain loop in the same conditions; ``ratio_same_threads`` = artray / the plain
  loop without Ray at the worker's thread count: what a user gives up against a plain script;
* **step only** (``--use-gpu``): the plain loop's forward + backward + optimizer step repeated on
  one batch already on the GPU, no data loading: the ceiling both loops approach.

``--rounds R`` repeats all of it R times, interleaved (this shared machine's speed drifts by 10-20 % over
minutes: each round's ratios compare figures taken within a minute of each other), and reports medians and
every round's figures with the 1-min load average before and after it.

Prints one JSON line with both samples/s and the ratio (artray / plain) of the first strategy, and every
strategy's figures under ``by_strategy``. On 2 CPU cores two
workers share the cores with Ray itself, so the ratio there measures overhead, not scaling.
Model FLOPs per sample are counted once (``torch.utils.flop_counter`` over one forward +
backward) and turned into model FLOPs utilisation against ``--peak-tflops`` (default: 989,
dense bf16 of an H100/H200 SXM).

``--full-size`` swaps the tiny checkpoint for a randomly initialised full-size architecture
(Long-CLIP ViT-L/14 at 248 tokens, or Chinese-CLIP ViT-H/14 with a RoBERTa-large text tower)
written to a temp folder, in bf16, no checkpoints (``checkpoint_every: 0``): the
compute of the real models, meant for a GPU machine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

PEAK_BF16_TFLOPS = 989.0  # H100/H200 SXM, dense bf16, vendor datasheet


def _full_size_longclip(root: str) -> str:
    """A random ViT-L/14 CLIP (OpenAI layout) stretched to 248 positions, saved as safetensors."""
    import open_clip

    from artray.models.longclip import longclip_state_dict_from_clip
    from artray.models.weights import save_state_dict

    model = open_clip.create_model("ViT-L-14-quickgelu", pretrained=None)
    sd = {k: v for k, v in model.state_dict().items()}
    path = os.path.join(root, "longclip-L-random.safetensors")
    save_state_dict(longclip_state_dict_from_clip(sd), path)
    return path


def _full_size_cnclip(root: str) -> str:
    """A random Chinese-CLIP ViT-H/14 (OFA-Sys/chinese-clip-vit-huge-patch14's shapes: RoBERTa-wwm-large
    text tower, 1024-d projection) saved as a transformers folder with the tiny checkpoint's processor."""
    import torch
    from transformers import ChineseCLIPConfig, ChineseCLIPModel, ChineseCLIPProcessor

    from artray.scaffold.tiny import make_tiny

    tiny = make_tiny(os.path.join(root, "tiny"))["cnclip"]
    torch.manual_seed(0)
    config = ChineseCLIPConfig(
        text_config=dict(vocab_size=21128, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                         num_attention_heads=16, max_position_embeddings=512, type_vocab_size=2),
        vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                           patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu"),
        projection_dim=1024)
    path = os.path.join(root, "cnclip-H-random")
    ChineseCLIPModel(config).save_pretrained(path, safe_serialization=True)
    processor = ChineseCLIPProcessor.from_pretrained(tiny)
    processor.image_processor.size = {"shortest_edge": 224}
    processor.image_processor.crop_size = {"height": 224, "width": 224}
    processor.save_pretrained(path)
    return path


def _to(batch: dict, device: str) -> dict:
    import torch

    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _loss(family, module, batch: dict, device: str, precision: str):
    """The family's loss on `batch` (moved to `device`), under bf16 autocast when asked."""
    import torch

    with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16"):
        return family.loss(module(**_to(batch, device)), gather=False)


def _plain_step(family, module, opt, batch: dict, device: str, precision: str) -> None:
    loss = _loss(family, module, batch, device, precision)
    opt.zero_grad()
    loss.backward()
    opt.step()


def flops_per_sample(family, module, batch: dict, n: int, device: str, precision: str) -> float:
    """Model FLOPs of one training sample: forward + backward counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        _loss(family, module, batch, device, precision).backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops() / n


def step_only(family, module, opt, batch: dict, device: str, precision: str, iters: int = 10) -> float:
    """Samples/s of forward + backward + step on one batch already on the device (no data loading)."""
    import torch

    batch = _to(batch, device)  # moved once: the timed steps copy nothing
    n = len(next(v for v in batch.values() if torch.is_tensor(v)))
    for _ in range(3):
        _plain_step(family, module, opt, batch, device, precision)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        _plain_step(family, module, opt, batch, device, precision)
    torch.cuda.synchronize()
    return n * iters / (time.perf_counter() - start)


def plain_loop(cfg, epochs: int) -> dict:
    """Samples/s of a single-process PyTorch loop with the family's module and objective; on a GPU
    also the step-only rate and the model FLOPs per sample."""
    import torch
    from PIL import Image

    from artray.train.data import build_train_table, draw_caption, draw_image
    from artray.families import trainer_class

    family = trainer_class(cfg.family)(cfg)
    module = family.build_module().train()
    device = "cuda" if cfg.uses_gpu else "cpu"
    module.to(device)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.lr,
                            **({"fused": True} if device == "cuda" else {}))
    rows = build_train_table(cfg).to_pylist()
    rng, rates = random.Random(0), []

    def batch_of(chunk: list[dict]) -> dict:
        images = [Image.open(io.BytesIO(draw_image(r, cfg.alpha, rng)[0])) for r in chunk]
        return family.train_batch(images, [draw_caption(r, rng) for r in chunk])

    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for i in range(0, len(rows), cfg.batch_size):
            chunk = rows[i:i + cfg.batch_size]
            _plain_step(family, module, opt, batch_of(chunk), device, cfg.precision)
            seen += len(chunk)
        if cfg.uses_gpu:
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - start))
    out = {"samples_per_s": statistics.median(rates[1:] or rates)}
    first = batch_of(rows[:cfg.batch_size])
    out["flops_per_sample"] = flops_per_sample(family, module, first, len(rows[:cfg.batch_size]), device,
                                               cfg.precision)
    if cfg.uses_gpu:
        out["step_only_samples_per_s"] = step_only(family, module, opt, first, device, cfg.precision)
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="longclip", choices=["longclip", "cnclip", "blip"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n", type=int, default=60, help="sample corpus size")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--strategy", default="ddp,deepspeed",
                   help="artray engines to time, comma-separated: ddp, deepspeed (the first one gives `ratio`)")
    p.add_argument("--zero", type=int, default=2, help="ZeRO stage of the deepspeed runs")
    p.add_argument("--compile", action="store_true", help="ddp runs: torch.compile (CUDA only)")
    p.add_argument("--prefetch-batches", type=int,
                   help="artray: batches prepared ahead in collate threads (default: the loop's, 0 on CPU, 2 on GPU)")
    p.add_argument("--full-size", action="store_true")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="default: bf16 with --full-size, else fp32")
    p.add_argument("--cpus-per-worker", type=float,
                   help="CPUs (and so torch/OpenMP threads) per Ray Train worker; default 8 with --use-gpu, else 1")
    p.add_argument("--peak-tflops", type=float, default=PEAK_BF16_TFLOPS, help="for model FLOPs utilisation")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat artray and the plain loops this many times, interleaved (medians reported)")
    p.add_argument("--json", help="also write the report to this JSON file (bench/gpu.sh reads it)")
    args = p.parse_args()
    if not args.use_gpu:  # before Ray starts: its workers inherit the environment
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    precision = args.precision or ("bf16" if args.full_size else "fp32")

    import ray

    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.scaffold.sample_corpora import make_samples
    from artray.scaffold.tiny import make_tiny
    from artray.train.config import TrainConfig
    from artray.train.run import run_train

    root = tempfile.mkdtemp(prefix="artray-bench-train-")
    fmt, name = ("cnclip", "culti") if args.family == "cnclip" else ("artpedia", "artpedia")
    src = make_samples(os.path.join(root, "samples"), n=args.n)[name]
    import_corpus(ImportConfig(format=fmt, src=src, dest=os.path.join(root, name)))
    if args.full_size:
        if args.family == "blip":
            p.error("--full-size is written for longclip and cnclip")
        model = _full_size_longclip(root) if args.family == "longclip" else _full_size_cnclip(root)
    else:
        from artray import families

        model = make_tiny(os.path.join(root, "tiny"))[next(iter(families.get(args.family).tiny))]
    strategies = [x.strip() for x in args.strategy.split(",") if x.strip()]
    if not strategies or set(strategies) - {"ddp", "deepspeed"}:
        p.error("--strategy: ddp, deepspeed or both (comma-separated)")
    # full size: no checkpoints (ZeRO-2 state of ViT-H is ~14 GB an epoch, not what is measured here)
    base = dict(family=args.family, model=model, corpus=os.path.join(root, name), epochs=args.epochs,
                batch_size=args.batch_size, num_workers=args.workers, gpus_per_worker=1 if args.use_gpu else 0,
                precision=precision, lr=1e-4, warmup_steps=0, max_failures=0, export=False,
                keep_checkpoints=args.epochs, checkpoint_every=0 if args.full_size else 1,
                cpus_per_worker=args.cpus_per_worker or (8.0 if args.use_gpu else 1.0))
    configs = {s: TrainConfig(**base, output=os.path.join(root, f"runs-{s}"), strategy=s, compile=args.compile,
                              prefetch_batches=args.prefetch_batches,
                              **({"zero_stage": args.zero} if s == "deepspeed" else {})) for s in strategies}
    cfg = configs[strategies[0]]
    import torch

    # Per round, side by side (this shared machine's speed drifts by 10-20 % over minutes, so each round's ratio
    # compares figures taken within a minute of each other; with --rounds > 1 the medians are reported):
    # artray; on CPU the plain loop as a Ray task holding the worker's CPUs (`plain_in_ray`: a Ray worker process
    # like Train's, with Ray's OMP_NUM_THREADS, niceness, core-worker threads and daemons around it, so
    # artray / it is the loop's own cost); then Ray shut down and the plain loop in this process without Ray.
    # Ray runs each worker with OMP_NUM_THREADS = its CPUs; on CPU the plain loop without Ray is timed with 1 and
    # with 2 torch threads (2 intra-op threads on tiny matrices can be far slower on a loaded 2-core machine).
    threads_same = max(1, int(cfg.cpus_per_worker))
    rounds = []
    for i in range(args.rounds):
        load = [os.getloadavg()[0]]
        ray.init(num_cpus=None if args.use_gpu else 2, include_dashboard=False, logging_level="ERROR")
        histories = {s: run_train(c.model_copy(update={"name": f"train-r{i}"}))["history"] for s, c in configs.items()}
        in_ray = None
        if not args.use_gpu:
            in_ray = ray.get(ray.remote(num_cpus=cfg.cpus_per_worker)(plain_loop).remote(cfg, args.epochs))
        ray.shutdown()
        plain = {}
        for threads in ((None,) if args.use_gpu else (1, 2)):
            if threads:
                torch.set_num_threads(threads)
            plain[threads] = plain_loop(cfg, args.epochs)
        load.append(os.getloadavg()[0])
        rates = {s: statistics.median(h["samples_per_s"] for h in (hist[1:] or hist)) for s, hist in histories.items()}
        rounds.append({"rates": rates, "histories": histories, "plain": plain, "in_ray": in_ray, "load1": load})

    def med(values):
        return statistics.median(list(values))

    rates = {s: med(r["rates"][s] for r in rounds) for s in strategies}
    artray_sps, history = rates[strategies[0]], rounds[-1]["histories"][strategies[0]]
    plain = {t: {"samples_per_s": med(r["plain"][t]["samples_per_s"] for r in rounds),
                 **{k: v for k, v in rounds[-1]["plain"][t].items() if k != "samples_per_s"}}
             for t in rounds[-1]["plain"]}
    best = max(plain.values(), key=lambda r: r["samples_per_s"])
    plain_sps, flops = best["samples_per_s"], best["flops_per_sample"]

    def mfu(sps: float) -> float:
        return round(sps * flops / (args.peak_tflops * 1e12), 4)

    by_strategy = {s: {"samples_per_s": round(r, 2), "ratio": round(r / plain_sps, 3),
                       "epochs_samples_per_s": [h["samples_per_s"] for h in rounds[-1]["histories"][s]],
                       **({"mfu": mfu(r)} if args.use_gpu else {})} for s, r in rates.items()}
    report = {"family": args.family, "full_size": args.full_size, "use_gpu": args.use_gpu, "precision": precision,
              "strategy": strategies[0], "by_strategy": by_strategy,
              "workers": args.workers, "cpus_per_worker": cfg.cpus_per_worker, "zero": args.zero,
              "prefetch_batches": args.prefetch_batches,
              "batch_size": args.batch_size, "n": args.n, "epochs": args.epochs, "artray_epochs_samples_per_s": [h["samples_per_s"] for h in history],
              "artray_samples_per_s": round(artray_sps, 2), "plain_samples_per_s": round(plain_sps, 2),
              "ratio": round(artray_sps / plain_sps, 3), "gflops_per_sample": round(flops / 1e9, 2)}
    if args.use_gpu:
        report.update(gpu=torch.cuda.get_device_name(), peak_tflops=args.peak_tflops, artray_mfu=mfu(artray_sps),
                      plain_mfu=mfu(plain_sps), step_only_samples_per_s=round(best["step_only_samples_per_s"], 2),
                      step_only_mfu=mfu(best["step_only_samples_per_s"]),
                      plain_peak_memory_gib=round(best["peak_memory_gib"], 1))
    else:
        report.update({f"plain_samples_per_s_{t}thread{'s' if t > 1 else ''}": round(r["samples_per_s"], 2)
                       for t, r in plain.items()})
        first = strategies[0]
        per_round = [{"load1": [round(x, 2) for x in r["load1"]], "artray": round(r["rates"][first], 2),
                      "plain_in_ray": round(r["in_ray"]["samples_per_s"], 2),
                      "plain_same_threads": round(r["plain"][threads_same]["samples_per_s"], 2),
                      "ratio_in_ray": round(r["rates"][first] / r["in_ray"]["samples_per_s"], 3),
                      "ratio_same_threads": round(r["rates"][first] / r["plain"][threads_same]["samples_per_s"], 3)}
                     for r in rounds]
        # the fair counterparts: the plain loop at the worker's thread count, without Ray and as a Ray task
        report.update(plain_in_ray_samples_per_s=round(med(r["in_ray"]["samples_per_s"] for r in rounds), 2),
                      ratio_same_threads=round(med(x["ratio_same_threads"] for x in per_round), 3),
                      ratio_in_ray=round(med(x["ratio_in_ray"] for x in per_round), 3),
                      rounds=per_round)
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"part": "train", **report}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
