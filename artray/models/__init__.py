"""Model loaders for every family artray runs, and tiny random checkpoints of each.

Every public ``load_*`` function takes a hub id, a local folder/file or an
``s3://bucket/prefix`` URI, so the real checkpoints and the tiny test checkpoints
(:func:`artray.scaffold.tiny.make_tiny`) go through exactly the same code.

Nothing heavy is imported here (artray must import fast); import the submodule you need:

- ``artray.models.diffusion.load_img2img``      Stable Diffusion img2img (diffusers)
- ``artray.models.mllm.load_mllm``              LLaVA-style image-text-to-text (transformers)
- ``artray.models.blip.load_blip_retrieval``    BLIP ITC/ITM retrieval
- ``artray.models.blip.load_blip_captioner``    BLIP captioning
- ``artray.models.git.load_git_captioner``      GIT captioning
- ``artray.models.longclip.load_longclip``      Long-CLIP (248 tokens) in open_clip
- ``artray.models.cnclip.load_cnclip``          Chinese-CLIP (transformers)
- ``artray.models.pretrained.load_pretrained``  resolve → from_pretrained → to(device).eval(), once for all
- ``artray.models.resolve.resolve_model_path``  s3:// model folders → local cache
- ``artray.models.weights``                     safetensors only; pickle checkpoints need ARTRAY_ALLOW_PICKLE=1
"""

from __future__ import annotations

__all__ = ["blip", "cnclip", "diffusion", "git", "longclip", "mllm", "pretrained", "resolve", "weights"]
