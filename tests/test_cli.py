"""The `artray` command line: help and `corpus info` start without the heavy stack, a job's flags
come from its config (test hooks hidden, defaults shown), and --address only where Ray starts.

Timing lives in bench/cli_startup.py; these tests check the behaviour behind it: which modules a
command imports (a subprocess each, so nothing imported by other tests counts)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import Field

from artray.cli import build_parser, main
from artray.config import JobConfig, _scalar_type, add_config_arguments, config_from_args
from artray.import_refs import load_ref
from artray.jobs import commands

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "faiss", "transformers", "open_clip", "deepspeed")

_PROBE = """
import contextlib, io, json, sys
from artray.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "out": out.getvalue(),
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in %r)}))
""" % (HEAVY,)


def _run_cli(*argv: str) -> dict:
    """`artray ARGV` in a fresh interpreter: exit code, stdout, and the heavy modules it imported."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> str:
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.scaffold.sample_corpora import make_samples

    root = tmp_path_factory.mktemp("cli")
    samples = make_samples(str(root / "samples"), n=10)
    dest = str(root / "artcap")
    import_corpus(ImportConfig(format="artcap", src=samples["artcap"], dest=dest))
    return dest


@pytest.mark.parametrize("argv", [["--help"], ["evaluate", "--help"], ["corpus", "--help"],
                                  ["submit", "--help"], ["jobs", "list", "--help"]],
                         ids=lambda a: " ".join(a))
def test_help_imports_neither_torch_nor_ray(argv):
    got = _run_cli(*argv)
    assert got["code"] == 0 and got["out"].startswith("usage: artray")
    assert got["heavy"] == []


def test_top_level_help_lists_every_command_without_importing_them():
    got = _run_cli("--help")
    for command in ("corpus", "augment", "caption", "evaluate", "report", "train", "embed", "index", "search",
                    "demo", "submit", "jobs", "models"):
        assert command in got["out"]
    group = _run_cli("evaluate", "--help")
    assert "captions" in group["out"] and "retrieval" in group["out"]


def test_corpus_info_reads_the_manifest_without_torch_or_ray(small_corpus):
    got = _run_cli("corpus", "info", small_corpus)
    assert got["code"] == 0 and got["heavy"] == []
    summary = json.loads(got["out"])
    assert summary["artworks"] == 10 and summary["manifest"]["stage"] == "import"


def test_a_job_help_shows_its_config_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["corpus", "import", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--max-caption-chars" in out and "(default: 20000)" in out
    assert "--images" in out and "(default: None)" not in out  # a None default is not shown


@pytest.mark.parametrize("name", list(commands()))
def test_every_job_help_lists_its_config_flags(name, capsys):
    """Each job's parser, completed on demand from its config class, prints a help naming every scalar field."""
    with pytest.raises(SystemExit) as exc:
        main([*commands()[name].command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    config_cls = load_ref(commands()[name].config)
    positionals = commands()[name].positionals
    for name, field in config_cls.model_fields.items():
        hidden = (field.json_schema_extra or {}).get("hidden") if isinstance(field.json_schema_extra, dict) else False
        if _scalar_type(field.annotation) and name not in positionals:
            shown = re.search("--" + name.replace("_", "-") + r"(?![\w-])", out) is not None
            assert shown != bool(hidden), name


def test_address_only_on_commands_that_start_ray(capsys):
    args = build_parser().parse_args(["corpus", "ingest", "in", "out", "--address", "auto"])
    assert args.address == "auto"
    for argv in (["evaluate", "captions"], ["index", "build"], ["search"], ["report"]):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args([*argv, "--address", "auto"])
        assert exc.value.code == 2
        assert "unrecognized arguments: --address" in capsys.readouterr().err


class _HookedConfig(JobConfig):
    """A job config with one test hook."""

    rows: int = Field(3, description="rows to write")
    label: str | None = Field(None, description="a label for the output")
    fail_after_batches: int | None = Field(None, json_schema_extra={"hidden": True},
                                           description="test hook: raise after this many batches")


def test_hidden_test_hooks_stay_settable_but_out_of_help():
    import argparse

    parser = argparse.ArgumentParser(prog="job")
    add_config_arguments(parser, _HookedConfig)
    text = parser.format_help()
    assert "--rows" in text and "rows to write (default: 3)" in text
    assert "--label" in text and "(default: None)" not in text
    assert "fail-after-batches" not in text and "test hook" not in text
    cfg = config_from_args(_HookedConfig, parser.parse_args(["--fail-after-batches", "2"]))
    assert cfg.fail_after_batches == 2 and cfg.rows == 3
