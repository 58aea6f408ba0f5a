"""Training throughput: artray's Ray Train + DeepSpeed loop vs a plain single-process PyTorch loop.

    .venv/bin/python bench/train.py [--family longclip] [--epochs 2] [--batch-size 8] [--n 60]
    .venv/bin/python bench/train.py --full-size --use-gpu     # on a GPU machine only

Same model, same data, same batch size per step, one run, side by side:

* **artray**: ``run_train`` with ``num_workers`` Ray Train workers, DeepSpeed (ZeRO stage
  ``--zero``), the family's objective; samples/s = all workers' train samples / train time
  per epoch as reported by the loop (validation and checkpointing excluded), the median of
  the epochs after the first (the first includes warm-up; one short epoch on a noisy machine
  can be far off, so not the best one);
* **plain**: one process, the same family module and objective (no gathering across
  workers), ``torch.optim.AdamW``, the same number of samples per epoch; the same median,
  with 1 and with 2 torch threads (the faster one is compared).

Prints one JSON line with both samples/s and the ratio (artray / plain). On 2 CPU cores two
workers share the cores with Ray itself, so the ratio there measures overhead, not scaling.
``--full-size`` swaps the tiny checkpoint for a randomly initialised full-size architecture
(Long-CLIP ViT-L/14 at 248 tokens, or Chinese-CLIP ViT-H/14) written to a temp folder, in bf16
with ZeRO-2: meant for a GPU machine, it is not run on CPU.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


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


def plain_loop(cfg, epochs: int) -> float:
    """Samples/s of a single-process PyTorch loop with the family's module and objective."""
    import torch
    from PIL import Image

    from artray.train.data import build_train_table, draw_caption, draw_image
    from artray.train.families import make_family

    family = make_family(cfg)
    module = family.build_module().train()
    device = "cuda" if cfg.use_gpu else "cpu"
    module.to(device)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=cfg.lr)
    rows = build_train_table(cfg).to_pylist()
    rng, rates = random.Random(0), []
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for i in range(0, len(rows), cfg.batch_size):
            chunk = rows[i:i + cfg.batch_size]
            images = [Image.open(io.BytesIO(draw_image(r, cfg.alpha, rng)[0])) for r in chunk]
            batch = family.train_batch(images, [draw_caption(r, rng) for r in chunk])
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            with torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                loss = family.loss(module(**batch), gather=False)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(chunk)
        rates.append(seen / (time.perf_counter() - start))
    return statistics.median(rates[1:] or rates)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="longclip", choices=["longclip", "cnclip", "blip-retrieval"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--n", type=int, default=60, help="sample corpus size")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--zero", type=int, default=2)
    p.add_argument("--full-size", action="store_true")
    p.add_argument("--use-gpu", action="store_true")
    args = p.parse_args()

    import ray

    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.corpora.sample import make_samples
    from artray.models.tiny import make_tiny
    from artray.train.config import TrainConfig
    from artray.train.run import run_train

    root = tempfile.mkdtemp(prefix="artray-bench-train-")
    fmt, name = ("cnclip", "culti") if args.family == "cnclip" else ("artpedia", "artpedia")
    src = make_samples(os.path.join(root, "samples"), n=args.n)[name]
    import_corpus(ImportConfig(format=fmt, src=src, dest=os.path.join(root, name)))
    if args.full_size:
        if args.family != "longclip":
            p.error("--full-size is written for longclip here")
        model = _full_size_longclip(root)
    else:
        model = make_tiny(os.path.join(root, "tiny"))[args.family]
    cfg = TrainConfig(family=args.family, model=model, corpus=os.path.join(root, name), output=os.path.join(root, "runs"),
                      epochs=args.epochs, batch_size=args.batch_size, num_workers=args.workers, zero_stage=args.zero,
                      use_gpu=args.use_gpu, precision="bf16" if args.full_size else "fp32", lr=1e-4,
                      warmup_steps=0, max_failures=0, export=False, keep_checkpoints=args.epochs)
    ray.init(num_cpus=None if args.use_gpu else 2, include_dashboard=False, logging_level="ERROR")
    out = run_train(cfg)
    ray.shutdown()
    # the latest checkpoint holds every epoch's figures (the best one only those up to it)
    latest = sorted(glob.glob(os.path.join(out["run_path"], "checkpoint_epoch*")))[-1]
    with open(os.path.join(latest, "train_state.json"), encoding="utf-8") as f:
        state = json.load(f)
    epochs = state["history"][1:] or state["history"]
    artray_sps = statistics.median(h["samples_per_s"] for h in epochs)
    # Ray runs each worker with OMP_NUM_THREADS=1; the plain loop is timed with 1 and with 2 torch threads
    # (2 intra-op threads on tiny matrices can be far slower on a loaded 2-core machine).
    import torch

    plain = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        plain[threads] = plain_loop(cfg, args.epochs)
    plain_sps = max(plain.values())
    print(json.dumps({"family": args.family, "full_size": args.full_size, "workers": args.workers,
                      "zero": args.zero, "batch_size": args.batch_size, "n": args.n, "epochs": args.epochs,
                      "artray_epochs_samples_per_s": [h["samples_per_s"] for h in state["history"]],
                      "artray_samples_per_s": round(artray_sps, 2),
                      "plain_samples_per_s_1thread": round(plain[1], 2),
                      "plain_samples_per_s_2threads": round(plain[2], 2), "plain_samples_per_s": round(plain_sps, 2), "ratio": round(artray_sps / plain_sps, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
