"""A killed recipe resumes at the step it was in.

`artray recipe run culti2025` (tiny scale) runs as its own driver process on the chaos cluster and is
SIGKILLed as soon as its first step (training) is recorded complete, i.e. while it is in step 2. The
rerun, from another process, skips the training (its export is untouched), runs the remaining steps
and ends with the paper's table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]


def test_a_killed_recipe_resumes_at_its_step(tiny_models, chaos_cluster, chaos_report, tmp_path, capsys):
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.recipes.config import load_recipe
    from artray.recipes.runner import run_recipe
    from artray.scaffold.sample_corpora import make_samples

    samples = make_samples(str(tmp_path / "samples"), n=30)
    culti, out = str(tmp_path / "culti"), tmp_path / "out"
    import_corpus(ImportConfig(format="cnclip", src=samples["culti"], dest=culti))
    tiny = ["scale=tiny", f"tiny_models={Path(tiny_models['cnclip']).parent}", "epochs=1"]
    # the chaos cluster runs without token auth (see test_bad_inputs: a driver must not turn it on for itself)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": chaos_cluster.address,
           "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE") or "disabled"}
    args = [sys.executable, str(REPO / "jobs" / "recipe.py"), "run", "culti2025", "--corpus", culti, "--out", str(out)]
    for item in tiny:
        args += ["--set", item]
    state_file, log = out / "_recipe.json", tmp_path / "driver.log"
    with open(log, "wb") as sink:
        driver = subprocess.Popen(args, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.time() + 600
    while time.time() < deadline:
        assert driver.poll() is None, f"the recipe ended before it could be killed:\n{log.read_text()[-3000:]}"
        if state_file.exists() and "train" in json.loads(state_file.read_text()).get("steps", {}):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"step 1 did not finish in time:\n{log.read_text()[-3000:]}")
    driver.send_signal(signal.SIGKILL)
    driver.wait(30)
    state = json.loads(state_file.read_text())
    export = Path(state["steps"]["train"]["result"]["export"])
    stamp = export.stat().st_mtime_ns
    chaos_cluster.wait_resources_free(120)

    capsys.readouterr()
    started = time.time()
    run_recipe(load_recipe("culti2025"), culti, str(out), tiny)
    printed = capsys.readouterr().out
    chaos_report({"suite": "recipe", "stage": "recipe culti2025", "fault": "driver SIGKILLed after step 1",
                  "steps_skipped_on_rerun": printed.count("complete, skipped"),
                  "recover_s": round(time.time() - started, 1)})
    assert "1/4 train (train): complete, skipped" in printed, printed
    assert export.stat().st_mtime_ns == stamp  # the training was not redone
    table = json.loads((out / "table" / "table.json").read_text())
    assert {r["setting"] for r in table["rows"]} >= {"CN-CLIP ViT-H fine-tuned"}
    assert set(json.loads(state_file.read_text())["steps"]) == {"train", "evaluate", "table", "report"}
