"""The Ray Data work of `artray evaluate retrieval`: vectors for the gallery and the queries.

- corpus images and texts: the embed job itself (``run_embed``, one output per checkpoint,
  resumable), or an existing embed output, checked for family, checkpoint and finiteness;
- generated queries (caption job output): ``EmbedBatch``, the embed job's actor, on a dataset
  of text rows, collected on the driver;
- LACLIP crops: an actor that loads the encoder once and encodes k crops per image;
- BLIP ITM: an actor that scores each query against its top-k candidates with the ITM head.

Every actor pool is sized like the embed job's (``embed_pool``: one actor per GPU, else from CPUs).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from artray import corpus, storage
from artray.errors import UserError
from artray.evaluate.laclip import LaclipOptions, encode_crops
from artray.families import load_encoder
from artray.images import to_rgb
from artray.outputs import permanent_failures, read_embeddings, read_params
from artray.stages.embed import INPUT_SCHEMA, EmbedBatch, EmbedConfig, embed_pool, run_embed


class RetrievalEvalError(UserError, RuntimeError):
    """Missing or corrupt inputs (corpus, embeddings, captions), a checkpoint of the wrong family, or a
    config that cannot run; the message says what to fix."""


def corpus_vectors(ecfg: EmbedConfig, given: bool) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], set[str]]:
    """(image id → vector, text id → vector, keys that failed for good) of the corpus split.

    ``given``: `ecfg.output` is an existing embed output to check and read; otherwise the
    embed job runs (or resumes) into it."""
    opts = ecfg.storage_options()
    if not given:
        run_embed(ecfg)
    elif corpus.read_manifest(ecfg.output, opts) is None:
        raise RetrievalEvalError(f"embeddings {ecfg.output} have no {corpus.MANIFEST}: not a finished `artray embed` "
                             "output (run it to the end, or leave `embeddings` unset to embed here)")
    params = read_params(ecfg.output, "embed", opts) or {}
    if (params.get("family"), params.get("checkpoint")) != (ecfg.family, ecfg.checkpoint):
        raise RetrievalEvalError(f"embeddings {ecfg.output} were made by {params.get('family')}:{params.get('checkpoint')},"
                             f" not {ecfg.family}:{ecfg.checkpoint}; point `embeddings` at this checkpoint's output")
    try:
        table = read_embeddings(ecfg.output, opts, columns=["id", "kind", "vector", "split"])
    except (pa.ArrowException, OSError) as exc:
        raise RetrievalEvalError(f"embeddings {ecfg.output} cannot be read ({exc}); embed again into a new output") from exc
    if ecfg.splits:
        table = table.filter(pc.is_in(table["split"], pa.array(ecfg.splits)))
    out: dict[str, dict[str, np.ndarray]] = {"image": {}, "text": {}}
    dims = set()
    for rid, kind, vec in zip(table["id"].to_pylist(), table["kind"].to_pylist(), table["vector"].to_numpy(False)):
        v = np.asarray(vec, np.float32)
        if v.ndim != 1 or not np.isfinite(v).all() or not np.linalg.norm(v) > 0:
            raise RetrievalEvalError(f"embeddings {ecfg.output}: the {kind} vector of {rid!r} is corrupt (NaN, infinite or "
                                 "zero); delete that output and embed again")
        dims.add(v.shape[0])
        out[kind][rid] = v
    if len(dims) > 1:
        raise RetrievalEvalError(f"embeddings {ecfg.output} mix vector dims {sorted(dims)}: corrupt; embed again")
    failed = permanent_failures(ecfg.output, "embed", opts)
    return out["image"], out["text"], failed


def _dataset_and_pool(ecfg: EmbedConfig, table: pa.Table):
    pool = embed_pool(ecfg, table.num_rows)
    return ray.data.from_arrow(table), dict(
        batch_size=ecfg.batch_size, batch_format="pyarrow", compute=pool.strategy(), **pool.remote_args())


def embed_texts(ecfg: EmbedConfig, ids: list[str], texts: list[str]) -> dict[str, np.ndarray]:
    """Vectors of texts not in the corpus (generated queries), by the embed job's actor."""
    n = len(ids)
    if not n:
        return {}
    table = pa.table({"embedding_id": [f"text:{i}" for i in ids], "id": ids, "kind": ["text"] * n,
                      "split": ["query"] * n, "image": pa.nulls(n, pa.binary()), "image_uri": pa.nulls(n, pa.string()),
                      "text": texts}, schema=INPUT_SCHEMA)
    ds, kw = _dataset_and_pool(ecfg, table)
    result = ds.map_batches(EmbedBatch, fn_constructor_kwargs={"cfg": ecfg}, **kw).to_arrow_refs()
    rows = pa.concat_tables(ray.get(result)).select(["id", "vector", "_ok"]).to_pylist()
    return {r["id"]: np.asarray(r["vector"], np.float32) for r in rows if r["_ok"]}


