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


def test_table_shows_published_this_run_and_difference_and_says_why_cells_are_empty(tmp_path):
    """The table step on a caption-metrics summary: fractions → the paper's unit, a row the paper lacks, SPICE
    without CoreNLP explained from the evaluation's own note; the HTML report shows the same table."""
    from artray.evaluate.report import ReportConfig, build_report
    from artray.recipes.table import TableConfig, run_table

    ev = tmp_path / "metrics"
    ev.mkdir()
    (ev / "summary.json").write_text(json.dumps({
        "splits": {"test": {"n": 9, "Bleu_4": 0.25, "CIDEr": 0.5}},
        "spice": {"available": False, "note": "Stanford CoreNLP 3.6.0 jars not found"}}))
    cfg = TableConfig(output=str(tmp_path / "table"), title="T", source="paper table 1", unit="percent", digits=1,
                      metrics={"B@4": "Bleu_4", "CIDEr": "CIDEr", "SPICE": "SPICE"},
                      rows=[{"setting": "ours", "summary": str(ev), "at": ["splits", "test"],
                             "published": {"B@4": 20.0, "CIDEr": 62.5, "SPICE": None}},
                            {"setting": "extra", "summary": str(ev), "at": ["splits", "test"]}])
    table = run_table(cfg)
    ours, extra = table["rows"]
    assert ours["this_run"] == {"B@4": 25.0, "CIDEr": 50.0}
    assert ours["difference"] == {"B@4": pytest.approx(5.0), "CIDEr": pytest.approx(-12.5)}
    assert "CoreNLP" in ours["missing"]["SPICE"] and extra["published_note"] == "not reported in the paper"
    md = (tmp_path / "table" / "table.md").read_text()
    assert "| ours | 20.0 | 25.0 | +5.0 | 62.5 | 50.0 | -12.5 | – | n/a | – |" in md
    assert "extra: published — not reported in the paper" in md
    html = build_report(ReportConfig(output=str(tmp_path / "r.html"), recipe_tables=[str(tmp_path / "table")]))
    assert "paper table 1" in html and "+5.0" in html and "not reported in the paper" in html
    with pytest.raises(Exception, match="nothing at splits → val"):
        run_table(cfg.model_copy(update={"rows": [cfg.rows[0].model_copy(update={"at": ["splits", "val"]})]}))


def test_submit_recipe_entrypoint_and_paths(tmp_path):
    from artray.errors import UserError
    from artray.submit import build_entrypoint, recipe_arguments

    args = recipe_arguments("culti2025", "s3://b/corpora/culti", "s3://b/out", "http://10.0.0.5:8265")
    assert build_entrypoint("recipe", None, ROOT, ["scale=tiny"], args) == (
        "python jobs/recipe.py run --set scale=tiny culti2025 --corpus s3://b/corpora/culti --out s3://b/out")
    with pytest.raises(UserError, match="--out out/x: relative paths"):
        recipe_arguments("culti2025", "s3://b/c", "out/x", "http://10.0.0.5:8265")
    local = recipe_arguments("culti2025", "s3://b/c", "out/x", "http://127.0.0.1:8265")
    assert local[-1] == str(Path("out/x").resolve())
    with pytest.raises(UserError, match="needs the recipe's name, --corpus and --out"):
        recipe_arguments("culti2025", None, "s3://b/o", "http://127.0.0.1:8265")


def test_recipes_needing_missing_features_refuse_to_start_and_say_what(tmp_path):
    from artray.recipes.config import Recipe

    recipe = Recipe.model_validate({
        "name": "x", "title": "t", "paper": "p", "corpus": "c",
        "requires": [{"family": "no-such-family", "why": "a test"}, {"stage": "caption", "field": "nope",
                                                                      "why": "another"}],
        "steps": [{"name": "s", "stage": "index", "config": {}}]})
    with pytest.raises(RecipeError, match="model family 'no-such-family' is not registered.*no 'nope' field"):
        run_recipe(recipe, str(tmp_path), str(tmp_path / "o"))
    assert "MISSING" in show_text(recipe)


