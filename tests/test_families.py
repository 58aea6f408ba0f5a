"""The model-family registry: every family keeps the contract, and one new module plus one registration is
all a family needs to appear in the CLI's choices, the training presets, evaluation, serving and the report."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from artray import families
from artray.families.base import missing_parts

# A throwaway retrieval family: the tiny open_clip checkpoint under another name, with a preset of its own,
# a reranker set, a context length, checkpoint sniffing (a ``.toy`` marker file beside the weights) and a
# tiny builder. It is registered at run time from a module written into a temp folder; no artray file changes.
TOY_MODULE = '''
from pathlib import Path

from artray.families.open_clip import OpenClipEncoder, load_open_clip


class ToyFamily:
    name = "toyclip"
    kind = "retrieval"
    description = "a throwaway CLIP family for the registry test"
    presets = {"toy-recipe": {"loss": "infonce", "lr": 3e-4, "epochs": 2}}
    context_length = 33
    rerankers = frozenset({"laclip"})
    trainer = "artray.train.longclip:LongClipTrainer"
    tiny = {"toy-clip": "artray.scaffold.tiny.clip:build"}

    def load(self, checkpoint, device="cpu", dtype=None, storage_options=None):
        return load_open_clip(checkpoint, device, dtype, storage_options)

    def load_encoder(self, checkpoint, device="cpu", dtype=None, storage_options=None):
        return OpenClipEncoder(self.name, checkpoint, self.load(checkpoint, device, dtype, storage_options))

    def sniff(self, path: Path) -> bool:
        return path.with_suffix(".toy").exists()


TOY = ToyFamily()
'''


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    (tmp_path / "toy_family_module.py").write_text(TOY_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    families.register("toyclip", "toy_family_module:TOY", aliases=("toy-clip-alias",))
    yield "toyclip"
    families.unregister("toyclip")
    sys.modules.pop("toy_family_module", None)


def check_every_registered_family() -> None:
    for name in families.names():
        family = families.get(name)
        assert family.name == name and missing_parts(family) == [], (name, missing_parts(family))
        if family.trainer:  # the training hooks it names exist and can export
            assert callable(getattr(families.trainer_class(name), "export"))


def test_every_registered_family_keeps_the_contract():
    check_every_registered_family()
    assert families.names() == ["longclip", "clip", "cnclip", "blip", "blip-captioner", "git-captioner", "open_clip",
                                "hf_clip"]
    assert families.names("retrieval") == ["longclip", "clip", "cnclip", "blip", "open_clip", "hf_clip"]
    assert families.names("train") == ["longclip", "clip", "cnclip", "blip", "blip-captioner", "git-captioner"]
    assert sorted(families.presets()) == ["blip", "captioner", "cioni2023", "cnclip", "infonce", "longclip"]
    assert families.get("blip-retrieval") is families.get("blip")  # the old spelling still names BLIP


def test_an_incomplete_family_is_refused_with_what_it_lacks():
    class Half:
        name, kind, description = "half", "retrieval", "no presets, no sniffing"
        context_length, rerankers, trainer, tiny = 77, frozenset({"laclip", "magic"}), None, {}

        def load(self, *a):
            return None

        def load_encoder(self, *a):
            return None

    problems = missing_parts(Half())
    assert "no `presets`" in problems and "no `sniff()` method" in problems
    Half.presets, Half.sniff = {}, lambda self, path: False
    assert missing_parts(Half()) == ["unknown rerankers ['magic'] (known: ('laclip', 'itm'))"]
    families.register("half", Half())
    try:  # registered anyway: the first use names what is wrong, and the contract test above fails
        with pytest.raises(families.IncompleteFamilyError, match=r"'half'.*unknown rerankers \['magic'\]"):
            families.get("half")
        with pytest.raises(families.IncompleteFamilyError):
            check_every_registered_family()
    finally:
        families.unregister("half")


def test_unknown_family_names_the_registered_ones():
    with pytest.raises(families.UnknownFamilyError, match="unknown encoder family 'siglip': use one of longclip, "):
        families.get("siglip", kind="retrieval")
    with pytest.raises(families.UnknownFamilyError, match="unknown trainable family 'hf_clip'"):
        families.get("hf_clip", kind="train")


def test_reading_the_registry_imports_no_model_library():
    code = ("import sys, artray.families as f; f.names('retrieval'); f.presets(); f.choices('train'); "
            "print(sorted(m for m in ('torch', 'ray', 'transformers', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_family_registered_at_run_time_reaches_cli_presets_evaluation_and_serving(toy_family, tiny_models, tmp_path):
    from artray.cli import build_parser
    from artray.config import config_from_args
    from artray.families import load_encoder
    from artray.evaluate.report import ReportConfig
    from artray.evaluate.retrieval import ModelSpec, check_family
    from artray.evaluate.retrieval_embed import RetrievalEvalError
    from artray.scaffold.tiny import builders
    from artray.serve.rerank import unsupported
    from artray.stages.embed import EmbedConfig
    from artray.train.config import TrainConfig

    # CLI: the flags' choices come from the registry when the parser is built.
    parser = build_parser()
    args = parser.parse_args(["train", "--family", "toy-clip-alias", "--preset", "toy-recipe", "--model", "m",
                              "--corpus", "c", "--output", "o"])
    cfg = config_from_args(TrainConfig, args)
    assert (cfg.family, cfg.loss, cfg.lr, cfg.epochs, cfg.is_retrieval) == ("toyclip", "infonce", 3e-4, 2, True)
    assert parser.parse_args(["embed", "--family", "toyclip"]).cfg_family == "toyclip"
    with pytest.raises(SystemExit):  # a captioner is no encoder: not among embed's choices
        parser.parse_args(["embed", "--family", "git-captioner"])
    assert EmbedConfig(input="i", output="o", family="toyclip", checkpoint="x").family == "toyclip"

    # Evaluation: the spec validates, the family's own sniffing refuses another family's checkpoint, ITM is
    # refused (not among its rerankers), and its encoder loads through the shared entry point.
    assert ModelSpec(name="t", family="toyclip", checkpoint="x").family == "toyclip"
    weights = tmp_path / "toy.safetensors"
    weights.write_bytes(open(tiny_models["clip-77"], "rb").read())
    (tmp_path / "toy.toy").write_text("")
    check_family("toyclip", str(weights))
    with pytest.raises(RetrievalEvalError, match=r"is a \S*toyclip\S* checkpoint, not blip"):
        check_family("blip", str(weights))
    with pytest.raises(RetrievalEvalError, match="ITM re-ranking needs"):
        check_family("toyclip", str(weights), itm=True)
    enc = load_encoder("toyclip", str(weights), device="cpu")
    vectors = enc.encode_texts(["a red circle", "a blue square"])
    assert enc.identity()["family"] == "toyclip" and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)

    # Serving, report and scaffolding read the same object.
    assert unsupported("laclip", "toyclip") is None and "needs a BLIP" in unsupported("itm", "toyclip")
    assert ReportConfig(output="r.html").context_lengths["toyclip"] == 33
    assert builders()["toy-clip"] == "artray.scaffold.tiny.clip:build"

    families.unregister("toyclip")  # and gone again: the same flag is refused
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--family", "toyclip"])


def test_train_config_takes_gpus_per_worker_and_the_deprecated_use_gpu():
    from artray.train.config import TrainConfig

    base = {"model": "m", "corpus": "c", "output": "o"}
    assert TrainConfig(**base).gpus_per_worker == 0 and not TrainConfig(**base).uses_gpu
    assert TrainConfig(**base, gpus_per_worker=0.5).uses_gpu
    with pytest.warns(DeprecationWarning, match="use_gpu is deprecated"):
        cfg = TrainConfig(**base, use_gpu=True)
    assert cfg.gpus_per_worker == 1 and cfg.uses_gpu
    assert TrainConfig(**base, preset="blip", family="blip-retrieval").family == "blip"
    with pytest.raises(ValueError, match="unknown preset 'nope': use one of blip, captioner, cioni2023, cnclip"):
        TrainConfig(**base, preset="nope")



def _picture():
    """A fixed 56×40 noise picture (not square: resize and crop modes give different pixels)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8), "RGB")


