"""The jobs table (`artray.jobs`) that the CLI, `artray submit` and recipe steps read: every row's
references load, and what a row says about its config (positionals, output key) is true of it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from artray.import_refs import load_ref
from artray.jobs import JOBS, commands, recipe_stages, submittable

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", [n for n, job in JOBS.items() if job.config])
def test_every_job_row_names_a_config_and_a_run_function_that_fit(name):
    job = JOBS[name]
    config_cls, run = load_ref(job.config), load_ref(job.run)
    assert callable(run)
    fields = config_cls.model_fields
    assert set(job.positionals) <= set(fields), name
    if job.output_key:
        assert job.output_key in fields, f"{name}: its config has no {job.output_key!r} field"


def test_each_submit_entrypoint_runs_the_cli_command_of_its_job():
    """`artray submit <stage>` runs jobs/<script>.py [lead]: that script must call the same CLI command."""
    for name, job in submittable().items():
        script, *lead = job.entrypoint
        tree = ast.parse((REPO / script).read_text(encoding="utf-8"))
        call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "main")
        fixed = [e.value for e in call.args[0].elts if isinstance(e, ast.Constant)]
        expected = list(job.command) if job.command else {"import": ["corpus", "import"], "recipe": ["recipe", "run"]}[name]
        assert fixed + lead == expected, f"{name}: {script} {lead} runs `artray {' '.join(fixed + lead)}`"


def test_the_front_doors_offer_what_they_did():
    assert [j.command for j in commands().values()] == [
        ("corpus", "ingest"), ("augment",), ("caption",), ("evaluate", "captions"), ("evaluate", "retrieval"),
        ("evaluate", "runs"), ("report",), ("train",), ("embed",), ("index", "build"), ("search",)]
    assert sorted(submittable()) == ["augment", "caption", "embed", "evaluate-captions", "evaluate-retrieval",
                                     "evaluate-runs", "import", "index", "ingest", "recipe", "report", "train"]
    assert sorted(recipe_stages()) == ["augment", "caption", "embed", "evaluate-captions", "evaluate-retrieval",
                                       "import", "index", "ingest", "report", "table", "train"]
