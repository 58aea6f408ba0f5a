"""Method (A)'s captioners in `artray caption`: a GIT and a BLIP captioner export (and the raw tiny checkpoints)
caption the test split on real Ray with (A)'s beam search, resume, refuse changed settings, and
`artray evaluate captions` scores them; (A)'s decoding presets; AutoAugment on train images only."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from artray import corpus, storage
from artray.evaluate.caption_metrics import CaptionMetricsConfig, run_caption_metrics
from artray.outputs import read_captions
from artray.stages.caption import GENERATION_PRESETS, CaptionConfig, CaptionError, run_caption
from artray.stages.caption_captioner import model_kind
from artray.storage import StorageOptions
from artray.train.config import TrainConfig

FAMILIES = ["git-captioner", "blip-captioner"]


@pytest.fixture(scope="module")
def sample(imported_artpedia) -> str:
    return imported_artpedia(12)


@pytest.fixture(scope="module")
def exports(tiny_models, sample, tmp_path_factory) -> dict[str, str]:
    """An `artray train` export of each tiny captioner, written by the trainer's own export code from the
    (untrained) weights: the folder, its processor and artray_export.json, as a fine-tuning run leaves them."""
    from artray.train.captioner import BlipCaptionerTrainer, GitCaptionerTrainer

    root = tmp_path_factory.mktemp("captioner-exports")
    out = {}
    for family, trainer in (("git-captioner", GitCaptionerTrainer), ("blip-captioner", BlipCaptionerTrainer)):
        cfg = TrainConfig(preset="captioner", family=family, model=tiny_models[family], corpus=sample,
                          output=str(root / "runs"))
        model_cls, _ = trainer.classes()
        weights = model_cls.from_pretrained(tiny_models[family]).state_dict()
        out[family] = trainer.export(cfg, {f"model.{k}": v for k, v in weights.items()}, str(root / family))
    return out


def _test_ids(sample: str) -> list[str]:
    return [r["artwork_id"] for r in corpus.read_artworks(sample, columns=["artwork_id", "split"]).to_pylist()
            if r["split"] == "test"]


def _direct_captions(family: str, model: str, sample: str, ids: list[str], gen: dict) -> dict[str, str]:
    """The same checkpoint loaded by its family and run on one image at a time, outside Ray."""
    from artray import families

    bundle = families.get(family).load(model)
    arts = {r["artwork_id"]: r for r in corpus.read_artworks(sample).to_pylist()}
    out = {}
    for aid in ids:
        image = Image.open(io.BytesIO(arts[aid]["image"])).convert("RGB")
        pixels = bundle.processor(images=[image], return_tensors="pt")["pixel_values"]
        ids_ = bundle.model.generate(pixel_values=pixels, num_beams=gen["num_beams"],
                                     length_penalty=gen["length_penalty"], max_new_tokens=gen["max_new_tokens"],
                                     do_sample=False)
        out[aid] = bundle.processor.tokenizer.decode(ids_[0], skip_special_tokens=True).strip()
    return out


def test_model_kind_from_export_record_or_config(tiny_models, exports, tmp_path):
    opts = StorageOptions()
    for family in FAMILIES:
        assert model_kind(exports[family], opts) == family
        assert model_kind(tiny_models[family], opts) == family  # raw checkpoints: config.json
    assert model_kind(tiny_models["llava"], opts) == "mllm"
    assert model_kind(tiny_models["blip-retrieval"], opts) == "mllm"  # BLIP retrieval is not a captioner
    assert model_kind(str(tmp_path / "nothing"), opts) == "mllm"


_HUB_PROBE = """
import json, sys, time
from artray.stages.caption_captioner import model_kind
from artray.storage import StorageOptions
out = {"cached": model_kind("someone/cached-git", StorageOptions())}
t0 = time.monotonic()
try:
    out["uncached"] = model_kind("someone/never-downloaded", StorageOptions())
except Exception as exc:
    out["uncached"] = type(exc).__name__ + ": " + str(exc)
out["seconds"] = time.monotonic() - t0
print(json.dumps(out))
"""


def test_model_kind_of_a_hub_id_reads_the_cache_first_and_fails_fast_without_the_hub(tiny_models, tmp_path):
    """A hub id is looked up in the local Hugging Face cache first; one that is not cached, on a machine that
    cannot reach the hub, is a clear error at once (it was ~20 s of HTTP retries, then a guess: MLLM)."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from artray.runtime import free_port

    snapshot = tmp_path / "hf" / "hub" / "models--someone--cached-git" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text((Path(tiny_models["git-captioner"]) / "config.json").read_text())
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")  # nothing listens
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _HUB_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cached"] == "git-captioner"
    assert out["uncached"].startswith("CaptionError: model 'someone/never-downloaded'"), out
    assert "cannot be reached" in out["uncached"] and "hf download someone/never-downloaded" in out["uncached"]
    assert out["seconds"] < 5, out  # one short look-up, no retries
    assert time.monotonic() - started < 60

    # With HF_HUB_OFFLINE (set for the test session) there is no look-up at all, and the error says so.
    with pytest.raises(CaptionError, match="HF_HUB_OFFLINE is set"):
        model_kind("someone/never-downloaded", StorageOptions())


