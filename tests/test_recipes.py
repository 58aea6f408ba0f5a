"""Paper recipes (`artray recipe`): shipped recipes load and show; a recipe runs end to end on the sample
corpora with tiny checkpoints and ends with the paper's table; a failed recipe resumes at its step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from artray.recipes.config import load_recipe, recipe_names
from artray.recipes.refs import RecipeError
from artray.recipes.runner import plan, run_recipe
from artray.recipes.show import show_text

PAPER_RECIPES = {"sigir2025", "culti2025", "cioni2023-captioning", "cioni2023-retrieval"}
ROOT = Path(__file__).resolve().parents[1]


def test_the_four_paper_recipes_are_listed_and_resolve():
    assert PAPER_RECIPES <= set(recipe_names())
    for name in PAPER_RECIPES:
        recipe = load_recipe(name)
        for scale in ("full", "tiny"):
            params, steps = plan(recipe, "s3://b/corpus", "s3://b/out", [f"scale={scale}", "tiny_models=/m"])
            assert steps[-1][1] == "report" and any(stage == "table" for _, stage, _ in steps), name
            text = json.dumps(steps)
            assert "${params" not in text and "${corpus}" not in text and "${out}" not in text, (name, scale)
        tables = [c for _, stage, c in steps if stage == "table"]
        assert all(row.get("published") or row.get("published_note") for t in tables for row in t["rows"]), name


def test_cli_lists_and_shows_recipes_without_heavy_imports():
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    code = ("import sys; from artray.cli import main; main(['recipe', 'list']); "
            "main(['recipe', 'show', 'culti2025', '--out', 's3://b/o', '--set', 'train.epochs=1']); "
            "print('HEAVY', sorted(m for m in ('torch', 'ray', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in PAPER_RECIPES:
        assert name in out.stdout
    assert "output: s3://b/o/evaluation" in out.stdout and "epochs: 1" in out.stdout
    assert "HEAVY []" in out.stdout


def test_bad_overrides_and_unknown_recipes_are_refused_with_the_fix():
    recipe = load_recipe("culti2025")
    with pytest.raises(RecipeError, match="no param or step 'epoch'"):
        plan(recipe, "c", "o", ["epoch=1"])
    with pytest.raises(RecipeError, match="artray recipe list"):
        load_recipe("nope2099")
    assert "step 2/4 evaluate" in show_text(recipe)


def _samples(tmp_path, tiny_models):
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.scaffold.sample_corpora import make_samples

    samples = make_samples(str(tmp_path / "samples"), n=30)
    corpora = {}
    for name, fmt in (("culti", "cnclip"), ("artpedia", "artpedia"), ("artcap", "artcap")):
        corpora[name] = str(tmp_path / "corpora" / name)
        import_corpus(ImportConfig(format=fmt, src=samples[name], dest=corpora[name]))
    return corpora, str(Path(tiny_models["cnclip"]).parent)


def test_culti2025_runs_end_to_end_and_a_failed_run_resumes_at_its_step(ray_local, tiny_models, tmp_path, capsys):
    corpora, tiny_dir = _samples(tmp_path, tiny_models)
    recipe, out = load_recipe("culti2025"), str(tmp_path / "out")
    tiny = ["scale=tiny", f"tiny_models={tiny_dir}", "epochs=1"]
    with pytest.raises(RecipeError, match="step evaluate"):  # fails in step 2, after the training finished
        run_recipe(recipe, corpora["culti"], out, [*tiny, "evaluate.split=holdout"])
    state = json.loads((Path(out) / "_recipe.json").read_text())
    assert list(state["steps"]) == ["train"]
    export = Path(state["steps"]["train"]["result"]["export"])
    stamp = export.stat().st_mtime_ns
    capsys.readouterr()
    run_recipe(recipe, corpora["culti"], out, tiny)
    printed = capsys.readouterr().out
    assert "1/4 train (train): complete, skipped" in printed and "2/4 evaluate (evaluate-retrieval): running" in printed
    assert export.stat().st_mtime_ns == stamp  # the training was not redone
    table = json.loads((Path(out) / "table" / "table.json").read_text())
    rows = {r["setting"]: r for r in table["rows"]}
    assert rows["CN-CLIP ViT-H fine-tuned"]["published"]["MR"] == 47.3
    assert set(rows["CN-CLIP ViT-H fine-tuned"]["this_run"]) == set(table["metrics"])
    ft = rows["CN-CLIP ViT-H fine-tuned"]
    assert ft["difference"]["MR"] == pytest.approx(ft["this_run"]["MR"] - 47.3)
    assert rows["Chinese-CLIP, not fine-tuned"]["published_note"] == "the paper reports no zero-shot row"
    assert any("full-size pretrained models" in n for n in table["notes"])
    md = (Path(out) / "table" / "table.md").read_text()
    assert "| CN-CLIP ViT-H fine-tuned | 27.2 |" in md
    html = (Path(out) / "report.html").read_text()
    assert "The paper&#x27;s table beside this run" in html or "The paper's table beside this run" in html
    assert "LACLIP ViT-H" in html
    run_recipe(recipe, corpora["culti"], out, tiny)  # everything complete: nothing runs
    again = capsys.readouterr().out
    assert again.count("complete, skipped") == 4 and ": running" not in again
