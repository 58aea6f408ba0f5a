"""README's first Quickstart command: `artray demo` runs the chain end to end."""

from __future__ import annotations

from artray.demo import run_demo


def test_demo_runs_the_chain_and_is_rerunnable(ray_local, tmp_path, capsys):
    summaries = run_demo(str(tmp_path / "demo"))
    out = capsys.readouterr().out
    assert "[demo] done" in out and "[ingest]" in out
    for name in ("artpedia", "artcap", "culti", "folder", "artpedia-ingested"):
        s = summaries[name]
        assert s["artworks"] == 50 and s["with_image"] == 50 and s["failures"] == 0, (name, s)
        assert set(s["artworks_per_split"]) == {"train", "val", "test"}
    assert summaries["culti"]["languages"] == ["zh"]
    again = run_demo(str(tmp_path / "demo"))  # idempotent: same outputs, nothing duplicated
    assert again == summaries