def test_model_kind_of_an_s3_export_reads_only_its_json(exports, s3_endpoint, s3_bucket):
    from pathlib import Path

    opts = StorageOptions(endpoint_url=s3_endpoint)
    for family in FAMILIES:
        uri = f"{s3_bucket}/{family}/export"
        for f in ("config.json", "artray_export.json"):  # no weights uploaded: detection never needs them
            storage.write_bytes_atomic(f"{uri}/{f}", (Path(exports[family]) / f).read_bytes(), opts)
        assert model_kind(uri, opts) == family
    assert model_kind(f"{s3_bucket}/nothing-here", opts) == "mllm"


@pytest.mark.parametrize("family", FAMILIES)
def test_captioner_export_captions_test_split_resumes_and_is_scored(ray_local, exports, sample, family, tmp_path):
    out, ids = str(tmp_path / "captions"), _test_ids(sample)
    # The recipes' contract: explicit fields, (A)'s Artpedia decoding.
    cfg = CaptionConfig(input=sample, output=out, model=exports[family], captioner="ft", presets=["caption"],
                        splits=["test"], num_beams=4, length_penalty=0.6, max_new_tokens=100, device="cpu",
                        cpus_per_actor=0.75)
    first = run_caption(cfg)
    rows = {r["artwork_id"]: r for r in read_captions(out, exclude_flags=()).to_pylist()}
    assert sorted(rows) == sorted(ids) and len(ids) > 0
    gen = {"backend": "transformers", "max_new_tokens": 100, "do_sample": False, "num_beams": 4,
           "length_penalty": 0.6, "repetition_penalty": 1.0, "ignore_eos": False}
    for r in rows.values():
        assert (r["captioner"], r["preset"], r["prompt"], r["split"], r["model"]) == ("ft", "caption", "", "test",
                                                                                    exports[family])
        assert json.loads(r["generation"]) == {**gen, "dtype": "float32", "device": "cpu"}
    assert first["model_kind"] == family and first["counts"]["captioned"] == len(ids)
    params = storage.read_json(storage.join(out, "_caption_params.json"))["ft"]
    assert params == {"model": exports[family], "kind": family, "generation": gen, "prompts": {"caption": ""}}
    # Batched beam search in the actors = the family's model on one image at a time.
    direct = _direct_captions(family, exports[family], sample, ids[:2], gen)
    assert {a: rows[a]["text"] for a in direct} == direct

    again = run_caption(cfg)
    assert (again["counts"]["captioned"], again["counts"]["skipped_done"]) == (0, len(ids))
    with pytest.raises(CaptionError, match="made differently.*length_penalty"):
        run_caption(cfg.model_copy(update={"length_penalty": 1.0}))
    with pytest.raises(CaptionError, match="only preset 'caption'"):
        run_caption(cfg.model_copy(update={"presets": ["query"], "captioner": "other"}))

    summary = run_caption_metrics(CaptionMetricsConfig(candidates=out, references=sample, candidates_captioner="ft",
                                                       output=str(tmp_path / "scores"), metrics=["bleu", "cider"]))
    assert summary["splits"]["test"]["n"] == len(ids) and summary["splits"]["test"]["CIDEr"] >= 0


def test_raw_tiny_checkpoint_captions_with_a_generation_preset(ray_local, tiny_models, sample, tmp_path):
    out, ids = str(tmp_path / "captions"), _test_ids(sample)
    cfg = CaptionConfig(input=sample, output=out, model=tiny_models["blip-captioner"], captioner="blip-zs",
                        presets=["caption"], splits=["test"], generation_preset="cioni2023-artcap", device="cpu",
                        cpus_per_actor=0.75)
    run_caption(cfg)
    rows = read_captions(out, exclude_flags=()).to_pylist()
    assert sorted(r["artwork_id"] for r in rows) == sorted(ids)
    gen = json.loads(rows[0]["generation"])
    assert (gen["num_beams"], gen["length_penalty"], gen["max_new_tokens"]) == (4, 0.6, 40)


