"""Caption benchmark: artray's `run_caption` vs a bare `generate` loop, same model, same images, same settings.

    .venv/bin/python bench/caption.py --quick          # tiny LLaVA, 8 artworks x 1 preset: smoke run (< 1-2 min)
    .venv/bin/python bench/caption.py [--n 24] [--presets caption,query] [--max-new-tokens 32] [--rounds 2]
    .venv/bin/python bench/caption.py --full-size      # GPU only: LLaVA-1.5-7B architecture, random weights

One run, side by side:

1. writes the sample Artpedia corpus (`make_samples`, `--n` artworks) and imports it;
2. builds the model: the tiny LLaVA (`make_tiny`), or with ``--full-size`` a LLaVA-1.5-7B-shaped
   model (CLIP ViT-L/14-336 + a 32-layer, 4096-wide Llama; 7.1 B parameters) with random
   weights, saved once under the work dir; full size always generates exactly 200 tokens
   (EOS ignored), so tokens/s compare like for like;
3. per round, in an order that alternates:
   * **artray**: `run_caption` on a local Ray started once before timing (actor pool, batched
     left-padded generation, Parquet shards); wall time includes planning, the actors' start,
     imports, model load and committing the output;
   * **bare**: a fresh Python process: `load_mllm`, then for each batch of (image, preset)
     the processor and `model.generate` (same batch size, greedy, same max/min new tokens);
     timed from spawn to exit (imports and model load included);
4. checks both made one caption per (artwork, preset) and how many texts are identical.

Prints captions/s and generated tokens/s for both and the ratio artray / bare.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, machine_line, median, ratio, table, write_json  # noqa: E402

PRESETS = {"caption": "Caption this image",
           "query": "Generate a query for this image, suitable for text-to-image retrieval"}


def _full_size_llava(out: Path) -> str:
    """A LLaVA-1.5-7B-architecture folder with random fp16 weights (built on the GPU, ~14 GB on disk)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers import LlavaProcessor

    from artray.scaffold.tiny import tokenizers as tt
    from artray.scaffold.tiny.common import OPENAI_MEAN, OPENAI_STD

    if (out / "config.json").exists():
        return str(out)
    torch.manual_seed(0)
    tok = tt.llava_tokenizer()  # a small vocabulary is enough: ids stay below the model's 32064
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                       num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                                       hidden_act="quick_gelu"),
        text_config=LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                                rms_norm_eps=1e-5, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-2, pad_token_id=tok.pad_token_id)
    torch.set_default_dtype(torch.float16)
    with torch.device("cuda"):
        model = LlavaForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    print(f"full-size LLaVA: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters")
    model.save_pretrained(out, safe_serialization=True)
    LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                                      image_mean=OPENAI_MEAN, image_std=OPENAI_STD),
                   tokenizer=tok, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=tt.LLAVA_CHAT_TEMPLATE).save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return str(out)


