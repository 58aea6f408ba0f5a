"""The training strategy choice (plain DDP or DeepSpeed ZeRO) without Ray: what `strategy: auto` picks,
what a resumed run keeps, and the options refused with their fix. The runs themselves (DDP trains,
checkpoints, resumes after a worker failure and exports; a resume with the other strategy refused; bf16
and compile on CPU) are in tests/test_train_longclip.py."""

from __future__ import annotations

import pytest

from artray.train import strategy
from artray.train.config import TrainConfig

BASE = {"model": "m", "corpus": "c", "output": "o"}


def test_auto_is_ddp_unless_the_config_asks_for_deepspeed():
    assert TrainConfig(**BASE).requested_strategy() == "auto"
    assert TrainConfig(**BASE, zero_stage=2).requested_strategy() == "deepspeed"  # a ZeRO stage named: DeepSpeed
    assert TrainConfig(**BASE, zero_stage=0).requested_strategy() == "deepspeed"
    assert TrainConfig(**BASE, precision="fp16").requested_strategy() == "deepspeed"  # its loss scaling
    assert TrainConfig(**BASE, strategy="ddp", zero_stage=3).requested_strategy() == "ddp"  # explicit wins
    assert TrainConfig(**BASE, strategy="deepspeed").requested_strategy() == "deepspeed"


def test_auto_picks_by_model_size():
    assert strategy.resolve("auto", 428_000_000, None)[0] == "ddp"
    name, why = strategy.resolve("auto", 1_300_000_000, None)
    assert name == "deepspeed" and "1300.0M parameters" in why
    assert strategy.resolve("deepspeed", 1_000, None)[0] == "deepspeed"


def test_a_resumed_run_keeps_its_strategy_and_the_other_one_is_refused_with_the_fix():
    assert strategy.resolve("auto", 1_000, "deepspeed")[0] == "deepspeed"  # auto follows the checkpoint
    assert strategy.resolve("ddp", 1_000, "ddp")[0] == "ddp"
    with pytest.raises(RuntimeError, match="written with strategy deepspeed, this run asks for ddp.*strategy: "
                                           "deepspeed \\(or auto\\)"):
        strategy.resolve("ddp", 1_000, "deepspeed", "checkpoint /runs/x/checkpoint_epoch0001")
    # a loop state from before the choice existed was a DeepSpeed run
    assert strategy.of_state({"epoch": 1}) == "deepspeed" and strategy.of_state({"strategy": "ddp"}) == "ddp"


def test_fp16_with_ddp_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="fp16 needs strategy: deepspeed.*use bf16"):
        TrainConfig(**BASE, strategy="ddp", precision="fp16")
    TrainConfig(**BASE, strategy="ddp", precision="bf16", compile=True)  # accepted (compile: CUDA workers only)