def _tiny_run(name, corpus_uri, tiny_dir, out, extra=()):
    recipe = load_recipe(name)
    run_recipe(recipe, corpus_uri, out, ["scale=tiny", f"tiny_models={tiny_dir}", *extra])
    table = json.loads((Path(out) / "table" / "table.json").read_text())
    assert all(r["published"] or r["published_note"] for r in table["rows"])
    assert any("full-size pretrained" in n for n in table["notes"]) or name == "cioni2023-retrieval"
    assert "The paper" in (Path(out) / "report.html").read_text()
    return table


@pytest.mark.slow
def test_sigir2025_runs_end_to_end_on_tiny_models(ray_local, tiny_models, tmp_path):
    corpora, tiny_dir = _samples(tmp_path, tiny_models)
    table = _tiny_run("sigir2025", corpora["artpedia"], tiny_dir, str(tmp_path / "out"))
    rows = {r["setting"]: r for r in table["rows"]}
    assert len(rows) == 12 and rows["BLIP-L FT human, visual sentences"]["published"] == {"P@1": 0.58, "MRR": 0.685}
    assert all(set(r["this_run"]) == {"P@1", "MRR"} for r in rows.values())
    captions = json.loads((tmp_path / "out" / "caption-table" / "table.json").read_text())
    row = captions["rows"][0]
    assert {"ROUGE-L F1", "METEOR", "BLEU-4"} <= set(row["this_run"]) and "BERTScore-F1" in row["missing"]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["artpedia", "artcap"])
def test_cioni2023_captioning_runs_end_to_end_on_tiny_models(ray_local, tiny_models, tmp_path, dataset):
    corpora, tiny_dir = _samples(tmp_path, tiny_models)
    table = _tiny_run("cioni2023-captioning", corpora[dataset], tiny_dir, str(tmp_path / "out"),
                      [f"dataset={dataset}"])
    rows = {r["setting"]: r for r in table["rows"]}
    assert len(rows) == 6
    assert rows["GIT-base w/ DA"]["published"]["CIDEr"] == (0.0673 if dataset == "artpedia" else 0.6445)
    assert all({"B@1", "B@4", "METEOR", "ROUGE-L", "CIDEr"} <= set(r["this_run"]) for r in rows.values())
    assert all("SPICE" in r["missing"] for r in rows.values())


@pytest.mark.slow
def test_cioni2023_retrieval_runs_end_to_end_on_tiny_models(ray_local, tiny_models, tmp_path):
    corpora, tiny_dir = _samples(tmp_path, tiny_models)
    table = _tiny_run("cioni2023-retrieval", corpora["artpedia"], tiny_dir, str(tmp_path / "out"))
    assert [r["setting"] for r in table["rows"]] == ["CLIP zero-shot", "CLIP w/o DA", "CLIP w/ DA"]
    assert all(r["published"] is None and "PDF" in r["published_note"] for r in table["rows"])
    assert all(len(r["this_run"]) == 6 for r in table["rows"])


def test_table_marks_the_runs_a_row_beats_significantly(tmp_path):
    from artray.recipes.table import TableConfig, run_table

    ev = tmp_path / "eval"
    ev.mkdir()
    runs = {"ft": {"beats": {"hit_rate@1": ["base"], "mrr": ["base"]}}, "base": {"beats": {"hit_rate@1": [], "mrr": []}}}
    (ev / "summary.json").write_text(json.dumps({
        "metrics": {"q": {"ft": {"t2i": {"P@1": 0.6, "MRR": 0.7}}, "base": {"t2i": {"P@1": 0.2, "MRR": 0.3}}}},
        "significance": {"q": {"t2i": {"runs": runs}}}}))
    table = run_table(TableConfig(
        output=str(tmp_path / "t"), title="T", source="s", metrics={"P@1": "t2i.P@1", "MRR": "t2i.MRR"},
        significance={"direction": "t2i", "max_p": 0.05},
        rows=[{"setting": s, "summary": str(ev), "at": ["metrics", "q", s], "published": {"P@1": 0.5, "MRR": 0.6}}
              for s in ("ft", "base")]))
    assert table["rows"][0]["beats"] == {"P@1": ["base"], "MRR": ["base"]} and table["rows"][1]["beats"] == {}
    md = (tmp_path / "t" / "table.md").read_text()
    assert "| ft | 0.500 | 0.600 ▲base | +0.100 |" in md and "significantly better" in md