def test_encoders_prepare_images_as_the_export_record_says(tiny_models, tmp_path):
    """An export's ``image_preprocessing`` (artray_export.json) decides how its encoder resizes, crops and
    normalises images: a record that differs from the checkpoint's defaults changes the embeddings to exactly
    those of images prepared that way; without a record the defaults stay."""
    import json
    import shutil

    import torch

    from artray.families import load_encoder
    from artray.models.longclip import default_preprocessing, image_transform
    from artray.models.pretrained import EXPORT_RECORD, image_processor_kwargs, image_processor_record
    from artray.models.weights import load_state_dict

    picture = _picture()
    # OpenAI-layout weights file (clip, longclip, open_clip families): the record beside it, naming the file.
    folder = tmp_path / "clip-export"
    folder.mkdir()
    weights = folder / "clip.safetensors"
    shutil.copy(tiny_models["clip-77"], weights)
    default = default_preprocessing(load_state_dict(weights))
    plain = load_encoder("clip", str(weights), device="cpu").encode_images([picture])
    spec = {**default, "resize_mode": "squash", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    (folder / EXPORT_RECORD).write_text(json.dumps({"family": "clip", "text_length": 77, "weights": weights.name,
                                                    "image_preprocessing": spec}))
    for family in ("clip", "open_clip", "longclip"):
        enc = load_encoder(family, str(weights), device="cpu")
        with torch.no_grad():
            expected = enc.model.encode_image(image_transform(spec)(picture)[None])
        expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
        assert np.allclose(enc.encode_images([picture]), expected, atol=1e-5), family
        assert not np.allclose(enc.encode_images([picture]), plain, atol=1e-3), family
    # A record that names another file does not speak for this one.
    (folder / EXPORT_RECORD).write_text(json.dumps({"weights": "other.safetensors", "image_preprocessing": spec}))
    assert np.allclose(load_encoder("clip", str(weights), device="cpu").encode_images([picture]), plain, atol=1e-6)

    # transformers checkpoints (clip, hf_clip, blip, cnclip): the record's image-processor settings.
    for family, name in (("clip", "hf-clip"), ("hf_clip", "hf-clip"), ("blip", "blip-retrieval"), ("cnclip", "cnclip")):
        folder = tmp_path / f"pretrained-{family}"
        shutil.copytree(tiny_models[name], folder)
        enc = load_encoder(family, str(folder), device="cpu")
        processor = enc.bundle.processor.image_processor
        own = image_processor_record(processor)
        assert enc.preprocessing == own  # no record: the processor's own settings, passed back unchanged
        assert torch.equal(enc._pixels([picture]), processor([picture], return_tensors="pt").pixel_values)
        plain = enc.encode_images([picture])
        spec = {**own, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2}
        (folder / EXPORT_RECORD).write_text(json.dumps({"family": family, "image_preprocessing": spec}))
        enc = load_encoder(family, str(folder), device="cpu")
        expected = processor([picture], return_tensors="pt", **image_processor_kwargs(spec, "test")).pixel_values
        assert torch.equal(enc._pixels([picture]), expected), family
        assert not np.allclose(enc.encode_images([picture]), plain, atol=1e-3), family
    # A record for the other library is refused, naming the checkpoint.
    (folder / EXPORT_RECORD).write_text(json.dumps({"image_preprocessing": default}))
    with pytest.raises(ValueError, match="image_preprocessing is for 'open_clip'"):
        load_encoder("cnclip", str(folder), device="cpu")


def test_the_readme_preset_table_is_the_presets():
    """README's preset table is generated from the presets (`python -m artray.families.preset_table`); a preset
    changed without regenerating it, or a preset without a documented source, fails here."""
    from pathlib import Path

    from artray.families.preset_table import BEGIN, END, preset_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    assert readme.split(BEGIN)[1].split(END)[0].strip() == preset_table()
    table = families.presets()
    assert all(values.get("grad_clip", "unset") is None for values in table.values())  # no source clips
    assert table["cioni2023"]["alpha"] == 0.5 and table["cioni2023"]["family"] == "clip"


def test_clip_trains_a_77_token_checkpoint_as_it_is_and_refuses_long_clip(tiny_models):
    """Family clip keeps a CLIP's 77 positions (no stretching) in either layout; Long-CLIP files and Long-CLIP's
    objective or stretching are refused with the family that fits; family longclip points a 77-token CLIP here."""
    from artray.train.clip import ClipTrainer, HFClipTrainer, OpenAIClipTrainer
    from artray.train.config import TrainConfig
    from artray.train.longclip import LongClipTrainer

    base = {"corpus": "c", "output": "o"}
    openai = ClipTrainer(TrainConfig(**base, family="clip", model=tiny_models["clip-77"]))
    assert isinstance(openai.hooks, OpenAIClipTrainer) and openai.context_length == 77
    assert openai.hooks.tokens(["x"]).shape == (1, 77)
    hf = ClipTrainer(TrainConfig(**base, family="clip", model=tiny_models["hf-clip"]))
    assert isinstance(hf.hooks, HFClipTrainer) and hf.context_length == 77
    with pytest.raises(ValueError, match="Long-CLIP checkpoint .* train it with family: longclip"):
        ClipTrainer(TrainConfig(**base, family="clip", model=tiny_models["longclip"]))
    with pytest.raises(ValueError, match="77-token CLIP, not Long-CLIP.*family: clip"):
        LongClipTrainer(TrainConfig(**base, family="longclip", model=tiny_models["clip-77"]))
    with pytest.raises(ValueError, match="family clip trains with loss: infonce"):
        TrainConfig(**base, family="clip", model="m.safetensors", loss="longclip")
    with pytest.raises(ValueError, match="stretch: true is for family: longclip"):
        TrainConfig(**base, family="clip", model="m.safetensors", stretch=True)
    with pytest.raises(ValueError, match="alpha: 0 trains on the real images only"):
        TrainConfig(**base, family="clip", model="m.safetensors", preset="cioni2023")
