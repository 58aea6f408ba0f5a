"""Embedding benchmark: `artray embed` on Ray Data vs a bare loop of the same encoder over the same images.

    .venv/bin/python bench/embed.py --cpu --n 24               # tiny OpenAI-layout CLIP, CPU: smoke run
    .venv/bin/python bench/embed.py --full-size --n 1000       # on a GPU: CLIP ViT-L/14, random weights, fp16

One run, side by side, images only (the corpus texts are left out on both sides):

1. writes the sample Artpedia corpus (`make_samples`, `--n` artworks) and imports it;
2. builds the encoder: the tiny OpenAI-layout CLIP of `make_tiny` (``clip-77``), or with
   ``--full-size`` a CLIP ViT-L/14 with random weights (open_clip ``ViT-L-14-quickgelu``, the
   architecture of OpenAI's ViT-L/14, 428M parameters) saved as an OpenAI-layout safetensors file;
   both load through the ``open_clip`` family of ``artray.encoders``;
3. per round, in an order that alternates:
   * **artray**: `run_embed` (read tasks → one `_EmbedBatch` actor pool → Parquet shards) on a local
     Ray started once before timing (Ray Data's system actors warmed);
   * **bare**: a fresh Python process: `load_encoder` (same family, checkpoint, device, dtype), then
     for each batch of `--batch-size` artworks decode (`to_rgb`) and `encode_images`; timed from
     spawn to exit;
   and with ``--startup-n K`` each side again on a K-artwork sample corpus;
4. checks both embedded every image and that the vectors agree (cosine of each pair).

Figures: wall img/s (start-up and model load included on both sides) and, with ``--startup-n``, the
steady state from the two sizes (``_common.steady_from_two_runs``: steady img/s = extra images / extra
seconds, start-up = the small run less its images at that rate), each with the ratio artray / bare.
``--json FILE`` writes them for bench/gpu_table.py.
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
from _common import Timer, machine_line, median, ratio, steady_from_two_runs, table, write_json  # noqa: E402


def full_size_clip_l(out: Path) -> str:
    """A random CLIP ViT-L/14 (OpenAI layout, quick-GELU) as a safetensors file; built once."""
    path = out / "clip-L-14-random.safetensors"
    if path.exists():
        return str(path)
    import open_clip
    import torch

    from artray.models.weights import save_state_dict

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    model = open_clip.create_model("ViT-L-14-quickgelu", pretrained=None)
    save_state_dict(dict(model.state_dict()), str(path))
    return str(path)


def _bare(args: dict) -> None:
    """The bare loop (its own process): load the encoder, then decode + encode per batch; writes vectors."""
    import numpy as np
    import torch

    from artray import corpus, images
    from artray.families import load_encoder

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    encoder = load_encoder("open_clip", args["model"], args["device"], "auto")
    encoder.max_batch = args["batch_size"]
    rows = corpus.read_artworks(args["input"], columns=["artwork_id", "image"]).to_pylist()
    ids, vectors = [], []
    for i in range(0, len(rows), args["batch_size"]):
        batch = rows[i:i + args["batch_size"]]
        vectors.append(encoder.encode_images([images.to_rgb(r["image"]) for r in batch]))
        ids += [r["artwork_id"] for r in batch]
    out = Path(args["output"])
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "vectors.npy", np.concatenate(vectors))
    (out / "meta.json").write_text(json.dumps({"ids": ids}))


def _run_bare(args: dict) -> tuple[float, dict]:
    with Timer() as t:
        subprocess.run([sys.executable, __file__, "--_bare", json.dumps(args)], check=True)
    import numpy as np

    meta = json.loads((Path(args["output"]) / "meta.json").read_text())
    vectors = np.load(Path(args["output"]) / "vectors.npy")
    return t.s, dict(zip(meta["ids"], vectors))


def _run_artray(cfg) -> tuple[float, dict]:
    import numpy as np

    from artray.outputs import read_embeddings
    from artray.stages.embed import run_embed

    with Timer() as t:
        run_embed(cfg)
    table_ = read_embeddings(cfg.output, columns=["id", "kind", "vector"]).to_pylist()
    vectors = {r["id"]: np.asarray(r["vector"], np.float32) for r in table_ if r["kind"] == "image"}
    return t.s, vectors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60, help="sample artworks (all of them are embedded)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass, both sides")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads on CPU, both sides (default 1)")
    p.add_argument("--full-size", action="store_true", help="CLIP ViT-L/14 architecture, random weights (GPU)")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even with a GPU at hand")
    p.add_argument("--workdir", help="keep inputs/outputs here (default: a temp dir)")
    p.add_argument("--json", help="write every figure to this JSON file (bench/gpu.sh reads it)")
    p.add_argument("--startup-n", type=int, default=0,
                   help="also run each side on a corpus of this many sample artworks (>= 3): steady state apart from start-up")
    p.add_argument("--_bare", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._bare:
        _bare(json.loads(a._bare))
        return 0

    import numpy as np
    import ray
    import torch

    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.scaffold.sample_corpora import make_samples
    from artray.scaffold.tiny import make_tiny
    from artray.stages.embed import EmbedConfig

    gpu = torch.cuda.is_available() and not a.cpu
    if a.full_size and not gpu and not a.cpu:
        print("--full-size needs a CUDA GPU (--cpu to insist)")
        return 2
    work = Path(a.workdir or tempfile.mkdtemp(prefix="artray-bench-embed-"))
    inp = str(work / "corpus")
    if not (Path(inp) / "_manifest.json").exists():
        import_corpus(ImportConfig(format="artpedia", src=make_samples(str(work / "samples"), n=a.n)["artpedia"],
                                   dest=inp))
    small_inp = str(work / "corpus-small")
    if a.startup_n and not (Path(small_inp) / "_manifest.json").exists():
        import_corpus(ImportConfig(format="artpedia", src=make_samples(str(work / "samples-small"), n=a.startup_n)["artpedia"],
                                   dest=small_inp))
    from artray import corpus

    expected = corpus.read_artworks(inp, columns=["artwork_id"]).num_rows  # make_samples writes *about* n
    model = full_size_clip_l(work / "clip-L") if a.full_size else make_tiny(str(work / "tiny"))["clip-77"]
    device = "cuda" if gpu else "cpu"
    threads = None if gpu else a.threads
    if threads:  # the same OpenMP pool size for the actor (Ray's workers inherit it) and the bare process
        os.environ["OMP_NUM_THREADS"] = str(threads)
    cpus = os.cpu_count() or 2
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    ray.data.range(2).map_batches(lambda b: b, num_cpus=0.25).materialize()  # Ray Data's system actors, as in augment
    print(machine_line())
    rows, runs = [], []
    for rnd in range(a.rounds):
        cfg = EmbedConfig(input=inp, output=str(work / f"artray-r{rnd}"), family="open_clip", checkpoint=model,
                          texts=False, device=device, batch_size=a.batch_size, actors=1)
        bare_args = {"model": model, "input": inp, "output": str(work / f"bare-r{rnd}"), "device": device,
                     "batch_size": a.batch_size, "threads": threads}
        for stale in (cfg.output, bare_args["output"]):  # a kept --workdir must not make artray resume
            shutil.rmtree(stale, ignore_errors=True)
        order = ("artray", "bare") if rnd % 2 == 0 else ("bare", "artray")
        res, small = {}, {}
        for tool in order:
            res[tool] = _run_artray(cfg) if tool == "artray" else _run_bare(bare_args)
            if a.startup_n:  # the same run on the small corpus, right after: the start-up reference
                if tool == "artray":
                    s_cfg = cfg.model_copy(update={"input": small_inp, "output": cfg.output + "-small"})
                    shutil.rmtree(s_cfg.output, ignore_errors=True)
                    t_s, v_s = _run_artray(s_cfg)
                else:
                    shutil.rmtree(bare_args["output"] + "-small", ignore_errors=True)
                    t_s, v_s = _run_bare({**bare_args, "input": small_inp, "output": bare_args["output"] + "-small"})
                small[tool] = (len(v_s), t_s)
        (t_art, v_art), (t_bare, v_bare) = res["artray"], res["bare"]
        n = len(v_art)
        if n != len(v_bare) or n != expected:
            print(f"round {rnd}: artray embedded {n} images, bare {len(v_bare)}, expected {expected}: not comparable")
            return 1
        s_art, s_bare = ({**steady_from_two_runs(*small[k], n, t), "small_wall_s": round(small[k][1], 3),
                          "small_images": small[k][0]} if small else {"startup_s": None, "steady_per_s": None,
                                                                      "steady_items": 0}
                         for k, t in (("artray", t_art), ("bare", t_bare)))
        cos = min(float(np.dot(v_art[k], v_bare[k])) for k in v_art)
        runs.append({"images": n, "artray_wall_s": round(t_art, 3), "bare_wall_s": round(t_bare, 3),
                     "artray": s_art, "bare": s_bare, "min_cosine": round(cos, 5)})
        rows.append([rnd, n, n / t_art, n / t_bare, ratio(n / t_art, n / t_bare), s_art["startup_s"],
                     s_bare["startup_s"], s_art["steady_per_s"], s_bare["steady_per_s"],
                     ratio(s_art["steady_per_s"], s_bare["steady_per_s"]), cos])
    print(table(["round", "images", "artray img/s", "bare img/s", "ratio", "artray start-up s", "bare start-up s",
                 "artray steady img/s", "bare steady img/s", "steady ratio", "min cosine"], rows, digits=3))
    setup = ("full-size CLIP ViT-L/14 (random weights)" if a.full_size else "tiny OpenAI-layout CLIP (clip-77)")
    setup += f", fp16, {torch.cuda.get_device_name()}" if gpu else f", fp32, CPU, {threads} torch thread(s) each"
    print(f"{setup}; {expected} images, batch {a.batch_size}, 1 actor; wall times include start-up and model load")
    report = {"part": "embed", "full_size": a.full_size, "setup": setup, "batch_size": a.batch_size,
              "device": torch.cuda.get_device_name() if gpu else "CPU", "rounds": runs}
    for side in ("artray", "bare"):
        report[f"{side}_img_per_s"] = median([r["images"] / r[f"{side}_wall_s"] for r in runs])
        report[f"{side}_steady_img_per_s"] = median([r[side]["steady_per_s"] for r in runs])
        report[f"{side}_startup_s"] = median([r[side]["startup_s"] for r in runs])
    write_json(a.json, report)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    sys.exit(main())
