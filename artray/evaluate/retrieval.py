"""`artray evaluate retrieval`: text→image and image→text retrieval of one or more checkpoints on a corpus split.

For each model (BLIP ITC, Long-CLIP, Chinese-CLIP, open_clip, HF CLIP) the gallery and the
queries are embedded on Ray Data (`artray.evaluate.retrieval_embed`), every query is scored
against the whole gallery, and R@1/5/10, MRR, P@1 and the median/mean rank are computed on
each run's top `run_depth` items (`retrieval_metrics.run_metrics`; 0: the whole gallery, exact
ranks). Optional re-scorings add runs of their own:
BLIP ITM re-ranking of the top `itm_k` (``<model>+itm``) and LACLIP (``<model>+laclip``).
`fusions` add reciprocal-rank-fused runs (of the depth-cut runs, cut to the same depth), scored
by the same function at the same depth as single runs: a relevant item past the depth counts as
not retrieved (reciprocal rank 0, rank depth + 1). Every pair of runs of a query set and
direction gets ranx's paired significance test.

A *query set* is the corpus's own texts of the split, or the captions/queries one captioner
and preset of an `artray caption` output wrote for the split's artworks (the source work
evaluated both). Text→image: each text against the split's images; image→text: each image
against the query set's texts. A query whose relevant items are all missing (failed
embeddings) is left out and counted.

Output at `output`: ``runs/<query_set>/<direction>/<run>.trec`` (top `run_depth` per query,
TREC/ranx format), ``qrels/<query_set>/<direction>.trec``, ``metrics/<run>.json`` (one per
checkpoint and re-scoring), ``summary.json`` (all metrics, MR, fusion, significance),
``embeddings/<model>/`` (the embed job's output, unless `embeddings` pointed elsewhere) and
``_manifest.json`` last.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from artray import corpus, families, storage
from artray.config import JobConfig
from artray.encoders import Device, DType, canonical_checkpoint
from artray.families import RetrievalFamily
from artray.families.base import config_json
from artray.evaluate import fusion
from artray.evaluate import retrieval_embed as re_
from artray.evaluate import retrieval_metrics as rm
from artray.evaluate.laclip import LaclipOptions, laclip_scores
from artray.evaluate.retrieval_embed import RetrievalEvalError
from artray.manifest import build_manifest
from artray.stages.embed import EmbedConfig

STAGE = "evaluate-retrieval"
DIRECTIONS = ("t2i", "i2t")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
SIGNIFICANCE_METRICS = ["hit_rate@1", "hit_rate@5", "hit_rate@10", "mrr"]
ITM_OFFSET = 1e4  # items outside the ITM top-k keep their ITC order, below every re-ranked item


class ModelSpec(BaseModel):
    """One checkpoint to evaluate."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN, description="names its runs and metrics file")
    family: RetrievalFamily
    checkpoint: str
    embeddings: str | None = Field(None, description="an existing `artray embed` output of this checkpoint on "
                                   "this corpus (default: embedded into <output>/embeddings/<name>)")
    itm_rerank: bool = Field(False, description="BLIP only: re-rank the top itm_k by ITM (+ITC), as BLIP does")
    itm_k: int = Field(256, ge=1, description="candidates re-ranked by ITM (BLIP's k_test)")


