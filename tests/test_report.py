"""`artray report` on the sample ArtCap corpus: every section present, nothing external, and the page
opens in headless Chromium (a screenshot that shows the charts, no console errors)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from artray import corpus, storage
from artray.corpora.importer import ImportConfig, import_corpus
from artray.scaffold.sample_corpora import make_samples
from artray.evaluate import fusion
from artray.evaluate.report import ReportConfig, ReportError, build_report, run_report
from artray.evaluate.retrieval_metrics import mean_recall, qrels_dict, retrieval_metrics, run_dict
from artray.schema import CAPTION_SCHEMA, VARIANT_SCHEMA

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
MPL_BLUE = np.array([31, 119, 180])  # matplotlib's first bar colour


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from artray.scaffold.tiny import make_tiny

    tiny = make_tiny(str(tmp_path_factory.getbasetemp() / "tiny"))
    root = tmp_path_factory.mktemp("report")
    samples = make_samples(str(root / "samples"), n=20)
    art = str(root / "artcap")
    import_corpus(ImportConfig(format="artcap", src=samples["artcap"], dest=art, split_seed=0))
    arts = corpus.read_artworks(art, columns=["artwork_id", "split", "image", "captions"]).to_pylist()

    caps = str(root / "captions")  # a caption output: a clean captioner and a refusing one
    rows = [{"caption_id": f"{a['artwork_id']}|{c}|caption", "artwork_id": a["artwork_id"], "split": a["split"],
             "captioner": c, "preset": "caption", "prompt": "Caption this image", "model": c, "revision": None,
             "generation": "{}", "text": text, "flags": flags}
            for a in arts for c, text, flags in (("llava", " ".join(a["captions"]) * 3, []),
                                                 ("llama", "I'm not able to provide that information.", ["refusal"]))]
    storage.write_parquet_atomic(pa.Table.from_pylist(rows, schema=CAPTION_SCHEMA), f"{caps}/captions/p.parquet")
    corpus.write_manifest(caps, {"stage": "caption"})

    aug = str(root / "augment")  # two variants of three train artworks (flipped originals)
    train = [a for a in arts if a["split"] == "train"][:3]
    variants = []
    for a in train:
        im = Image.open(io.BytesIO(a["image"])).convert("RGB")
        for v, op in enumerate((Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM)):
            buf = io.BytesIO()
            im.transpose(op).save(buf, format="PNG")
            variants.append({"variant_id": f"{a['artwork_id']}#{v}", "parent_id": a["artwork_id"], "variant": v,
                             "split": "train", "image": buf.getvalue(), "width": im.width, "height": im.height,
                             "seed": v, "prompt": "p", "prompt_truncated": False, "model": "m", "strength": 0.3,
                             "guidance": 7.5, "steps": 4, "sampler": "euler_a", "similarity": None,
                             "passed_filter": None})
    storage.write_parquet_atomic(pa.Table.from_pylist(variants, schema=VARIANT_SCHEMA), f"{aug}/variants/p.parquet")
    corpus.write_manifest(aug, {"stage": "augment"})

    ev = str(root / "eval")  # a retrieval summary from hand-built similarity matrices (two models)
    rng = np.random.default_rng(0)
    tids, iids = [f"t{i}" for i in range(30)], [f"i{i}" for i in range(6)]
    t2i = [[i // 5] for i in range(30)]
    i2t = [[t for t in range(30) if t // 5 == i] for i in range(6)]
    metrics, runs = {}, {"t2i": {}, "i2t": {}}
    for name, noise in (("blip", 0.5), ("longclip", 2.0)):
        sim = np.eye(6)[[i // 5 for i in range(30)]] + rng.normal(scale=noise, size=(30, 6))
        per = {"t2i": {**retrieval_metrics(sim, t2i), "gallery": 6}, "i2t": {**retrieval_metrics(sim.T, i2t), "gallery": 30}}
        metrics[name] = {**per, "MR": mean_recall(per["t2i"], per["i2t"])}
        runs["t2i"][name], runs["i2t"][name] = run_dict(sim, tids, iids, 0), run_dict(sim.T, iids, tids, 0)
    sig = {d: fusion.significance(qrels_dict(*((tids, iids, t2i) if d == "t2i" else (iids, tids, i2t))), runs[d],
                                  ["hit_rate@1", "mrr"]) for d in runs}
    models = {"blip": {"family": "blip", "checkpoint": tiny["blip-retrieval"]},
              "longclip": {"family": "longclip", "checkpoint": tiny["longclip"]},
              "cnclip": {"family": "cnclip", "checkpoint": tiny["cnclip"]}}
    storage.write_json_atomic(f"{ev}/summary.json", {"split": "test", "models": models, "evaluated": "2026-12-06 10:00 UTC",
                                                     "metrics": {"corpus": metrics}, "significance": {"corpus": sig}})
    return {"corpus": art, "captions": [caps], "augment": aug, "retrieval": [ev]}


def test_report_has_every_section_and_no_external_assets(inputs, tmp_path):
    out = tmp_path / "report.html"
    run_report(ReportConfig(output=str(out), **inputs))
    doc = out.read_text(encoding="utf-8")
    for sid in ("recall", "metrics", "lengths", "coverage", "augment", "examples", "run"):
        assert f'<section id="{sid}">' in doc, sid
    # what a reader needs to judge the numbers: sizes, chance on a small gallery, when, and which checkpoints
    assert "30 queries against 6 images" in doc and "6 queries against 30 texts" in doc
    assert "A gallery of 6 items: chance alone gives R@1 16.7%" in doc
    assert "Report made " in doc and "2026-12-06 10:00 UTC" in doc
    assert "tiny/blip-retrieval" in doc and str(tmp_path.parent) not in doc.split('id="run"')[1]
    assert inputs["retrieval"][0] not in re.sub(r"<section id=\"run\">.*", "", doc, flags=re.S)  # no paths in headings
    assert doc.count('class="chart"') == 2  # recall bars + length histograms
    assert len(re.findall(r'<img src="data:image/jpeg', doc)) == 3 * 3  # originals + 2 variants each
    assert not re.search(r'(src|href)="(?!data:)', doc) and "<script" not in doc and "<link" not in doc
    assert "<sup>" in doc or "paired student test" in doc
    assert "refusal" in doc and "llama/caption" in doc and "llava/caption" in doc
    for label in ("blip (35)", "longclip (248)", "cnclip (52)"):
        assert label in doc
    # BLIP's 35 tokens cut the tripled ArtCap captions that Long-CLIP's 248 keep more of
    cov = re.search(r"llava/caption</td>(.*?)</tr>", doc).group(1)
    seen = [int(s) for s, _ in re.findall(r"<td>(\d+)% \((\d+)% cut\)</td>", cov)]  # blip, cnclip, longclip
    assert len(seen) == 3 and seen[0] < seen[2] < 100


def test_missing_input_is_named(inputs, tmp_path):
    with pytest.raises(ReportError, match="summary.json"):
        build_report(ReportConfig(output=str(tmp_path / "r.html"), retrieval=[str(tmp_path / "nothing")]))
    with pytest.raises(ReportError, match="nothing to report"):
        build_report(ReportConfig(output=str(tmp_path / "r.html")))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/setup.sh installs it)")
def test_report_opens_in_headless_chromium(inputs, tmp_path):
    out = tmp_path / "report.html"
    run_report(ReportConfig(output=str(out), **inputs))
    shot = tmp_path / "shot.png"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    proc = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,1600", out.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    assert "Uncaught" not in proc.stderr and "net::ERR" not in proc.stderr
    dom = subprocess.run([*base, "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="chart"') == 2 and 'id="coverage"' in dom
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    assert (np.abs(pixels - MPL_BLUE).sum(axis=1) < 30).sum() > 500  # the bar charts were drawn