def _bare(args: dict) -> None:
    """The bare loop (its own process): load once, then processor + generate per batch; writes texts as JSON."""
    import torch

    from artray import corpus, images
    from artray.models.mllm import load_mllm

    cuda = args["gpu"] and torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(args["threads"])
    bundle = load_mllm(args["model"], "cuda" if cuda else "cpu", torch.float16 if cuda else torch.float32)
    proc, tok = bundle.processor, bundle.processor.tokenizer
    rows = corpus.read_artworks(args["input"]).sort_by("artwork_id").to_pylist()
    items = [(r["artwork_id"], p, images.to_rgb(r["image"])) for r in rows for p in args["presets"]]
    kw = {"max_new_tokens": args["max_new_tokens"], "do_sample": False, "pad_token_id": tok.pad_token_id}
    if args["ignore_eos"]:
        kw["min_new_tokens"] = args["max_new_tokens"]
    texts, tokens = {}, 0
    for i in range(0, len(items), args["batch_size"]):
        batch = items[i:i + args["batch_size"]]
        inputs = proc(images=[im for _, _, im in batch], text=[bundle.prompt(PRESETS[p]) for _, p, _ in batch],
                      return_tensors="pt", padding=True).to(bundle.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(bundle.dtype)
        with torch.inference_mode():
            out = bundle.model.generate(**inputs, **kw)[:, inputs["input_ids"].shape[1]:]
        for (aid, preset, _), ids in zip(batch, out.tolist()):
            ids = ids[:ids.index(tok.eos_token_id)] if tok.eos_token_id in ids else ids
            tokens += len(ids)
            texts[f"{aid}|{preset}"] = tok.decode(ids, skip_special_tokens=True).strip()
    Path(args["output"]).write_text(json.dumps({"texts": texts, "tokens": tokens}), encoding="utf-8")


def _run_bare(args: dict) -> tuple[float, dict, int]:
    with Timer() as t:
        subprocess.run([sys.executable, __file__, "--_bare", json.dumps(args)], check=True)
    got = json.loads(Path(args["output"]).read_text(encoding="utf-8"))
    return t.s, got["texts"], got["tokens"]


def _run_artray(cfg) -> tuple[float, dict, int]:
    from artray.outputs import read_captions
    from artray.stages.caption import run_caption

    with Timer() as t:
        manifest = run_caption(cfg)
    rows = read_captions(cfg.output, exclude_flags=()).to_pylist()
    return t.s, {f"{r['artwork_id']}|{r['preset']}": r["text"] for r in rows}, manifest["generated_tokens"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=24, help="sample artworks")
    p.add_argument("--presets", default="caption,query", help="comma-separated: caption, query")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="8 artworks, one preset, one round, 16 tokens")
    p.add_argument("--full-size", action="store_true", help="LLaVA-1.5-7B architecture, random weights, 200 tokens, GPU")
    p.add_argument("--workdir", help="keep inputs/outputs here (default: a temp dir)")
    p.add_argument("--json", help="write every figure to this JSON file (bench/gpu.sh reads it)")
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
    from artray.stages.caption import CaptionConfig

    if a.full_size and not torch.cuda.is_available():
        print("--full-size needs a CUDA GPU (a 7B model generating 200 tokens would take hours on CPU)")
        return 2
    if a.quick:
        a.n, a.presets, a.rounds, a.max_new_tokens = 8, "caption", 1, 16
    if a.full_size:
        a.max_new_tokens, a.batch_size = 200, max(a.batch_size, 16)
    presets = [s.strip() for s in a.presets.split(",") if s.strip()]
    work = Path(a.workdir or tempfile.mkdtemp(prefix="artray-bench-caption-"))
    src = make_samples(str(work / "samples"), n=a.n)["artpedia"]
    inp = str(work / "corpus")
    import_corpus(ImportConfig(format="artpedia", src=src, dest=inp))
    model = _full_size_llava(work / "llava-1.5-7b-random") if a.full_size else make_tiny(str(work / "tiny"))["llava"]

    cpus = os.cpu_count() or 2
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    print(machine_line())
    rows, ratios, runs = [], [], []
    for rnd in range(a.rounds):
        # CPU: as many one-thread actors as CPUs fit beside the write tasks; bare: one process, one thread per CPU.
        cfg = CaptionConfig(input=inp, output=str(work / f"artray-r{rnd}"), model=model, presets=presets,
                            max_new_tokens=a.max_new_tokens, ignore_eos=a.full_size, batch_size=a.batch_size,
                            dtype="float16" if a.full_size else "auto",
                            cpus_per_actor=1.0 if a.full_size else (cpus - 0.5) / cpus, torch_threads=1)
        bare_args = {"model": model, "input": inp, "output": str(work / f"bare-r{rnd}.json"), "presets": presets,
                     "max_new_tokens": a.max_new_tokens, "ignore_eos": a.full_size, "batch_size": a.batch_size,
                     "gpu": a.full_size, "threads": cpus}
        order = ("artray", "bare") if rnd % 2 == 0 else ("bare", "artray")
        res = {tool: _run_artray(cfg) if tool == "artray" else _run_bare(bare_args) for tool in order}
        (t_art, txt_art, tok_art), (t_bare, txt_bare, tok_bare) = res["artray"], res["bare"]
        n = len(txt_art)
        if n != len(txt_bare) or n != a.n * len(presets):
            print(f"round {rnd}: artray made {n} captions, bare {len(txt_bare)}, expected {a.n * len(presets)}")
            return 1
        same = sum(txt_art[k] == txt_bare.get(k) for k in txt_art)
        ratios.append(ratio(n / t_art, n / t_bare))
        rows.append([rnd, n, t_art, t_bare, n / t_art, n / t_bare, tok_art / t_art, tok_bare / t_bare, ratios[-1],
                     f"{same}/{n}"])
        runs.append({"captions": n, "identical": same, "artray_wall_s": round(t_art, 3), "bare_wall_s": round(t_bare, 3),
                     "artray_tokens": tok_art, "bare_tokens": tok_bare})
    print(table(["round", "captions", "artray s", "bare s", "artray cap/s", "bare cap/s", "artray tok/s",
                 "bare tok/s", "ratio", "identical"], rows, digits=3))
    setup = ("full-size LLaVA-1.5-7B (random weights), fp16, GPU, 200 tokens (EOS ignored)" if a.full_size
             else f"tiny LLaVA, fp32, CPU, greedy, up to {a.max_new_tokens} tokens")
    print(f"{setup}; {a.n} artworks x {len(presets)} presets, batch {a.batch_size}; wall times include start-up "
          f"and model load; ratio artray/bare captions/s (median of {a.rounds}): {median(ratios):.3f}")
    report = {"part": "caption", "full_size": a.full_size, "setup": setup, "backend": "transformers",
              "device": torch.cuda.get_device_name() if a.full_size else "CPU", "rounds": runs}
    for side in ("artray", "bare"):
        report[f"{side}_captions_per_s"] = median([r["captions"] / r[f"{side}_wall_s"] for r in runs])
        report[f"{side}_tokens_per_s"] = median([r[f"{side}_tokens"] / r[f"{side}_wall_s"] for r in runs])
    write_json(a.json, report)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    sys.exit(main())
