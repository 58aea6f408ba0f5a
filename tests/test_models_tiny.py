"""The tiny checkpoint set, loaded through the same public loaders real hub ids use.

One real forward pass per family, checking what a user would notice; plus Long-CLIP's
positional stretching against the published formula and s3:// model resolution.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from artray.models.weights import load_state_dict, save_state_dict
from artray.storage import StorageOptions

NAMES = ["sd-img2img", "llava", "blip-retrieval", "blip-captioner", "git-captioner", "clip-77", "longclip", "cnclip",
         "hf-clip"]
ZH = ["窠内一飞鸟，展翅回首；四周饰以卷草纹。", "《敦煌壁画全集》：“飞天”（唐代）壁画！", "莫高窟第220窟，ABC 123？"]


def _image(w: int = 48, h: int = 40, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr)


def _unit_rows(x: torch.Tensor) -> bool:
    return torch.allclose(x.norm(dim=-1), torch.ones(x.shape[0]), atol=1e-5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    from artray.scaffold.tiny import make_tiny

    return make_tiny(str(tmp_path_factory.mktemp("tiny")), seed=0)


def test_make_tiny_lists_every_checkpoint_and_is_idempotent(tiny):
    from artray.scaffold.tiny import make_tiny

    dest = Path(tiny["llava"]).parent
    index = json.loads((dest / "tiny_models.json").read_text())["models"]
    assert sorted(index) == sorted(NAMES) == sorted(tiny)
    for name, entry in index.items():
        assert (dest / entry["path"]).exists() and entry["parameters"] > 0 and entry["architecture"]
    weights = Path(tiny["llava"]) / "model.safetensors"
    before = (weights.stat().st_mtime_ns, (dest / "tiny_models.json").read_bytes())
    assert make_tiny(str(dest), seed=0) == tiny
    assert (weights.stat().st_mtime_ns, (dest / "tiny_models.json").read_bytes()) == before
    # A missing checkpoint is rebuilt, byte for byte (seeded; tokenizer training included).
    files = {p.relative_to(dest): p.read_bytes() for p in Path(tiny["llava"]).rglob("*") if p.is_file()}
    shutil.rmtree(tiny["llava"])
    assert make_tiny(str(dest), seed=0) == tiny
    assert {p.relative_to(dest): p.read_bytes() for p in Path(tiny["llava"]).rglob("*") if p.is_file()} == files


def test_img2img_returns_image_of_requested_size(tiny):
    from diffusers import EulerAncestralDiscreteScheduler

    from artray.models.diffusion import load_img2img

    bundle = load_img2img(tiny["sd-img2img"])
    assert isinstance(bundle.pipeline.scheduler, EulerAncestralDiscreteScheduler)
    assert bundle.pipeline.safety_checker is None and bundle.vae_scale_factor == 8
    init = _image(96, 64).convert("RGB")

    def run(seed: int) -> Image.Image:
        return bundle.pipeline(
            prompt="a painting of a saint", image=init, strength=0.34, num_inference_steps=4,
            guidance_scale=10.0, generator=torch.Generator().manual_seed(seed),
        ).images[0]

    out = run(1)
    assert isinstance(out, Image.Image) and out.size == (96, 64)
    assert np.array_equal(np.asarray(out), np.asarray(run(1)))  # same seed → same variation


def test_llava_chat_prompt_and_generate(tiny):
    from transformers import LlavaForConditionalGeneration

    from artray.models.mllm import load_mllm

    bundle = load_mllm(tiny["llava"])
    assert isinstance(bundle.model, LlavaForConditionalGeneration) and not bundle.model.training
    prompt = bundle.prompt("Describe this artwork.")
    assert prompt == "USER: <image>\nDescribe this artwork. ASSISTANT:"
    inputs = bundle.processor(images=[_image(), _image(seed=1)], text=[prompt, prompt], return_tensors="pt",
                              padding=True)
    image_id = bundle.model.config.image_token_index
    assert (inputs["input_ids"] == image_id).sum(dim=1).tolist() == [16, 16]  # (32/8)² patches, CLS dropped
    with torch.no_grad():
        out = bundle.model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 4)
    assert all(isinstance(t, str) for t in bundle.processor.batch_decode(out, skip_special_tokens=True))


def test_blip_retrieval_embeddings_reproduce_itc_score(tiny):
    from artray.models.blip import blip_image_embeds, blip_text_embeds, load_blip_retrieval

    bundle = load_blip_retrieval(tiny["blip-retrieval"])
    texts = ["a portrait of a woman", "a landscape with trees", "a saint holding a book"]
    pix = bundle.processor(images=[_image(), _image(seed=1)], return_tensors="pt")["pixel_values"]
    tok = bundle.processor(text=texts, return_tensors="pt", padding=True)
    img, txt = blip_image_embeds(bundle, pix), blip_text_embeds(bundle, tok["input_ids"], tok["attention_mask"])
    assert img.shape == (2, 16) and txt.shape == (3, 16) and _unit_rows(img) and _unit_rows(txt)
    sim = img @ txt.T
    assert sim.shape == (2, 3)
    with torch.no_grad():
        itc = bundle.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                           pixel_values=pix, use_itm_head=False).itm_score
    assert torch.allclose(sim, itc, atol=1e-5)
    with torch.no_grad():  # the ITM head scores each (image, text) pair: 2 logits per pair
        itm = bundle.model(input_ids=tok["input_ids"][:2], attention_mask=tok["attention_mask"][:2],
                           pixel_values=pix).itm_score
    assert itm.shape == (2, 2)


@pytest.mark.parametrize("name", ["blip-captioner", "git-captioner"])
def test_captioners_generate_tokens(tiny, name):
    from artray.models.blip import load_blip_captioner
    from artray.models.git import load_git_captioner

    bundle = (load_blip_captioner if name == "blip-captioner" else load_git_captioner)(tiny[name])
    pix = bundle.processor(images=[_image(), _image(seed=2)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = bundle.model.generate(pixel_values=pix, max_new_tokens=5, min_new_tokens=5, num_beams=2)
    assert out.shape[0] == 2 and out.shape[1] >= 5
    captions = bundle.processor.batch_decode(out, skip_special_tokens=True)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)


def test_stretch_positional_embedding_matches_published_formula():
    from artray.models.longclip import stretch_positional_embedding

    # pe[i] = i: interpolation gives new[k] = 20 + (k−20)/4 for k ≥ 20, extrapolation included.
    pe = torch.arange(77, dtype=torch.float64)[:, None].repeat(1, 3)
    new = stretch_positional_embedding(pe)
    assert new.shape == (248, 3) and new.dtype == torch.float64
    assert torch.equal(new[:20], pe[:20])
    expected = torch.cat([torch.arange(20.0), 20 + torch.arange(228.0) / 4]).to(torch.float64)
    assert torch.allclose(new[:, 0], expected)

    sq = (torch.arange(77, dtype=torch.float32) ** 2)[:, None]  # non-linear: values by hand
    new = stretch_positional_embedding(sq)[:, 0]
    assert new[20] == 400.0                      # i=20, j=0
    assert new[21] == (3 * 400 + 441) / 4        # i=20, j=1 → 410.25
    assert new[4 * 10 + 20 + 2] == (2 * 900 + 2 * 961) / 4  # i=30, j=2 → 930.5
    assert new[243] == (1 * 75**2 + 3 * 76**2) / 4          # i=75, j=3
    for j in range(4):                           # last slot: pe[76] + j·(pe[76]−pe[75])/4
        assert new[244 + j] == 76**2 + j * (76**2 - 75**2) / 4


def test_longclip_checkpoint_layout_and_load(tiny, tmp_path):
    import open_clip

    from artray.models.longclip import load_longclip

    sd = load_state_dict(tiny["longclip"])  # safetensors: no pickle opt-in needed
    assert sd["positional_embedding"].shape == sd["positional_embedding_res"].shape == (248, 64)
    # Make the trained part differ, as after fine-tuning, to see the merge rule pe[:20] ++ pe_res[20:].
    sd["positional_embedding_res"] = sd["positional_embedding_res"] + 1.0
    tuned = tmp_path / "longclip-tuned.safetensors"
    save_state_dict(sd, tuned)
    bundle = load_longclip(str(tuned))
    assert bundle.context_length == 248 == bundle.model.context_length
    pe = bundle.model.positional_embedding.detach()
    assert torch.equal(pe[:20], sd["positional_embedding"][:20])
    assert torch.equal(pe[20:], sd["positional_embedding_res"][20:])

    long_text = " ".join(["a woman in a red dress holding a golden book beside a river"] * 12)
    tokens = bundle.tokenizer([long_text, "a short caption"])
    assert tokens.shape == (2, 248) and (tokens[0] != 0).sum() > 77  # not cut at CLIP's 77
    assert torch.equal(tokens[1], open_clip.tokenize(["a short caption"], context_length=248)[0])
    image = bundle.preprocess(_image()).unsqueeze(0)
    with torch.no_grad():
        txt, img = bundle.model.encode_text(tokens, normalize=True), bundle.model.encode_image(image, normalize=True)
    assert txt.shape == (2, 32) and img.shape == (1, 32) and _unit_rows(txt) and _unit_rows(img)


def test_clip77_loads_plain_or_stretched(tiny):
    from artray.models.longclip import load_longclip, stretch_positional_embedding

    src = load_state_dict(tiny["clip-77"])["positional_embedding"]
    assert load_longclip(tiny["clip-77"]).context_length == 77
    stretched = load_longclip(tiny["clip-77"], stretch=True)
    assert stretched.context_length == 248
    assert torch.equal(stretched.model.positional_embedding.detach(), stretch_positional_embedding(src))
    with torch.no_grad():
        assert stretched.model.encode_text(stretched.tokenizer(["a fresco"])).shape == (1, 32)


def test_cnclip_chinese_text_has_no_unk_and_embeds(tiny):
    from artray.models.cnclip import cnclip_image_embeds, cnclip_text_embeds, load_cnclip

    bundle = load_cnclip(tiny["cnclip"])
    tok = bundle.processor.tokenizer
    vocab = tok.get_vocab()
    assert all(chr(c) in vocab for c in range(0x4E00, 0xA000))
    batch = bundle.processor(text=ZH, return_tensors="pt", padding=True)
    assert tok.unk_token_id not in batch["input_ids"]
    pix = bundle.processor(images=[_image(), _image(seed=3)], return_tensors="pt")["pixel_values"]
    txt = cnclip_text_embeds(bundle, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    img = cnclip_image_embeds(bundle, pix)
    assert txt.shape == (3, 16) and img.shape == (2, 16) and _unit_rows(txt) and _unit_rows(img)
    assert (img @ txt.T).shape == (2, 3)


def test_resolve_model_path_downloads_s3_folder_once(tiny, s3_bucket, s3_endpoint, tmp_path, monkeypatch):
    import boto3

    from artray.models.blip import load_blip_retrieval
    from artray.models.longclip import load_longclip
    from artray.models.resolve import resolve_model_path

    monkeypatch.setenv("ARTRAY_CACHE", str(tmp_path / "cache"))
    assert resolve_model_path("Salesforce/blip-itm-base-coco") == "Salesforce/blip-itm-base-coco"
    assert resolve_model_path(tiny["cnclip"]) == tiny["cnclip"]

    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = s3_bucket.removeprefix("s3://")
    local = Path(tiny["blip-retrieval"])
    for f in local.rglob("*"):
        if f.is_file():
            s3.upload_file(str(f), bucket, f"models/blip/{f.relative_to(local)}")
    s3.upload_file(tiny["longclip"], bucket, "models/longclip-tiny.safetensors")
    opts = StorageOptions(endpoint_url=s3_endpoint)

    uri = f"{s3_bucket}/models/blip"
    path = Path(resolve_model_path(uri, opts))
    assert path.is_relative_to(tmp_path / "cache" / "models")
    assert (path / "model.safetensors").read_bytes() == (local / "model.safetensors").read_bytes()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path(uri + "/", opts) == str(path)  # second call: cached, not downloaded again
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp

    remote, ref = load_blip_retrieval(uri, storage_options=opts), load_blip_retrieval(str(local))
    ref_sd = ref.model.state_dict()
    assert all(torch.equal(v, ref_sd[k]) for k, v in remote.model.state_dict().items())

    bundle = load_longclip(f"{s3_bucket}/models/longclip-tiny.safetensors", storage_options=opts)
    assert bundle.context_length == 248