class QuerySet(BaseModel):
    """Where the texts come from: the corpus, or one captioner/preset of a caption output."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    source: str = Field("corpus", description="'corpus' or the URI of an `artray caption` output")
    captioner: str | None = Field(None, description="caption output: which captioner (needed if several)")
    preset: str = Field("caption", description="caption output: caption / query / …")
    exclude_flags: list[str] = Field(default_factory=lambda: ["refusal", "loop", "empty"])


FusionSpec = fusion.FusionSpec  # one RRF fusion of named runs (shared with `evaluate runs`)


class RetrievalEvalConfig(JobConfig):
    """R@K / MRR / MR of checkpoints in both directions on one corpus split, with ITM and LACLIP re-scoring,
    RRF fusion and significance tests (`artray evaluate retrieval`)."""

    RENAMED = {"actor_num_cpus": "cpus_per_actor"}

    corpus: str = Field(description="corpus URI (import / ingest output)")
    output: str = Field(description="where runs, metrics and summary.json go")
    split: Literal["train", "val", "test"] = Field("test", description="the corpus split whose artworks and texts "
                                                                       "make the queries and the gallery")
    models: list[ModelSpec] = Field(min_length=1)
    query_sets: list[QuerySet] = Field(default_factory=lambda: [QuerySet(name="corpus")])
    directions: list[Literal["t2i", "i2t"]] = Field(default_factory=lambda: list(DIRECTIONS))
    run_depth: int = Field(100, ge=0, description="items per query in the written runs (0: the whole gallery)")
    laclip: LaclipOptions = Field(default_factory=LaclipOptions)
    fusions: list[FusionSpec] = Field(default_factory=list)
    significance_test: Literal["student", "fisher", "tukey"] = Field("student", description="ranx compare's test")
    max_p: float = Field(0.05, gt=0, lt=1, description="p-value under which a difference between models is "
                                                      "reported as significant")
    device: Device = Field("auto", description="where the encoders run (auto: CUDA when there is a GPU, else CPU)")
    dtype: DType = Field("auto", description="encoder precision (auto: float16 on CUDA, float32 on CPU)")
    batch_size: int = Field(32, ge=1, description="images or texts per encoder forward pass")
    actors: int | None = Field(None, ge=1, description="encoder actors (default: one per GPU, else from CPUs)")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per encoder actor")

    @model_validator(mode="after")
    def _unique_names(self):
        for what, names in (("models", [m.name for m in self.models]), ("query_sets", [q.name for q in self.query_sets])):
            if len(set(names)) != len(names):
                raise ValueError(f"{what} names must be unique, got {names}")
        return self


def check_family(family: str, checkpoint: str, itm: bool = False) -> None:
    """Refuse a checkpoint that is visibly of another family than `family` (each registered family's
    ``sniff`` says which local checkpoints look like its own), or an ITM re-ranking of a family without it."""
    if itm and "itm" not in families.get(family).rerankers:
        able = [n for n in families.names("retrieval") if "itm" in families.get(n).rerankers]
        raise RetrievalEvalError(f"ITM re-ranking needs a BLIP retrieval checkpoint (family {', '.join(able)}); "
                                 f"{checkpoint} was given as family {family}")
    path = Path(canonical_checkpoint(checkpoint))
    if not path.exists():
        return  # a hub id, an s3:// URI, an open_clip tag: nothing to look at here
    found = [n for n in families.names() if families.get(n).sniff(path)]
    if not found and (cfg := config_json(path)) is not None and cfg.get("model_type"):
        found = [cfg["model_type"]]  # a transformers checkpoint of no registered family
    if found and family not in found:
        raise RetrievalEvalError(f"{checkpoint} is a {'/'.join(found)} checkpoint, not {family}: set the model's "
                                 f"family to match it, or point it at a {family} checkpoint")


def _embed_config(cfg: RetrievalEvalConfig, m: ModelSpec) -> EmbedConfig:
    return EmbedConfig(input=cfg.corpus, output=m.embeddings or storage.join(cfg.output, "embeddings", m.name),
                       family=m.family, checkpoint=m.checkpoint, splits=[cfg.split], device=cfg.device,
                       dtype=cfg.dtype, batch_size=cfg.batch_size, actors=cfg.actors,
                       cpus_per_actor=cfg.cpus_per_actor, s3_endpoint=cfg.s3_endpoint)


def _query_texts(cfg: RetrievalEvalConfig, qs: QuerySet, opts) -> tuple[list[str], list[str], list[list[str]], bool]:
    """(text ids, texts, relevant artwork ids per text, whether they are corpus texts)."""
    if qs.source == "corpus":
        t = corpus.read_texts(cfg.corpus, opts)
        t = t.filter(pc.equal(t["split"], cfg.split))
        return t["text_id"].to_pylist(), t["text"].to_pylist(), t["artwork_ids"].to_pylist(), True
    from artray.outputs import read_captions

    if corpus.read_manifest(qs.source, opts) is None:
        raise RetrievalEvalError(f"query set {qs.name}: {qs.source} has no {corpus.MANIFEST}: not a finished "
                                 "`artray caption` output")
    t = read_captions(qs.source, opts, preset=qs.preset, exclude_flags=tuple(qs.exclude_flags))
    names = sorted(set(t["captioner"].to_pylist()))
    if qs.captioner is None and len(names) > 1:
        raise RetrievalEvalError(f"query set {qs.name}: {qs.source} holds captioners {names}; set its captioner")
    t = t.filter(pc.and_(pc.equal(t["split"], cfg.split), pc.equal(t["captioner"], qs.captioner or (names or [""])[0])))
    if t.num_rows == 0:
        raise RetrievalEvalError(f"query set {qs.name}: no usable {qs.preset!r} captions of {qs.captioner or names} "
                                 f"for split {cfg.split} in {qs.source}")
    return t["caption_id"].to_pylist(), t["text"].to_pylist(), [[a] for a in t["artwork_id"].to_pylist()], False


class _QueryData:
    """One model × query set: image and text matrices and the ground truth both ways."""

    def __init__(self, image_ids, image_vecs, text_ids, text_vecs, text_arts):
        self.image_ids, self.text_ids = image_ids, text_ids
        self.images, self.texts = np.stack(image_vecs), np.stack(text_vecs)
        pos = {a: i for i, a in enumerate(image_ids)}
        self.t2i = [[pos[a] for a in arts if a in pos] for arts in text_arts]
        self.i2t = [[] for _ in image_ids]
        for t, items in enumerate(self.t2i):
            for i in items:
                self.i2t[i].append(t)


def _gather(image_vecs: dict, text_vecs: dict, text_ids, text_arts, gallery_ids, left_out: dict) -> _QueryData:
    kept_imgs = [a for a in gallery_ids if a in image_vecs]
    left_out["images_without_embedding"] = len(gallery_ids) - len(kept_imgs)
    kept = [(t, arts) for t, arts in zip(text_ids, text_arts) if t in text_vecs]
    left_out["texts_without_embedding"] = len(text_ids) - len(kept)
    data = _QueryData(kept_imgs, [image_vecs[a] for a in kept_imgs], [t for t, _ in kept],
                      [text_vecs[t] for t, _ in kept], [a for _, a in kept])
    if not data.image_ids or not data.text_ids:
        raise RetrievalEvalError("nothing to evaluate: no embedded images or texts in the split")
    return data



def _itm_rerank(ecfg: EmbedConfig, m: ModelSpec, d: _QueryData, sims: dict, texts: dict, images: pa.Table) -> dict:
    """ITC scores with each query's top itm_k replaced by ITC + ITM match logit (BLIP's ranking)."""
    k_img, k_txt = min(m.itm_k, len(d.image_ids)), min(m.itm_k, len(d.text_ids))
    top_t2i = np.argsort(-sims["t2i"], axis=1, kind="stable")[:, :k_img]
    top_i2t = np.argsort(-sims["i2t"], axis=1, kind="stable")[:, :k_txt]
    need: dict[int, set[int]] = {}
    for t, imgs in enumerate(top_t2i):
        for i in imgs:
            need.setdefault(int(i), set()).add(t)
    for i, ts in enumerate(top_i2t):
        need.setdefault(i, set()).update(int(t) for t in ts)
    pos = {a: r for r, a in enumerate(images["artwork_id"].to_pylist())}
    order = sorted(need)
    pairs = images.take([pos[d.image_ids[i]] for i in order]).append_column(
        "texts", pa.array([[texts[d.text_ids[t]] for t in sorted(need[i])] for i in order])).append_column(
        "pair", pa.array(order, pa.int64()))
    logits = re_.itm_logits(ecfg, pairs)
    itm = {(i, t): s for i in order for t, s in zip(sorted(need[i]), logits[i])}
    out = {}
    for direction, top in (("t2i", top_t2i), ("i2t", top_i2t)):
        s = sims[direction] - ITM_OFFSET
        for q, cands in enumerate(top):
            for c in cands:
                key = (int(c), q) if direction == "t2i" else (q, int(c))
                s[q, c] = sims[direction][q, c] + itm[key] + ITM_OFFSET
        out[direction] = s
    return out


def _evaluate_runs(cfg, qs_name: str, d: _QueryData, run_sims: dict[str, dict], opts) -> tuple[dict, dict, dict]:
    """Metrics of each run and direction; the runs (top run_depth) and qrels, written as TREC."""
    metrics, runs, qrels = {}, {}, {}
    for direction in cfg.directions:
        rel = d.t2i if direction == "t2i" else d.i2t
        qids, gids = (d.text_ids, d.image_ids) if direction == "t2i" else (d.image_ids, d.text_ids)
        keep = [q for q, r in enumerate(rel) if r]
        qrels[direction] = rm.qrels_dict([qids[q] for q in keep], gids, [rel[q] for q in keep])
        storage.write_bytes_atomic(storage.join(cfg.output, "qrels", qs_name, f"{direction}.trec"),
                                   fusion.qrels_trec(qrels[direction]).encode(), opts)
        for name, sims in run_sims.items():
            sim = sims[direction][keep]
            rm.check_finite(sim)
            run = rm.run_dict(sim, [qids[q] for q in keep], gids, cfg.run_depth)
            metrics.setdefault(name, {})[direction] = {**rm.run_metrics(run, qrels[direction], _depth(cfg, len(gids))),
                                                       "left_out_no_relevant": len(rel) - len(keep), "gallery": len(gids)}
            runs.setdefault(direction, {})[name] = run
            storage.write_bytes_atomic(storage.join(cfg.output, "runs", qs_name, direction, f"{name}.trec"),
                                       fusion.to_trec(run, name).encode(), opts)
    return metrics, runs, qrels


def _depth(cfg: RetrievalEvalConfig, gallery: int) -> int:
    """The depth every run of a direction is scored at: `run_depth`, or the whole gallery (0 or more)."""
    return min(cfg.run_depth, gallery) if cfg.run_depth > 0 else gallery


def run_retrieval_eval(cfg: RetrievalEvalConfig) -> dict:
    """Evaluate every model on every query set and direction; write runs, metrics, summary; return the summary."""
    started, opts = time.time(), cfg.storage_options()
    if corpus.read_manifest(cfg.corpus, opts) is None:
        raise RetrievalEvalError(f"{cfg.corpus} has no {corpus.MANIFEST}: not a finished corpus "
                                 "(run `artray corpus import` first)")
    for m in cfg.models:
        check_family(m.family, m.checkpoint, m.itm_rerank)
    run_names = {m.name for m in cfg.models} | {f"{m.name}+itm" for m in cfg.models if m.itm_rerank} | (
        {f"{m.name}+laclip" for m in cfg.models} if cfg.laclip.enabled else set())
    for f in cfg.fusions:
        if missing := [r for r in f.runs if r not in run_names]:
            raise RetrievalEvalError(f"fusion {f.name}: unknown runs {missing}; runs are {sorted(run_names)}")
    storage.delete(storage.join(cfg.output, corpus.MANIFEST), opts)
    arts = corpus.read_artworks(cfg.corpus, opts, columns=["artwork_id", "split", "image", "image_uri"])
    arts = arts.filter(pc.equal(arts["split"], cfg.split)).select(["artwork_id", "image", "image_uri"])
    if arts.num_rows == 0:
        raise RetrievalEvalError(f"{cfg.corpus} has no {cfg.split} artworks")
    gallery_ids = arts["artwork_id"].to_pylist()
    queries = {qs.name: _query_texts(cfg, qs, opts) for qs in cfg.query_sets}

    results: dict = {qs: {} for qs in queries}
    all_runs: dict = {qs: {} for qs in queries}
    all_qrels: dict = {}
    models_info, left_out = {}, {}
    for m in cfg.models:
        ecfg = _embed_config(cfg, m)
        image_vecs, corpus_text_vecs, failed = re_.corpus_vectors(ecfg, given=m.embeddings is not None)
        crops = re_.crop_vectors(ecfg, arts.filter(pc.is_in(arts["artwork_id"], pa.array(list(image_vecs)))),
                                 cfg.laclip) if cfg.laclip.enabled else None
        models_info[m.name] = {**m.model_dump(), "embeddings": ecfg.output, "failed_embeddings": len(failed)}
        for qs_name, (tids, texts, text_arts, from_corpus) in queries.items():
            text_vecs = corpus_text_vecs if from_corpus else re_.embed_texts(ecfg, tids, texts)
            lo = left_out.setdefault(qs_name, {}).setdefault(m.name, {})
            d = _gather(image_vecs, text_vecs, tids, text_arts, gallery_ids, lo)
            sim = d.texts.astype(np.float64) @ d.images.astype(np.float64).T
            run_sims = {m.name: {"t2i": sim, "i2t": sim.T}}
            if m.itm_rerank:
                run_sims[f"{m.name}+itm"] = _itm_rerank(ecfg, m, d, run_sims[m.name], dict(zip(tids, texts)), arts)
            if crops is not None:
                lac = laclip_scores(np.stack([crops[a] for a in d.image_ids]), d.images, d.texts, cfg.laclip)
                run_sims[f"{m.name}+laclip"] = {"t2i": lac.T, "i2t": lac}
            metrics, runs, qrels = _evaluate_runs(cfg, qs_name, d, run_sims, opts)
            results[qs_name].update(metrics)
            for direction, named in runs.items():
                all_runs[qs_name].setdefault(direction, {}).update(named)
            all_qrels[qs_name] = qrels  # the same for every model unless embeddings failed differently
    for qs_name in results:
        for f in cfg.fusions:
            for direction, runs in all_runs[qs_name].items():
                depth = max(len(items) for r in f.runs for items in runs[r].values())  # the runs' depth
                fused = rm.cut_run(fusion.fuse_rrf({r: runs[r] for r in f.runs}, f.name, f.k), depth)
                runs[f.name] = fused
                storage.write_bytes_atomic(storage.join(cfg.output, "runs", qs_name, direction, f"{f.name}.trec"),
                                           fusion.to_trec(fused, f.name).encode(), opts)
                results[qs_name].setdefault(f.name, {})[direction] = rm.run_metrics(
                    fused, all_qrels[qs_name][direction], depth)
        for name, per in results[qs_name].items():
            if all(d in per for d in DIRECTIONS):
                per["MR"] = rm.mean_recall(per["t2i"], per["i2t"])
    significance = {qs: {direction: fusion.significance(all_qrels[qs][direction], runs, SIGNIFICANCE_METRICS,
                                                        cfg.significance_test, cfg.max_p)
                         for direction, runs in all_runs[qs].items()} for qs in results}
    for name in sorted({n for per in results.values() for n in per}):
        storage.write_json_atomic(storage.join(cfg.output, "metrics", f"{name}.json"), {
            "run": name, "model": models_info.get(name.split("+")[0]), "split": cfg.split,
            "query_sets": {qs: per[name] for qs, per in results.items() if name in per}}, opts)
    summary = {"corpus": cfg.corpus, "split": cfg.split, "models": models_info, "metrics": results,
               "significance": significance, "left_out": left_out,
               "query_sets": {qs.name: qs.model_dump() for qs in cfg.query_sets},
               "laclip": cfg.laclip.model_dump(), "fusions": [f.model_dump() for f in cfg.fusions],
               "run_depth": cfg.run_depth, "evaluated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    storage.write_json_atomic(storage.join(cfg.output, "summary.json"), summary, opts)
    corpus.write_manifest(cfg.output, build_manifest(STAGE, cfg.model_dump(mode="json"), {
        "runs": sum(len(p) for p in results.values()), "gallery": len(gallery_ids)}, started, output=cfg.output), opts)
    print(summary_line(summary, cfg.output))
    return summary


def summary_line(summary: dict, output: str) -> str:
    """One line per query set: R@1 both ways and MR of each run."""
    parts = []
    for qs, per in summary["metrics"].items():
        cells = [f"{name} " + " ".join(f"{d} R@1 {v[d]['R@1']:.3f}" for d in DIRECTIONS if d in v)
                 + (f" MR {v['MR']:.3f}" if "MR" in v else "") for name, v in per.items()]
        parts.append(f"{qs}: " + "; ".join(cells))
    return f"[evaluate retrieval] {summary['split']}: " + " | ".join(parts) + f" → {output}"


def load_summary(output: str, options: storage.StorageOptions = storage.DEFAULT_OPTIONS) -> dict | None:
    """The summary.json written at `output`, or None."""
    return storage.read_json(storage.join(output, "summary.json"), options)
