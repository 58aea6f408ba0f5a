"""Tiny Stable Diffusion img2img pipeline (the augment stage's generator)."""

from __future__ import annotations

from pathlib import Path

from artray.scaffold.tiny import tokenizers as tt
from artray.scaffold.tiny.common import clip_image_processor, params


def build(out: Path, need) -> tuple[str, str, int]:
    """Stable Diffusion 1.x img2img: tiny UNet/VAE and a 2-layer CLIP text encoder."""
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
        safety_checker=None, feature_extractor=clip_image_processor(224), requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    # runwayml/stable-diffusion-v1-5 ships vocab.json + merges.txt only: load through that path too.
    tt.write_clip_bpe_files(out / "tokenizer")
    (out / "tokenizer" / "tokenizer.json").unlink()
    return "", "StableDiffusionImg2ImgPipeline", params(unet, vae, text_encoder)