def _image_of(row: dict, opts, max_pixels: int):
    data = row["image"] if row["image"] is not None else storage.read_bytes(row["image_uri"], opts)
    return to_rgb(data, max_pixels)


class _CropBatch:
    """Ray Data actor: the encoder once; per image row, its k LACLIP crop embeddings (flattened)."""

    def __init__(self, ecfg: EmbedConfig, opts: LaclipOptions):
        self.ecfg, self.opts, self.sopts = ecfg, opts, ecfg.storage_options()
        self.encoder = load_encoder(ecfg.family, ecfg.checkpoint, ecfg.device, ecfg.dtype, self.sopts)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        images = [_image_of(r, self.sopts, self.ecfg.max_image_pixels) for r in rows]
        crops = encode_crops(self.encoder, images, self.opts, [r["artwork_id"] for r in rows])
        return pa.table({"artwork_id": [r["artwork_id"] for r in rows],
                         "crops": [c.reshape(-1).tolist() for c in crops]})


def crop_vectors(ecfg: EmbedConfig, images: pa.Table, opts: LaclipOptions) -> dict[str, np.ndarray]:
    """artwork_id → (k, dim) crop embeddings of the rows of `images` (artwork_id, image, image_uri)."""
    ds, kw = _dataset_and_pool(ecfg, images)
    refs = ds.map_batches(_CropBatch, fn_constructor_kwargs={"ecfg": ecfg, "opts": opts}, **kw).to_arrow_refs()
    table = pa.concat_tables(ray.get(refs))
    return {a: np.asarray(c, np.float32).reshape(opts.crops, -1)
            for a, c in zip(table["artwork_id"].to_pylist(), table["crops"].to_pylist())}


class _ItmBatch:
    """Ray Data actor: an ITM-capable encoder (a family with the "itm" reranker: BLIP retrieval) once; per row
    (one image, several texts) the ITM match logits."""

    def __init__(self, ecfg: EmbedConfig):
        self.ecfg, self.sopts = ecfg, ecfg.storage_options()
        self.encoder = load_encoder(ecfg.family, ecfg.checkpoint, ecfg.device, ecfg.dtype, self.sopts)

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for row in batch.to_pylist():
            image = _image_of(row, self.sopts, self.ecfg.max_image_pixels)
            logits = self.encoder.itm_logits([image], row["texts"], [0] * len(row["texts"]))
            out.append(logits[:, 1].tolist())
        return pa.table({"pair": batch["pair"], "itm": out})


def itm_logits(ecfg: EmbedConfig, pairs: pa.Table) -> dict[int, list[float]]:
    """Row `pair` index → ITM match logits of (image, each of `texts`); `pairs` has pair, artwork_id,
    image, image_uri, texts."""
    ds, kw = _dataset_and_pool(ecfg, pairs)
    kw["batch_size"] = max(1, ecfg.batch_size // 16)
    table = pa.concat_tables(ray.get(ds.map_batches(_ItmBatch, fn_constructor_kwargs={"ecfg": ecfg}, **kw)
                                     .to_arrow_refs()))
    return dict(zip(table["pair"].to_pylist(), table["itm"].to_pylist()))
