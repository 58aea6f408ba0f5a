"""Trainer pieces that need no Ray: presets and their precedence, the alpha sampler (by counting),
caption-source mixing with flagged captions dropped, the leakage guard, the DeepSpeed config and
the 0-dim parameter fix."""

from __future__ import annotations

import random

import pytest
import torch

from artray.config import ConfigError, load_config
from artray.corpus import ShardWriter
from artray.schema import CAPTION_SCHEMA, VARIANT_SCHEMA
from artray.train.config import TrainConfig
from artray.train.data import LeakageError, build_train_table, draw_image
from artray.train.engine import deepspeed_config, reshape_0dim, unshape_0dim

BASE = {"model": "m.pt", "corpus": "c", "output": "o"}


@pytest.fixture(scope="module")
def artpedia(tmp_path_factory) -> str:
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.scaffold.sample_corpora import make_samples

    root = tmp_path_factory.mktemp("train-data")
    src = make_samples(str(root / "samples"), n=12)["artpedia"]
    import_corpus(ImportConfig(format="artpedia", src=src, dest=str(root / "artpedia")))
    return str(root / "artpedia")


def _splits(uri: str) -> dict[str, str]:
    from artray.corpus import read_artworks

    t = read_artworks(uri, columns=["artwork_id", "split"])
    return dict(zip(t["artwork_id"].to_pylist(), t["split"].to_pylist()))


def _write_variants(uri: str, parents: list[str], m: int = 2) -> None:
    w = ShardWriter(f"{uri}/variants", VARIANT_SCHEMA)
    for pid in parents:
        for v in range(m):
            w.add({"variant_id": f"{pid}#{v}", "parent_id": pid, "variant": v, "split": "train", "image": f"{pid}-{v}".encode(),
                       "width": 8, "height": 8, "seed": v, "prompt": "p", "prompt_truncated": False, "model": "tiny", "strength": 0.34,
                       "guidance": 10.0, "steps": 4, "sampler": "euler_a", "similarity": None, "passed_filter": None})
    w.flush()


def _write_captions(uri: str, rows: list[tuple[str, str, list[str]]], captioner: str = "llava") -> None:
    w = ShardWriter(f"{uri}/captions", CAPTION_SCHEMA)
    for aid, text, flags in rows:
        w.add({"caption_id": f"{aid}|{captioner}|caption", "artwork_id": aid, "split": "train", "captioner": captioner,
                   "preset": "caption", "prompt": "Caption this image", "text": text, "flags": flags, "model": "tiny",
                   "revision": None, "generation": "{}"})
    w.flush()


def test_presets_fill_unset_keys_only(tmp_path):
    cfg = TrainConfig(**BASE, preset="infonce")
    assert (cfg.optimizer, cfg.lr, cfg.eps, cfg.betas, cfg.schedule, cfg.early_stop) == \
        ("adabelief", 5e-7, 1e-16, (0.9, 0.995), "onecycle", True)
    assert TrainConfig(**BASE, preset="infonce", lr=1e-5).lr == 1e-5
    cn = TrainConfig(**{**BASE, "preset": "cnclip", "context_length": 128})
    assert (cn.family, cn.lr, cn.weight_decay, cn.warmup_steps, cn.epochs, cn.context_length) == \
        ("cnclip", 5e-5, 1e-3, 100, 3, 128)
    yaml_file = tmp_path / "t.yaml"
    yaml_file.write_text("preset: longclip\nmodel: m.pt\ncorpus: c\noutput: o\nepochs: 1\n")
    cfg = load_config(TrainConfig, str(yaml_file), {"lr": 2e-6})
    assert (cfg.loss, cfg.label_smoothing, cfg.pca_dim, cfg.epochs, cfg.lr) == ("longclip", 0.1, 32, 1, 2e-6)
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config(TrainConfig, None, {**BASE, "preset": "nope"})
    with pytest.raises(ConfigError, match="alpha > 0 needs variants"):
        load_config(TrainConfig, None, {**BASE, "alpha": 0.5})


def test_alpha_zero_never_and_one_always_shows_a_variant():
    rng = random.Random(0)
    with_v = {"image": b"real", "variants": [b"v0", b"v1", b"v2"]}
    without = {"image": b"real", "variants": []}
    assert sum(draw_image(with_v, 0.0, rng)[1] for _ in range(1000)) == 0
    drawn = [draw_image(with_v, 1.0, rng) for _ in range(3000)]
    assert all(v for _, v in drawn)
    counts = {b: sum(1 for x, _ in drawn if x == b) for b in (b"v0", b"v1", b"v2")}
    assert all(800 < c < 1200 for c in counts.values()), counts  # uniform over the variants
    assert all(draw_image(without, 1.0, rng) == (b"real", False) for _ in range(100))
    half = sum(draw_image(with_v, 0.5, rng)[1] for _ in range(4000))
    assert 1800 < half < 2200


