"""Chinese-CLIP family: contrastive fine-tuning of transformers' `ChineseCLIPModel`.

The text context may exceed Chinese-CLIP's 52 (the tower has 512 positions), so long
CulTi descriptions need not be cut. Optional frozen vision tower and gradient
checkpointing, as in the Chinese-CLIP scripts. The hooks are the transformers dual-tower
ones (:mod:`artray.train.dual_tower`); the export is a ``save_pretrained`` folder that
:func:`artray.models.cnclip.load_cnclip` loads.
"""

from __future__ import annotations

from artray.families.cnclip import CNCLIP
from artray.train.dual_tower import DualTowerTrainer


class CNClipTrainer(DualTowerTrainer):
    """Chinese-CLIP's training hooks: symmetric InfoNCE over all workers' batches; the BERT tokenizer's
    ``token_type_ids`` go to the text tower."""

    model_class, processor_class = "ChineseCLIPModel", "ChineseCLIPProcessor"
    default_context_length = CNCLIP.context_length  # 52, Chinese-CLIP's own
    token_keys = ("input_ids", "attention_mask", "token_type_ids")
