"""Augment benchmark: artray's `run_augment` vs a bare diffusers loop, same images, same pipeline.

    .venv/bin/python bench/augment.py [--n 50] [--variants 4] [--steps 20] [--long-side 256] [--rounds 1]
    .venv/bin/python bench/augment.py --full-size      # on a GPU: SD-1.5 architecture, 576 px, 40 steps, fp16
    .venv/bin/python bench/augment.py --batching 4     # also: 4 images per pipeline call vs one per call
    .venv/bin/python bench/augment.py --full-size --batch-size 8 --compile --batching 8   # the GPU fast path

One run, side by side:

1. writes the sample Artpedia corpus (`make_samples`, `--n` artworks, ~70% train) and imports it;
2. builds the model: the tiny SD img2img checkpoint (`make_tiny`), or with ``--full-size`` an
   SD-1.5-architecture pipeline with random weights (same compute as the real one; 576 px,
   40 steps, fp16 on the GPU);
3. per round, in an order that alternates:
   * **artray**: `run_augment` (prepare → Generate actor pool → encode → Parquet shards) on a
     local Ray started once before timing (with Ray Data's system actors); its wall time
     includes planning, the actor's start, imports and model load, and committing the output;
   * **bare**: a fresh Python process (at the niceness of Ray's workers) that loads the same pipeline with `load_img2img`, then
     for each train artwork decodes and resizes the image exactly as artray does and calls
     the pipeline once for its M variants (one ``torch.Generator`` per image, artray's seeds),
     and writes PNG files; timed from spawn to exit (imports and model load included);
4. checks both made the same number of images and whether they are byte-identical (they
   are when artray's batches are one artwork each: ``batch_size == variants``, one size).

Prints images/s for both and the ratio artray / bare (goal: >= 0.9). With ``--startup-n K`` each side
also runs on a K-artwork sample corpus in the same round, and the two wall times give the steady state
apart from start-up (``_common.steady_from_two_runs``): steady img/s = extra images / extra seconds of
the big run over the small one, start-up = the small run's time less its images at that rate;
image-steps/s = steady img/s x the denoising steps each image gets. ``--batch-size`` and ``--compile`` set
artray's batch size and torch.compile of the UNet (GPU); the bare loop stays the plain recipe (one call
per artwork), so the ratio is then the fast path's speed-up over it. ``--batching B`` times, in this
process with artray's `Generate`, B equal-size images per pipeline call against one image per call
(same prompts, seeds and inits; warm-up calls excluded) and prints both rates, their ratio and the
largest pixel difference between the two (batched kernels differ in their last bits). ``--json FILE`` writes every figure
for bench/gpu_table.py. On CPU both sides run
one torch thread (`--threads`, exported as OMP_NUM_THREADS to the actor and the bare process
alike): on a shared 2-core machine two threads make either side swing by 10x between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, machine_line, median, ratio, steady_from_two_runs, table, write_json


def _full_size_sd15(out: Path) -> str:
    """An SD-1.5-architecture img2img folder with random weights (UNet 860M, VAE 84M, CLIP-L text 123M)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from artray.scaffold.tiny import tokenizers as tt

    if (out / "model_index.json").exists():
        return str(out)
    torch.manual_seed(0)
    tokenizer = tt.clip_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        projection_dim=768, hidden_act="quick_gelu"))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                                block_out_channels=(320, 640, 1280, 1280))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=512)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return str(out)


def _bare(args: dict) -> None:
    """The bare loop (runs in its own process): load, then per artwork one pipeline call for its M variants."""
    import diffusers
    import torch
    import transformers
    from PIL import Image

    from artray import corpus, images
    from artray.models.diffusion import load_img2img
    from artray.stages.augment_generate import encode_image
    from artray.stages.augment_plan import target_size, variant_seed

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if args["threads"]:
        torch.set_num_threads(args["threads"])
    cuda = torch.cuda.is_available() and args["gpu"]
    bundle = load_img2img(args["model"], "cuda" if cuda else "cpu", torch.float16 if cuda else torch.float32)
    rows = [r for r in corpus.read_artworks(args["input"]).sort_by("artwork_id").to_pylist() if r["split"] == "train"]
    out = Path(args["output"])
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        im = images.to_rgb(r["image"])
        size = target_size(*im.size, args["long_side"])
        init = im.resize(size, Image.Resampling.LANCZOS)
        m = args["variants"]
        gens = [torch.Generator("cpu").manual_seed(variant_seed(0, r["artwork_id"], v)) for v in range(m)]
        with torch.inference_mode():
            res = bundle.pipeline(prompt=[r["captions"][0]] * m, image=[init] * m, strength=0.34, guidance_scale=10.0,
                                  num_inference_steps=args["steps"], generator=gens, output_type="np").images
        for v, px in enumerate((res * 255).round().clip(0, 255).astype("uint8")):
            (out / f"{r['artwork_id']}#{v}.png").write_bytes(encode_image(px.tobytes(), size, "png", 95))


