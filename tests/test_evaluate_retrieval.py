"""`artray evaluate retrieval` end to end on a real local Ray with tiny checkpoints: an ArtCap-like
sample corpus (five captions per image) and a generated query set; BLIP ITC + ITM, Long-CLIP,
LACLIP, RRF fusion and significance. Random tiny models make the answers arbitrary, so the
checks are consistency: the metrics equal ranx's on the written runs, a re-run is identical,
LACLIP with one full crop equals the plain scores; and bad inputs give clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from artray import corpus, storage
from artray.corpora.importer import ImportConfig, import_corpus
from artray.scaffold.sample_corpora import make_samples
from artray.evaluate import fusion
from artray.evaluate.laclip import LaclipOptions
from artray.evaluate.retrieval import RetrievalEvalConfig, RetrievalEvalError, run_retrieval_eval
from artray.evaluate.retrieval_metrics import RANX_EQUIVALENTS
from artray.schema import CAPTION_SCHEMA, EMBEDDING_SCHEMA


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    from artray.scaffold.tiny import make_tiny

    return make_tiny(str(tmp_path_factory.getbasetemp() / "tiny"))


@pytest.fixture(scope="module")
def artcap(tmp_path_factory) -> str:
    samples = make_samples(str(tmp_path_factory.mktemp("samples")), n=30)
    dest = str(tmp_path_factory.mktemp("corpora") / "artcap")
    import_corpus(ImportConfig(format="artcap", src=samples["artcap"], dest=dest, split_seed=0))
    return dest


@pytest.fixture(scope="module")
def queries(artcap, tmp_path_factory) -> str:
    """A caption-job output by hand: one 'query' per test artwork, one of them a flagged refusal."""
    out = str(tmp_path_factory.mktemp("captions"))
    arts = corpus.read_artworks(artcap, columns=["artwork_id", "split", "captions"]).to_pylist()
    rows = [{"caption_id": f"{a['artwork_id']}|llava|query", "artwork_id": a["artwork_id"], "split": a["split"],
             "captioner": "llava", "preset": "query", "prompt": "p", "model": "m", "revision": None, "generation": "{}",
             "text": "I cannot help with that." if n == 0 else a["captions"][0][:40],
             "flags": ["refusal"] if n == 0 else []} for n, a in enumerate(r for r in arts if r["split"] == "test")]
    storage.write_parquet_atomic(pa.Table.from_pylist(rows, schema=CAPTION_SCHEMA),
                                 storage.join(out, "captions", "part-0.parquet"))
    corpus.write_manifest(out, {"stage": "caption"})
    return out


def _cfg(artcap, out, tiny, queries, **kw) -> RetrievalEvalConfig:
    base = dict(corpus=artcap, output=str(out), run_depth=0, device="cpu", batch_size=16, cpus_per_actor=0.5,
                models=[{"name": "blip", "family": "blip", "checkpoint": tiny["blip-retrieval"], "itm_rerank": True,
                         "itm_k": 3},
                        {"name": "longclip", "family": "longclip", "checkpoint": tiny["longclip"]}],
                query_sets=[{"name": "corpus"}, {"name": "llava-query", "source": queries, "preset": "query"}],
                laclip={"enabled": True, "crops": 3, "scale": 0.6, "layout": "random", "seed": 1},
                fusions=[{"name": "rrf-blip-longclip", "runs": ["blip+itm", "longclip"]}])
    return RetrievalEvalConfig(**{**base, **kw})


def _ranx(out: Path, qs: str, direction: str, name: str) -> dict:
    from ranx import Qrels, Run, evaluate

    qrels = Qrels.from_file(str(out / "qrels" / qs / f"{direction}.trec"), kind="trec")
    run = Run(fusion.parse_trec((out / "runs" / qs / direction / f"{name}.trec").read_text()))
    return evaluate(qrels, run, list(RANX_EQUIVALENTS.values()))


@pytest.fixture(scope="module")
def evaluated(ray_local, artcap, tiny, queries, tmp_path_factory):
    """One BLIP checkpoint with ITM, LACLIP and a fusion, on the corpus captions (one actor pool per step)."""
    out = tmp_path_factory.mktemp("eval")
    cfg = _cfg(artcap, out, tiny, queries, models=[{"name": "blip", "family": "blip", "checkpoint": tiny["blip-retrieval"],
                                                    "itm_rerank": True, "itm_k": 3}],
               query_sets=[{"name": "corpus"}], laclip={"enabled": True, "crops": 2, "scale": 0.6},
               fusions=[{"name": "rrf", "runs": ["blip", "blip+itm"]}])
    return out, run_retrieval_eval(cfg)


def _check_against_ranx(out: Path, summary: dict, runs: set[str], query_sets: tuple[str, ...]) -> None:
    for qs in query_sets:
        assert set(summary["metrics"][qs]) == runs
        for name in runs:
            per = summary["metrics"][qs][name]
            assert 0 <= per["MR"] <= 1
            for direction in ("t2i", "i2t"):
                theirs = _ranx(out, qs, direction, name)
                for ours_name, ranx_name in RANX_EQUIVALENTS.items():
                    assert per[direction][ours_name] == pytest.approx(theirs[ranx_name], abs=1e-9), (qs, name)


def test_outputs_and_ranx_agreement(evaluated):
    out, summary = evaluated
    runs = {"blip", "blip+itm", "blip+laclip", "rrf"}
    _check_against_ranx(out, summary, runs, ("corpus",))
    per = summary["metrics"]["corpus"]["blip"]
    assert per["t2i"]["queries"] == 5 * per["i2t"]["queries"]  # ArtCap: five captions per image
    sig = summary["significance"]["corpus"]["t2i"]
    assert set(sig["runs"]) == runs and sig["stat_test"] == "student"
    assert json.loads((out / "metrics" / "blip+itm.json").read_text())["model"]["itm_k"] == 3
    assert (out / "_manifest.json").exists() and (out / "embeddings" / "blip" / "_manifest.json").exists()


@pytest.mark.slow
def test_two_models_generated_queries_rerun_and_full_crop(ray_local, artcap, tiny, queries, tmp_path):
    out = tmp_path / "eval"
    first = run_retrieval_eval(_cfg(artcap, out, tiny, queries))
    runs = {"blip", "blip+itm", "blip+laclip", "longclip", "longclip+laclip", "rrf-blip-longclip"}
    _check_against_ranx(out, first, runs, ("corpus", "llava-query"))
    n_corpus = first["metrics"]["corpus"]["blip"]["t2i"]["queries"]
    assert first["metrics"]["llava-query"]["blip"]["t2i"]["queries"] == n_corpus // 5 - 1  # the refusal is left out
    assert run_retrieval_eval(_cfg(artcap, out, tiny, queries))["metrics"] == first["metrics"]
    lac = run_retrieval_eval(_cfg(artcap, tmp_path / "full-crop", tiny, queries, fusions=[], query_sets=[{"name": "corpus"}],
                                  models=[{"name": "longclip", "family": "longclip", "checkpoint": tiny["longclip"],
                                           "embeddings": str(out / "embeddings" / "longclip")}],
                                  laclip=LaclipOptions(enabled=True, crops=1, scale=1.0)))
    m = lac["metrics"]["corpus"]
    for d in ("t2i", "i2t"):
        assert m["longclip+laclip"][d] == pytest.approx(m["longclip"][d], abs=1e-6)


def test_wrong_family_and_bad_inputs(ray_local, artcap, tiny, queries, tmp_path):
    def cfg(**kw):
        return _cfg(artcap, tmp_path / "o", tiny, queries, laclip={}, fusions=[], **kw)

    with pytest.raises(RetrievalEvalError, match="is a cnclip checkpoint, not blip"):
        run_retrieval_eval(cfg(models=[{"name": "x", "family": "blip", "checkpoint": tiny["cnclip"]}]))
    with pytest.raises(RetrievalEvalError, match="is a blip checkpoint, not longclip"):
        run_retrieval_eval(cfg(models=[{"name": "x", "family": "longclip", "checkpoint": tiny["blip-retrieval"]}]))
    with pytest.raises(RetrievalEvalError, match="ITM re-ranking needs a BLIP"):
        run_retrieval_eval(cfg(models=[{"name": "x", "family": "longclip", "checkpoint": tiny["longclip"],
                                        "itm_rerank": True}]))
    with pytest.raises(RetrievalEvalError, match="not a finished corpus"):
        run_retrieval_eval(cfg(corpus=str(tmp_path / "nowhere")))
    with pytest.raises(RetrievalEvalError, match="unknown runs"):
        run_retrieval_eval(_cfg(artcap, tmp_path / "o", tiny, queries, fusions=[{"name": "f", "runs": ["a", "b"]}]))
    # embeddings: unfinished, then finished with a NaN vector
    emb = tmp_path / "emb"
    model = {"name": "x", "family": "longclip", "checkpoint": tiny["longclip"], "embeddings": str(emb)}
    with pytest.raises(RetrievalEvalError, match="not a finished `artray embed` output"):
        run_retrieval_eval(cfg(models=[model], query_sets=[{"name": "corpus"}]))
    test_ids = [a for a, s in zip(*corpus.read_artworks(artcap, columns=["artwork_id", "split"]).columns) if s.as_py() == "test"]
    rows = [{"embedding_id": f"image:{a}", "id": a.as_py(), "kind": "image", "model": "longclip",
             "checkpoint": str(Path(tiny["longclip"]).resolve()), "vector": [np.nan] * 4 if n == 0 else [1.0, 0, 0, 0],
             "split": "test"} for n, a in enumerate(test_ids)]
    storage.write_parquet_atomic(pa.Table.from_pylist(rows, schema=EMBEDDING_SCHEMA), str(emb / "embeddings" / "p.parquet"))
    storage.write_json_atomic(str(emb / "_embed_params.json"), {"family": "longclip",
                                                                "checkpoint": str(Path(tiny["longclip"]).resolve())})
    corpus.write_manifest(str(emb), {"stage": "embed"})
    with pytest.raises(RetrievalEvalError, match="is corrupt"):
        run_retrieval_eval(cfg(models=[model], query_sets=[{"name": "corpus"}]))
    with pytest.raises(RetrievalEvalError, match="were made by longclip"):
        run_retrieval_eval(cfg(models=[{**model, "family": "open_clip"}], query_sets=[{"name": "corpus"}]))
