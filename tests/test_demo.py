"""README's first Quickstart command: `artray demo` runs the whole chain end to end.

The full chain takes ~5 minutes on 2 cores, so it is `slow` here; CI runs the Quickstart
command itself as its own step (.ci/run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artray import corpus
from artray.scaffold.demo import N_SAMPLES, run_demo
from artray.schema import VARIANT_SCHEMA

STAGES = ("[import]", "[ingest]", "[augment]", "[caption]", "[train]", "[evaluate retrieval]", "[embed]", "[index]",
          "[search]", "[report]")


@pytest.mark.slow
def test_demo_runs_the_chain_and_is_rerunnable(ray_local, tmp_path, capsys):
    out_dir = tmp_path / "demo"
    result = run_demo(str(out_dir))
    out = capsys.readouterr().out
    assert "[demo] done" in out and all(stage in out for stage in STAGES), out[-3000:]
    assert out.count("[search] POST") == 2
    summaries = result["corpora"]
    for name in ("artpedia", "artcap", "culti", "folder", "artpedia-ingested"):
        s = summaries[name]
        assert s["artworks"] == N_SAMPLES and s["with_image"] == N_SAMPLES and s["failures"] == 0, (name, s)
    train_ids = {a["artwork_id"] for a in corpus.read_artworks(str(out_dir / "corpora" / "artpedia")).to_pylist()
                 if a["split"] == "train"}
    variants = corpus.read_table(str(Path(result["variants"]) / "variants"),
                                 VARIANT_SCHEMA)
    assert set(variants["parent_id"].to_pylist()) == train_ids and variants.num_rows == 2 * len(train_ids)
    evaluation = json.loads((Path(result["evaluation"]) / "summary.json").read_text())
    assert {"untrained", "finetuned", "finetuned+laclip", "rrf"} <= set(evaluation["metrics"]["corpus"])
    # what the product is for: the fine-tuned model beats the untrained one on the held-out split, significantly
    t2i = evaluation["metrics"]["corpus"]
    assert t2i["finetuned"]["t2i"]["R@1"] > t2i["untrained"]["t2i"]["R@1"]
    assert "untrained" in evaluation["significance"]["corpus"]["t2i"]["runs"]["finetuned"]["beats"]["mrr"]
    assert "significantly better" in out and len(out.splitlines()) <= 60, out
    html = Path(result["report"]).read_text()
    assert "<img" in html and "finetuned" in html
    again = run_demo(str(out_dir))  # idempotent: every step is complete and skipped; nothing is duplicated
    assert capsys.readouterr().out.count("complete, skipped") == 10
    assert again["corpora"] == summaries
    assert corpus.read_table(str(Path(result["variants"]) / "variants"),
                             VARIANT_SCHEMA).num_rows \
        == variants.num_rows