def test_caption_sources_and_flagged_captions(artpedia, tmp_path):
    splits = _splits(artpedia)
    train = sorted(a for a, s in splits.items() if s == "train")
    caps = str(tmp_path / "caps")
    _write_captions(caps, [(train[0], "generated zero", []), (train[1], "I cannot help", ["refusal"])])
    both = build_train_table(TrainConfig(**{**BASE, "corpus": artpedia, "captions": caps, "captioner": "llava",
                                            "caption_source": "both"})).to_pylist()
    by_id = {r["artwork_id"]: r for r in both}
    assert len(both) == len(train)
    assert by_id[train[0]]["captions"][-1] == "generated zero" and len(by_id[train[0]]["captions"]) == 2
    assert "I cannot help" not in by_id[train[1]]["captions"]
    only = build_train_table(TrainConfig(**{**BASE, "corpus": artpedia, "captions": caps, "captioner": "llava",
                                            "caption_source": "captioner"})).to_pylist()
    assert [(r["artwork_id"], r["captions"]) for r in only] == [(train[0], ["generated zero"])]
    with pytest.raises(ValueError, match="no captions by captioner 'blip'"):
        build_train_table(TrainConfig(**{**BASE, "corpus": artpedia, "captions": caps, "captioner": "blip",
                                         "caption_source": "both"}))


def test_variants_join_on_parent_and_leakage_is_refused_by_name(artpedia, tmp_path):
    splits = _splits(artpedia)
    train = sorted(a for a, s in splits.items() if s == "train")
    test_id = min(a for a, s in splits.items() if s == "test")
    good = str(tmp_path / "good")
    _write_variants(good, train[:2])
    table = build_train_table(TrainConfig(**{**BASE, "corpus": artpedia, "variants": good, "alpha": 0.5}))
    variants = {r["artwork_id"]: r["variants"] for r in table.to_pylist()}
    assert variants[train[0]] == [f"{train[0]}-0".encode(), f"{train[0]}-1".encode()]
    assert variants[train[2]] == []
    bad = str(tmp_path / "bad")
    _write_variants(bad, [train[0], test_id])
    with pytest.raises(LeakageError, match=f"variants of a test artwork, '{test_id}'"):
        build_train_table(TrainConfig(**{**BASE, "corpus": artpedia, "variants": bad, "alpha": 0.5}))
    caps = str(tmp_path / "caps")
    _write_captions(caps, [(train[0], "fine", []), (test_id, "leaks", [])])
    with pytest.raises(LeakageError, match=f"generated captions of a test artwork, '{test_id}'"):
        build_train_table(TrainConfig(**{**BASE, "corpus": artpedia, "captions": caps, "captioner": "llava",
                                         "caption_source": "both"}))


def test_checkpoint_every_saves_every_nth_and_the_last_epoch():
    from artray.train.loop import wants_checkpoint

    def saved(**over) -> list[int]:
        cfg = TrainConfig(**BASE, epochs=5, export=False, **over)
        return [e for e in range(1, 6) if wants_checkpoint(cfg, {"epoch": e, "step": 10 * e}, stop=False)]

    assert saved() == [1, 2, 3, 4, 5]
    assert saved(checkpoint_every=2) == [2, 4, 5]
    assert saved(checkpoint_every=2, max_steps=30) == [2, 3, 4, 5]  # epoch 3 reaches max_steps: the last one
    assert saved(checkpoint_every=0) == []
    cfg = TrainConfig(**BASE, epochs=5, export=False, checkpoint_every=3)
    assert wants_checkpoint(cfg, {"epoch": 1, "step": 10}, stop=True)  # early stop ends the run: save it
    with pytest.raises(ValueError, match="nothing to export"):
        TrainConfig(**BASE, checkpoint_every=0)  # export defaults to true


def test_deepspeed_config_and_zero_dim_fix():
    cfg = TrainConfig(**BASE, batch_size=4, grad_accum=3, zero_stage=3, precision="bf16", grad_clip=0.5)
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["train_batch_size"] == 24 and ds["gradient_accumulation_steps"] == 3
    assert ds["zero_optimization"] == {"stage": 3} and ds["bf16"] == {"enabled": True}
    assert ds["gradient_clipping"] == 0.5
    m = torch.nn.Module()
    m.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
    m.w = torch.nn.Parameter(torch.ones(2, 2))
    assert reshape_0dim(m) == ["logit_scale"] and m.logit_scale.shape == (1,)
    back = unshape_0dim(dict(m.state_dict()), ["logit_scale"])
    assert back["logit_scale"].shape == () and back["w"].shape == (2, 2)


@pytest.mark.parametrize("name", ["longclip", "infonce", "cnclip", "blip", "captioner"])
def test_job_configs_load(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "jobs" / "configs" / f"train-{name}.yaml"
    cfg = load_config(TrainConfig, str(path))
    assert cfg.preset == name and cfg.output.startswith("s3://")


def test_validation_recall_both_ways_and_a_diverged_model_ranks_last():
    from artray.train.validate import recall

    # 3 images (axes), 4 texts: t0 → i0 (exact), t1 → i1 (closest is i0), t2 → i2 (second best), t3 → i1 and i2.
    img = torch.eye(3)
    txt = torch.tensor([[1.0, 0, 0], [1.0, 0.5, 0], [0.9, 0, 0.5], [0, 1.0, 0.1]])
    out = recall(txt, img, [{0}, {1}, {2}, {1, 2}])
    assert (out["val_r1"], out["val_r5"]) == (0.5, 1.0)  # t0 and t3 at rank 1
    # image→text: i0's best text is t0 (hit); i1's is t3 (hit); i2's best is t2 (0.49 vs t3's 0.1): hit
    assert out["val_i2t_r1"] == 1.0
    assert out["val_mean_recall"] == pytest.approx((0.5 + 1 + 1 + 1 + 1 + 1) / 6)
    nan = recall(torch.full((4, 3), float("nan")), img, [{0}, {1}, {2}, {1, 2}])
    assert 0.0 <= nan["val_r1"] <= 1.0  # numbers, not a crash