def _batching(model: str, gpu: bool, threads: int | None, long_side: int, steps: int, batch: int, images: int,
              compile_unet: bool, prompts: list[str]) -> dict:
    """img/s of `batch` images per pipeline call against one per call, and the largest pixel difference."""
    import numpy as np
    import torch
    from PIL import Image

    from artray.stages.augment_generate import Generate
    from artray.stages.augment_plan import target_size
    from artray.storage import StorageOptions

    gen = Generate(model=model, options=StorageOptions(), use_gpu=gpu, dtype="float16" if gpu else "float32",
                   sampler="euler_a", strength=0.34, guidance=10.0, steps=steps, filter_model=None, filter_threshold=0,
                   threads=threads, fast_path={"channels_last": gpu, "compile_unet": compile_unet})
    w, h = target_size(4, 3, long_side)
    rng = np.random.default_rng(0)
    inits = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(images)]
    prompts = [prompts[i % len(prompts)] for i in range(images)]

    def sync():
        if gpu:
            torch.cuda.synchronize()

    gen._generate(prompts[:1], inits[:1], [0])  # warm-up (and compile) at both batch sizes, not timed
    gen._generate(prompts[:batch], inits[:batch], list(range(batch)))
    sync()
    with Timer() as one:
        single = [gen._generate([p], [im], [i])[0] for i, (p, im) in enumerate(zip(prompts, inits))]
        sync()
    with Timer() as many:
        batched = [px for s in range(0, images, batch) for px in
                   gen._generate(prompts[s:s + batch], inits[s:s + batch], list(range(s, min(s + batch, images))))]
        sync()
    diff = max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(single, batched))
    return {"batch": batch, "images": images, "size": f"{w}x{h}", "unbatched_img_per_s": images / one.s,
            "batched_img_per_s": images / many.s, "ratio": ratio(images / many.s, images / one.s),
            "max_pixel_diff": diff, "compile": compile_unet}


def _worker_niceness() -> None:
    """Run the bare process at the niceness Ray gives its worker processes (15 unless RAY_worker_niceness
    says otherwise), so that on a shared machine both sides yield to other people's work alike."""
    os.nice(int(os.environ.get("RAY_worker_niceness", "15")))


def _run_bare(args: dict) -> tuple[float, dict[str, bytes]]:
    with Timer() as t:
        subprocess.run([sys.executable, __file__, "--_bare", json.dumps(args)], check=True, preexec_fn=_worker_niceness)
    files = {p.stem: p.read_bytes() for p in Path(args["output"]).glob("*.png")}
    return t.s, files


def _small_run(tool: str, cfg, bare_args: dict, small_inp: str) -> tuple[int, float]:
    """(images, wall s) of one side on the small corpus: the start-up reference of the steady state."""
    if tool == "artray":
        small = cfg.model_copy(update={"input": small_inp, "output": cfg.output + "-small"})
        shutil.rmtree(small.output, ignore_errors=True)
        t, imgs, _ = _run_artray(small)
    else:
        out = bare_args["output"] + "-small"
        shutil.rmtree(out, ignore_errors=True)
        t, imgs = _run_bare({**bare_args, "input": small_inp, "output": out})
    return len(imgs), t


