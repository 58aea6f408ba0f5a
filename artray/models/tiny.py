"""Tiny, seeded, randomly initialised checkpoints of every real architecture artray runs.

Each one is saved in exactly the on-disk format of its real hub counterpart
(``save_pretrained`` folders with tokenizer/processor, or an OpenAI-layout state dict), so
tests and CPU smoke runs go through the same ``load_*`` functions as
``runwayml/stable-diffusion-v1-5`` or ``longclip-L.pt`` — only smaller and offline. Every
weight file is safetensors (the state dicts keep ``longclip-L.pt``'s keys), so nothing here
needs the pickle opt-in of ``artray.models.weights``.

Each checkpoint is built in a temp folder and renamed into place with a
``.artray-tiny.json`` marker; a second call on the same folder skips complete ones.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import torch

from artray.models import tiny_tokenizers as tt
from artray.models.weights import load_state_dict, save_state_dict

FORMAT_VERSION = 3  # 2: the OpenAI-layout state dicts are safetensors (were pickle .pt); 3: BLIP init range 0.1
MARKER = ".artray-tiny.json"
IMAGE = 32  # image side of the tiny vision towers (real: 224-384)
VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
              image_size=IMAGE, patch_size=8)
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


def _params(*modules: torch.nn.Module) -> int:
    return int(sum(p.numel() for m in modules for p in m.parameters()))


def _clip_image_processor(size: int = IMAGE):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=OPENAI_MEAN, image_std=OPENAI_STD)


def _sd_img2img(out: Path) -> tuple[str, str, int]:
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tt.clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
    )
    vae = AutoencoderKL(  # four levels, so the latent is 1/8 of the image side, as in SD 1.x
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=8, sample_size=64,
    )
    scheduler = PNDMScheduler(  # SD 1.5's scheduler config; load_img2img swaps in Euler ancestral
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    )
    pipe = StableDiffusionImg2ImgPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=_clip_image_processor(224), requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    # runwayml/stable-diffusion-v1-5 ships vocab.json + merges.txt only: load through that path too.
    tt.write_clip_bpe_files(out / "tokenizer")
    (out / "tokenizer" / "tokenizer.json").unlink()
    return "", "StableDiffusionImg2ImgPipeline", _params(unet, vae, text_encoder)


def _llava(out: Path) -> tuple[str, str, int]:
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = tt.llava_tokenizer()
    image_id = tok.convert_tokens_to_ids("<image>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION, projection_dim=32, hidden_act="quick_gelu"),
        text_config=LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        ),
        image_token_index=image_id, projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=-2, pad_token_id=tok.pad_token_id,
    )
    model = LlavaForConditionalGeneration(config)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    processor = LlavaProcessor(
        image_processor=_clip_image_processor(), tokenizer=tok, patch_size=VISION["patch_size"],
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=tt.LLAVA_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return "", "LlavaForConditionalGeneration", _params(model)


def _blip_config(tok):
    from transformers import BlipConfig

    text = dict(vocab_size=len(tok), hidden_size=32, encoder_hidden_size=VISION["hidden_size"],
                intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.sep_token_id,
                sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id, initializer_range=0.1)
    # BlipVisionConfig's default initializer_range is 1e-10 (it assumes pretrained weights): a random
    # BLIP then maps every image to the same feature and its contrastive loss sits at chance. At 0.1
    # (both towers) the tiny model's features differ per image/text and fine-tuning can move them.
    return BlipConfig(text_config=text, vision_config=dict(VISION, initializer_range=0.1), projection_dim=16,
                      image_text_hidden_size=16, initializer_range=0.1)


def _blip_processor(tok):
    from transformers import BlipImageProcessor, BlipProcessor

    image = BlipImageProcessor(size={"height": IMAGE, "width": IMAGE}, image_mean=OPENAI_MEAN, image_std=OPENAI_STD)
    return BlipProcessor(image_processor=image, tokenizer=tok)


def _blip_retrieval(out: Path) -> tuple[str, str, int]:
    from transformers import BlipForImageTextRetrieval

    tok = tt.bert_tokenizer(bos_dec=True)
    model = BlipForImageTextRetrieval(_blip_config(tok))
    model.save_pretrained(out, safe_serialization=True)
    _blip_processor(tok).save_pretrained(out)
    tt.write_wordpiece_vocab(tok, out)
    return "", "BlipForImageTextRetrieval", _params(model)


def _blip_captioner(out: Path) -> tuple[str, str, int]:
    from transformers import BlipForConditionalGeneration

    tok = tt.bert_tokenizer(bos_dec=True)
    model = BlipForConditionalGeneration(_blip_config(tok))
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tok.bos_token_id, tok.sep_token_id, tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    _blip_processor(tok).save_pretrained(out)
    tt.write_wordpiece_vocab(tok, out)
    return "", "BlipForConditionalGeneration", _params(model)


def _git_captioner(out: Path) -> tuple[str, str, int]:
    from transformers import GitConfig, GitForCausalLM, GitProcessor

    tok = tt.bert_tokenizer()
    config = GitConfig(
        vision_config=dict(VISION), vocab_size=len(tok), hidden_size=32, intermediate_size=37,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id,
    )
    model = GitForCausalLM(config)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    GitProcessor(image_processor=_clip_image_processor(), tokenizer=tok).save_pretrained(out)
    tt.write_wordpiece_vocab(tok, out)
    return "", "GitForCausalLM", _params(model)


def _clip77(out: Path) -> tuple[str, str, int]:
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    # open_clip's OpenAI builder infers heads as width // 64, so widths are multiples of 64.
    model = CLIP(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=8, image_size=IMAGE),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
        quick_gelu=True,
    )
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_state_dict(sd, out / "clip-tiny.safetensors")
    return "clip-tiny.safetensors", "CLIP (OpenAI state-dict layout, 77 positions)", _params(model)


def _longclip_from(clip_file: Path) -> Callable[[Path], tuple[str, str, int]]:
    def build(out: Path) -> tuple[str, str, int]:
        from artray.models.longclip import longclip_state_dict_from_clip

        sd = longclip_state_dict_from_clip(load_state_dict(clip_file))
        save_state_dict(sd, out / "longclip-tiny.safetensors")
        n = sum(v.numel() for k, v in sd.items() if k != "positional_embedding_res")
        return ("longclip-tiny.safetensors",
                "Long-CLIP (OpenAI state-dict layout, 248 positions + positional_embedding_res)", n)

    return build


def _cnclip(out: Path) -> tuple[str, str, int]:
    from transformers import (
        ChineseCLIPConfig,
        ChineseCLIPImageProcessor,
        ChineseCLIPModel,
        ChineseCLIPProcessor,
    )

    tok = tt.chinese_bert_tokenizer()
    config = ChineseCLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=512, type_vocab_size=2,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(VISION, projection_dim=16), projection_dim=16,
    )
    model = ChineseCLIPModel(config)
    model.save_pretrained(out, safe_serialization=True)
    image = ChineseCLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE},
                                      image_mean=OPENAI_MEAN, image_std=OPENAI_STD)
    ChineseCLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(out)
    # OFA-Sys/chinese-clip-* ship vocab.txt only (no tokenizer.json): load through that path too.
    tt.write_wordpiece_vocab(tok, out)
    (out / "tokenizer.json").unlink()
    return "", "ChineseCLIPModel", _params(model)


def _build_one(dest: Path, name: str, seed: int, build: Callable[[Path], tuple[str, str, int]]) -> dict:
    """Build `name` under `dest` unless a complete copy for this seed exists; return its marker."""
    final = dest / name
    marker_path = final / MARKER
    if marker_path.exists():
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
        if marker.get("seed") == seed and marker.get("format") == FORMAT_VERSION:
            return marker
    tmp = dest / f".{name}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir(parents=True)
    try:
        torch.manual_seed(seed)  # each checkpoint depends only on the seed, not on what was built before
        rel_file, arch, n_params = build(tmp)
        marker = {"name": name, "seed": seed, "format": FORMAT_VERSION, "file": rel_file,
                  "architecture": arch, "parameters": n_params}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if final.exists():  # stale (other seed or format): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return marker


def make_tiny(dest_dir: str, seed: int = 0) -> dict[str, str]:
    """Write (offline, seeded) the tiny checkpoint set into `dest_dir`; return ``{name: path}``.

    Names: sd-img2img, llava, blip-retrieval, blip-captioner, git-captioner, clip-77,
    longclip, cnclip. ``dest_dir/tiny_models.json`` lists name → relative path,
    architecture and parameter count. Idempotent: complete checkpoints are kept.
    """
    from transformers.utils import logging as hf_logging

    dest = Path(dest_dir).expanduser().absolute()
    dest.mkdir(parents=True, exist_ok=True)
    builders: list[tuple[str, Callable[[Path], tuple[str, str, int]]]] = [
        ("sd-img2img", _sd_img2img),
        ("llava", _llava),
        ("blip-retrieval", _blip_retrieval),
        ("blip-captioner", _blip_captioner),
        ("git-captioner", _git_captioner),
        ("clip-77", _clip77),
        ("longclip", _longclip_from(dest / "clip-77" / "clip-tiny.safetensors")),
        ("cnclip", _cnclip),
    ]
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # random init of tiny models is expected; keep the log quiet
    hf_logging.disable_progress_bar()
    try:
        markers = {name: _build_one(dest, name, seed, build) for name, build in builders}
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

    paths, listing = {}, {}
    for name, m in markers.items():
        rel = f"{name}/{m['file']}" if m["file"] else name
        paths[name] = str(dest / rel)
        listing[name] = {"path": rel, "architecture": m["architecture"], "parameters": m["parameters"]}
    index = json.dumps({"seed": seed, "models": listing}, indent=2) + "\n"
    index_path = dest / "tiny_models.json"
    if not index_path.exists() or index_path.read_text(encoding="utf-8") != index:
        tmp = dest / f".tiny_models.{uuid.uuid4().hex}.tmp"
        tmp.write_text(index, encoding="utf-8")
        os.replace(tmp, index_path)
    return paths