def test_generation_presets_fill_only_unset_keys():
    base = {"input": "a", "output": "b"}
    artpedia = CaptionConfig(**base, generation_preset="cioni2023-artpedia").generation()
    assert (artpedia["num_beams"], artpedia["length_penalty"], artpedia["max_new_tokens"]) == (4, 0.6, 100)
    assert CaptionConfig(**base, generation_preset="cioni2023-artcap").max_new_tokens == 40
    mine = CaptionConfig(**base, generation_preset="cioni2023-artcap", max_new_tokens=64, num_beams=2)
    assert (mine.max_new_tokens, mine.num_beams, mine.length_penalty) == (64, 2, 0.6)
    sigir = CaptionConfig(**base, generation_preset="sigir2025").generation()
    assert (sigir["num_beams"], sigir["max_new_tokens"], "length_penalty" in sigir) == (1, 200, False)
    assert CaptionConfig(**base, model="s3://b/runs/git-da05/export/").captioner_name() == "git-da05"
    assert CaptionConfig(**base, model="microsoft/git-base").captioner_name() == "git-base"
    assert set(GENERATION_PRESETS) == {"cioni2023-artpedia", "cioni2023-artcap", "sigir2025"}
    with pytest.raises(ValueError, match="generation_preset"):
        CaptionConfig(**base, generation_preset="cioni")


def test_auto_augment_changes_train_pixels_only_and_is_seeded(tiny_models, sample):
    import pyarrow as pa

    from artray.train.captioner import GitCaptionerTrainer
    from artray.train.data import PrepareBatch, build_train_table

    def cfg(**kw):
        return TrainConfig(family="git-captioner", model=tiny_models["git-captioner"], corpus=sample, output="unused",
                           **kw)

    assert cfg(preset="captioner").auto_augment and not cfg().auto_augment  # on in (A)'s recipe, off elsewhere
    on = cfg(preset="captioner")
    trainer = GitCaptionerTrainer(on)
    table: pa.Table = build_train_table(on)

    def pixels(c, epoch=0):
        return PrepareBatch(c, trainer, epoch)(table)[0]["pixel_values"]

    plain, augmented = pixels(cfg()), pixels(on)
    changed = [not torch.equal(a, b) for a, b in zip(plain, augmented)]
    assert sum(changed) >= len(changed) // 2, changed  # most samples draw an op that changes them
    assert torch.equal(augmented, pixels(on))  # same seed and epoch: the same augmentation
    assert not torch.equal(augmented, pixels(on, epoch=1))
    assert not torch.equal(augmented, pixels(cfg(preset="captioner", seed=7)))
    # Validation (CaptionerTrainer.validate) preprocesses with train_batch alone: the processor's pixels.
    from artray.images import decode

    images = [decode(b, on.max_image_pixels) for b in table["image"].to_pylist()]
    val = trainer.train_batch(images, ["x"] * len(images))["pixel_values"]
    assert torch.equal(val, trainer.processor.image_processor(images, return_tensors="pt")["pixel_values"])
    assert torch.equal(val, plain)
    assert np.isfinite(augmented.numpy()).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_captioner_trains_and_captions_with_its_recorded_image_preprocessing(tiny_models, sample, family, tmp_path):
    """A captioner export whose record says other image settings than its processor's defaults is fine-tuned
    and captioned on images prepared as recorded (as the retrieval encoders and trainers do), not with the
    processor's defaults; the new export records the same settings."""
    import shutil

    from artray.models.pretrained import EXPORT_RECORD, image_processor_kwargs, image_processor_record
    from artray.stages.caption_captioner import CaptionerGenerator
    from artray.train.captioner import BlipCaptionerTrainer, GitCaptionerTrainer

    trainer_cls = GitCaptionerTrainer if family == "git-captioner" else BlipCaptionerTrainer
    base = tmp_path / "base"
    shutil.copytree(tiny_models[family], base)
    processor = trainer_cls.classes()[1].from_pretrained(base).image_processor
    spec = {**image_processor_record(processor), "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "resample": 2}
    (base / EXPORT_RECORD).write_text(json.dumps({"family": family, "image_preprocessing": spec}))
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8), "RGB")
    recorded = processor([picture], return_tensors="pt", **image_processor_kwargs(spec, "test")).pixel_values
    assert not torch.equal(recorded, processor([picture], return_tensors="pt").pixel_values)

    cfg = TrainConfig(preset="captioner", family=family, model=str(base), corpus=sample, output=str(tmp_path / "r"))
    trainer = trainer_cls(cfg)
    assert torch.equal(trainer.pixels([picture]), recorded)
    assert torch.equal(trainer.train_batch([picture], ["a caption"])["pixel_values"], recorded)
    export = trainer_cls.export(cfg, trainer.build_module().state_dict(), str(tmp_path / "export"))
    assert json.loads((tmp_path / "export" / EXPORT_RECORD).read_text())["image_preprocessing"] == spec

    generator = CaptionerGenerator(family, export, "cpu", torch.float32, StorageOptions(),
                                   {"num_beams": 1, "max_new_tokens": 4})
    assert torch.equal(generator.pixels([picture]), recorded)
    assert len(generator([picture])) == 1