def _run_artray(cfg) -> tuple[float, dict[str, bytes], dict]:
    from artray import corpus, storage
    from artray.schema import VARIANT_SCHEMA
    from artray.stages.augment import run_augment

    with Timer() as t:
        manifest = run_augment(cfg)
    table = corpus.read_table(storage.join(cfg.output, "variants"), VARIANT_SCHEMA)
    return t.s, dict(zip(table["variant_id"].to_pylist(), table["image"].to_pylist())), manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50, help="sample artworks (about 70%% are train)")
    p.add_argument("--variants", type=int, default=4)
    p.add_argument("--steps", type=int, help="default 20; 40 with --full-size (the published recipe)")
    p.add_argument("--long-side", type=int, help="default 256; 576 with --full-size (the published recipe)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads on both sides on CPU (default 1: on a shared 2-core machine two threads "
                        "swing 10x between runs)")
    p.add_argument("--full-size", action="store_true", help="SD-1.5 architecture, random weights, 576 px, 40 steps")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU (or --full-size) at hand")
    p.add_argument("--batch-size", type=int, help="artray's batch_size (default: --variants, one artwork per batch)")
    p.add_argument("--compile", action="store_true", help="artray (and --batching): torch.compile the UNet (GPU)")
    p.add_argument("--batching", type=int, default=0, metavar="B",
                   help="also time B images per pipeline call against one per call, in-process")
    p.add_argument("--batching-images", type=int, help="images for --batching (default 4 x B)")
    p.add_argument("--model-cache", help="build/reuse the --full-size model here (default: under the workdir)")
    p.add_argument("--workdir", help="keep inputs/outputs here (default: a temp dir)")
    p.add_argument("--json", help="write every figure to this JSON file (bench/gpu.sh reads it)")
    p.add_argument("--startup-n", type=int, default=0,
                   help="also run each side on a corpus of this many sample artworks (>= 3): steady state apart from start-up")
    p.add_argument("--_bare", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._bare:
        _bare(json.loads(a._bare))
        return 0

    import ray
    import torch

    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.scaffold.sample_corpora import make_samples
    from artray.scaffold.tiny import make_tiny
    from artray.stages.augment import AugmentConfig

    gpu = torch.cuda.is_available() and not a.cpu
    if a.full_size and not gpu and not a.cpu:
        print("--full-size needs a CUDA GPU (the full SD-1.5 architecture takes hours on CPU; --cpu to insist)")
        return 2
    a.long_side = a.long_side or (576 if a.full_size else 256)
    a.steps = a.steps or (40 if a.full_size else 20)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="artray-bench-augment-"))
    src = make_samples(str(work / "samples"), n=a.n)["artpedia"]
    inp = str(work / "corpus")
    import_corpus(ImportConfig(format="artpedia", src=src, dest=inp))
    small_inp = str(work / "corpus-small")
    if a.startup_n:
        import_corpus(ImportConfig(format="artpedia", src=make_samples(str(work / "samples-small"), n=a.startup_n)["artpedia"],
                                   dest=small_inp))
    if a.full_size:
        model = _full_size_sd15(Path(a.model_cache) if a.model_cache else work / "sd15-random")
    else:
        model = make_tiny(str(work / "tiny"))["sd-img2img"]
    if a.compile and not gpu:
        print("--compile needs a CUDA GPU (artray compiles the UNet on GPU actors only)")
        return 2

    cpus = os.cpu_count() or 2
    threads = None if gpu else a.threads
    if threads:  # the same OpenMP pool size for the actor (Ray's workers inherit it) and the bare process
        os.environ["OMP_NUM_THREADS"] = str(threads)
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    # Ray Data's own actors (stats, autoscaling) live as long as the cluster: start them before timing,
    # as on a cluster that has run any Ray Data job before (cold, they add ~15 s on 2 busy cores).
    ray.data.range(2).map_batches(lambda b: b, num_cpus=0.25).materialize()
    print(machine_line())
    rows, ratios, steady_rows = [], [], []
    denoise = min(int(a.steps * 0.34), a.steps)  # img2img at strength 0.34 runs this many of the steps
    report = {"part": "augment", "full_size": a.full_size, "device": torch.cuda.get_device_name() if gpu else "CPU",
              "long_side": a.long_side, "steps": a.steps, "denoising_steps": denoise, "variants": a.variants,
              "rounds": []}
    for rnd in range(a.rounds):
        cfg = AugmentConfig(input=inp, output=str(work / f"artray-r{rnd}"), model=model, variants=a.variants,
                            steps=a.steps, long_side=a.long_side, batch_size=a.batch_size or a.variants,
                            compile=a.compile,
                            cpus_per_actor=1.0 if gpu else max(1.0, cpus - 0.75), torch_threads=threads,
                            gpus_per_actor=None if gpu else 0)
        bare_args = {"model": model, "input": inp, "output": str(work / f"bare-r{rnd}"), "variants": a.variants,
                     "steps": a.steps, "long_side": a.long_side, "gpu": gpu, "threads": threads}
        for stale in (cfg.output, bare_args["output"]):  # a kept --workdir must not make artray resume
            shutil.rmtree(stale, ignore_errors=True)
        order = ("artray", "bare") if rnd % 2 == 0 else ("bare", "artray")
        res, small = {}, {}
        for tool in order:
            res[tool] = _run_artray(cfg)[:2] if tool == "artray" else _run_bare(bare_args)
            if a.startup_n:
                small[tool] = _small_run(tool, cfg, bare_args, small_inp)
        (t_art, img_art), (t_bare, img_bare) = res["artray"], res["bare"]
        n = len(img_art)
        if n != len(img_bare) or n == 0:
            print(f"round {rnd}: artray made {n} images, bare {len(img_bare)}: not comparable")
            return 1
        same = sum(img_art[k] == img_bare.get(k) for k in img_art)
        ratios.append(ratio(n / t_art, n / t_bare))
        rows.append([rnd, n, n / t_art, n / t_bare, ratios[-1], f"{same}/{n}"])
        s_art, s_bare = ({**steady_from_two_runs(*small[k], n, t), "small_wall_s": round(small[k][1], 3),
                          "small_images": small[k][0]} if small else {"startup_s": None, "steady_per_s": None,
                                                                      "steady_items": 0}
                         for k, t in (("artray", t_art), ("bare", t_bare)))
        steady_rows.append([rnd, s_art["startup_s"], s_bare["startup_s"], s_art["steady_per_s"], s_bare["steady_per_s"],
                            ratio(s_art["steady_per_s"], s_bare["steady_per_s"]), s_art["steady_items"]])
        report["rounds"].append({"images": n, "byte_identical": same, "artray_wall_s": round(t_art, 3),
                                 "bare_wall_s": round(t_bare, 3), "artray": s_art, "bare": s_bare})
    print(table(["round", "images", "artray img/s", "bare img/s", "ratio", "byte-identical"], rows, digits=3))
    print(f"steady state (two sizes: {a.startup_n} and {a.n} sample artworks; start-up = a run of zero images):")
    print(table(["round", "artray start-up s", "bare start-up s", "artray steady img/s", "bare steady img/s",
                 "ratio", "steady images"], steady_rows, digits=3))
    setup = "full-size SD-1.5 (random weights)" if a.full_size else "tiny SD img2img"
    setup += f", fp16, {torch.cuda.get_device_name()}" if gpu else f", fp32, CPU, {threads} torch threads each"
    batch = a.batch_size or a.variants
    print(f"{setup}; {a.long_side} px long side, {a.steps} steps (strength 0.34), {a.variants} variants/artwork, "
          f"artray batch {batch}{', compiled UNet' if a.compile else ''} (bare: {a.variants} per call); "
          f"ratio artray/bare (median of {a.rounds}): {median(ratios):.3f} (goal >= 0.9)")
    report.update({"batch_size": batch, "compile": a.compile})
    if a.batching:
        from artray import corpus

        captions = [r["captions"][0] for r in corpus.read_artworks(inp).to_pylist() if r["captions"]]
        b = _batching(model, gpu, threads, a.long_side, a.steps, a.batching, a.batching_images or 4 * a.batching,
                      a.compile, captions)
        print(table(["images", "size", "batch", "one per call img/s", f"{a.batching} per call img/s", "ratio",
                     "max pixel diff"], [[b["images"], b["size"], b["batch"], b["unbatched_img_per_s"],
                                          b["batched_img_per_s"], b["ratio"], b["max_pixel_diff"]]], digits=3))
        print(f"batched vs unbatched ({setup}{', compiled UNet' if a.compile else ''}): {b['ratio']:.3f}x")
        report["batching"] = b
    for side in ("artray", "bare"):
        rates = [r[side]["steady_per_s"] for r in report["rounds"]]
        report[f"{side}_img_per_s"] = median([r["images"] / r[f"{side}_wall_s"] for r in report["rounds"]])
        report[f"{side}_steady_img_per_s"] = median(rates)
        report[f"{side}_startup_s"] = median([r[side]["startup_s"] for r in report["rounds"]])
        steady_rate_ = report[f"{side}_steady_img_per_s"]
        report[f"{side}_steady_image_steps_per_s"] = steady_rate_ * denoise if steady_rate_ is not None else None
    report["setup"] = setup
    write_json(a.json, report)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    sys.exit(main())
