"""The README's training-preset table, generated from the presets themselves so the two cannot drift.

:func:`preset_table` renders every trainable family's presets (``artray.families.presets()`` over
``TrainConfig``'s defaults) as one markdown table, a column per preset, with where each recipe comes
from (sections of ``/work/shared/REFERENCE.md``, the project's notes on the source works) and where artray
deviates from it. ``tests/test_families.py`` checks that README.md holds exactly this table, between the
markers below; after changing a preset, paste ``python -m artray.families.preset_table``'s output there.
"""

from __future__ import annotations

from artray import families

BEGIN, END = "<!-- preset-table:begin -->", "<!-- preset-table:end -->"

# Where each preset comes from, what sets its text length and M, and where artray departs from the source.
SOURCES: dict[str, dict[str, str]] = {
    "longclip": {
        "source": "Long-CLIP (beichenzbc/Long-CLIP train.md / train.py), REFERENCE.md §3 Training",
        "text": "248 (the checkpoint's positions)",
        "deviations": "fp32 (source: AMP; set precision: bf16 on GPUs); the total batch is 128 × num_workers "
                      "(source: 2048 in train.md's table)",
    },
    "infonce": {
        "source": "SIGIR 2025 (jcgohr/artwork-caption-gen finetuner.py), REFERENCE.md §1 (B) Long-CLIP fine-tuning",
        "text": "248 (the checkpoint's positions)",
        "deviations": "fp32 (source: AMP + GradScaler; set precision: bf16 on GPUs)",
    },
    "cnclip": {
        "source": "Chinese-CLIP run_scripts/*_finetune_*.sh, REFERENCE.md §4 Fine-tuning recipe",
        "text": "context_length 52",
        "deviations": "schedule, betas and eps are not in REFERENCE.md (artray's cosine and AdamW defaults); "
                      "fp32 (source: `--precision`, AMP by default); `--use-augment` not reproduced",
    },
    "blip": {
        "source": "SIGIR 2025's BLIP (jcgohr/BLIP configs/artpedia_*.yaml), REFERENCE.md §1 (B) BLIP fine-tuning",
        "text": "max_length 35",
        "deviations": "hard negatives mined in each worker's batch (source: `negative_all_rank`, across GPUs); "
                      "no momentum distillation or queue; no `pre_caption(max_words=30)` before the tokenizer; "
                      "betas and eps are not in REFERENCE.md (AdamW's defaults)",
    },
    "captioner": {
        "source": "ICCV 2023 (ciodar/cultural-heritage-diffaug configs/artpedia.yaml, artcap.yaml), "
                  "REFERENCE.md §1 (A) Training hyperparameters",
        "text": "— (validation captions: 4 beams, length_penalty 0.6, max_new_tokens 100)",
        "deviations": "betas and eps are not in REFERENCE.md (AdamW's defaults); validation on the whole val "
                      "split (source: 30 % of its batches)",
    },
    "cioni2023": {
        "source": "ICCV 2023 (ciodar/cultural-heritage-diffaug), REFERENCE.md §1 (A): alpha (How alpha is applied) "
                  "and its only training config (Training hyperparameters)",
        "text": "77 (the checkpoint's positions)",
        "deviations": "the source has no CLIP code: its captioner optimisation is applied to CLIP, with artray's "
                      "symmetric InfoNCE and best val R@1; AutoAugment not applied",
    },
}
# M (diffusion variants per artwork) is the augment job's `variants`, not a training key.
M_WITH_ALPHA = "augment `variants` (4; source: NOT FOUND, CLI default 1)"

ROWS: list[tuple[str, str]] = [
    ("objective", "loss"), ("optimizer", "optimizer"), ("lr", "lr"), ("batch (per worker)", "batch_size"),
    ("epochs", "epochs"), ("schedule", "schedule"), ("warm-up", "warmup_steps"), ("weight decay", "weight_decay"),
    ("betas", "betas"), ("eps", "eps"), ("precision", "precision"), ("grad_clip", "grad_clip"),
    ("AutoAugment (train images)", "auto_augment"),
    ("text length", ""), ("alpha", "alpha"), ("M", ""), ("best checkpoint by", "select_metric"),
]


def _cell(value) -> str:
    if value is None:
        return "null (off)"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_cell(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _row(key: str, label: str, name: str, values: dict) -> str:
    if label == "text length":
        return SOURCES[name]["text"]
    if label == "M":
        return M_WITH_ALPHA if values["alpha"] else "—"
    if key == "warmup_steps" and values["schedule"] == "onecycle":
        return f"{_cell(values['pct_start'] * 100)} % of steps (one-cycle)"
    return _cell(values[key])


def preset_table() -> str:
    """Every trainable family's presets as one markdown table (a column per preset), then source and deviations."""
    from artray.train.config import TrainConfig

    defaults = {k: f.default for k, f in TrainConfig.model_fields.items()}
    table = families.presets()
    if missing := sorted(set(table) - set(SOURCES)):
        raise KeyError(f"presets without a source in artray.families.preset_table.SOURCES: {missing}")
    columns = list(table)
    values = {p: {**defaults, **table[p]} for p in columns}
    lines = ["| | " + " | ".join(f"`{p}` ({table[p]['family']})" for p in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for label, key in ROWS:
        lines.append(f"| {label} | " + " | ".join(_row(key, label, p, values[p]) for p in columns) + " |")
    lines += ["", *(f"- `{p}` — source: {SOURCES[p]['source']}. Deviations: {SOURCES[p]['deviations']}."
                    for p in columns)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(preset_table())
