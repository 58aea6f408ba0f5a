"""`artray embed`: a corpus's images (and texts) → embedding rows, with one encoder, on Ray Data.

One task per artwork shard reads it (only the columns needed) and keeps the rows that
still need work; the texts still to embed join them
(``union``); one actor pool (``_EmbedBatch``: the encoder loaded once per actor, one GPU
per actor when the cluster has GPUs) turns each batch into result rows, and
``StageSink`` commits them to ``<out>/embeddings/`` and ``<out>/_failures/``.

Resume, as in ingest: the committed output is the checkpoint. An ``embedding_id``
(``image:<artwork_id>`` / ``text:<text_id>``) in ``<out>/embeddings`` is done; one whose
latest failure is permanent (undecodable image, empty text) is skipped unless
``retry_failed``. ``_embed_params.json`` pins family and checkpoint, and
``_encoder.json`` the encoder's fingerprint, written by the first actor and checked by
every later one: an output never mixes vectors of two encoders, even when a checkpoint
is overwritten in place. ``_manifest.json`` is deleted when a run starts and written
last. One run at a time per output URI.
"""

from __future__ import annotations

import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Field, field_validator

from artray import corpus, storage
from artray.config import JobConfig
from artray.corpus import ARTWORKS, MANIFEST
from artray.encoders import (
    Device,
    DType,
    Family,
    canonical_checkpoint,
    check_same_encoder,
    load_encoder,
)
from artray.errors import UserError
from artray.images import DEFAULT_MAX_PIXELS, ImageError, to_rgb
from artray.manifest import build_manifest
from artray.schema import EMBEDDING_SCHEMA
from artray.stages.pipeline_errors import run_pipeline
from artray.stages.sink import (
    StageSink,
    consolidate_failures,
    failed_phrase,
    failure_counts,
    failed_result,
    latest_failures,
    ok_result,
    result_schema,
)

STAGE = "embed"
EMBEDDINGS = "embeddings"
PARAMS = "_embed_params.json"  # family + checkpoint of the committed rows; a resume must match
ENCODER = "_encoder.json"  # identity (with fingerprint) of the encoder that made them
TASK_CPUS = 0.25  # read, select and write tasks are I/O: fractional, so they never wait behind the actors
INPUT_SCHEMA = pa.schema([("embedding_id", pa.string()), ("id", pa.string()), ("kind", pa.string()),
                          ("split", pa.string()), ("image", pa.binary()), ("image_uri", pa.string()),
                          ("text", pa.string())])
RESULT_SCHEMA = result_schema(pa.schema([f.with_nullable(True) for f in EMBEDDING_SCHEMA]))


class EmbedError(UserError, RuntimeError):
    """The embed job cannot start or finish; the message says what to fix."""


class EmbedConfig(JobConfig):
    """Config of `artray embed`."""

    input: str = Field(description="corpus URI to embed (written by `artray corpus import` / `ingest`)")
    output: str = Field(description="embeddings URI to write; running again resumes it")
    family: Family = Field(description="encoder family: blip, longclip, cnclip, open_clip or hf_clip")
    checkpoint: str = Field(description="hub id, local path or s3:// URI of the weights")
    images: bool = Field(True, description="embed artwork images")
    texts: bool = Field(True, description="embed the corpus texts (needed for image→text search)")
    splits: list[str] | None = Field(None, description="only these splits (default: all)")
    device: Device = Field("auto", description="auto: CUDA when the actor has a GPU, else CPU")
    dtype: DType = Field("auto", description="auto: float16 on CUDA, float32 on CPU")
    batch_size: int = Field(64, ge=1, description="rows per actor call (and per forward pass)")
    actors: int | None = Field(None, ge=1, description="encoder actors (default: one per GPU, else sized from CPUs)")
    actor_num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per actor")
    actor_num_gpus: float | None = Field(None, ge=0, description="GPUs per actor (default: 1 if the cluster has GPUs)")
    shard_rows: int = Field(2000, ge=1, description="rows per committed Parquet shard at most")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="refuse images with more pixels")
    retry_failed: bool = Field(False, description="also re-attempt permanent failures")

    @field_validator("checkpoint")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return canonical_checkpoint(value)


class _EmbedBatch:
    """Ray Data actor UDF: the encoder, loaded once; one result row per input row."""

    def __init__(self, cfg: EmbedConfig):
        self.cfg = cfg
        self.opts = cfg.storage_options()
        self.encoder = load_encoder(cfg.family, cfg.checkpoint, cfg.device, cfg.dtype, self.opts)
        _pin_encoder(cfg, self.encoder.identity(), self.opts)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        results: list[dict | None] = [None] * len(rows)
        images, texts = [], []
        for i, row in enumerate(rows):
            try:
                if row["kind"] == "image":
                    images.append((i, self._image(row)))
                elif (row["text"] or "").strip():
                    texts.append((i, row["text"]))
                else:
                    results[i] = self._fail(row, "empty_text", "the text is empty; fix it in the corpus")
            except ImageError as exc:
                results[i] = self._fail(row, exc.reason, f"{exc.detail}; replace the image in the corpus")
            except storage.StorageError as exc:
                results[i] = self._fail(row, "missing_image", str(exc), retryable=True)
        for items, encode in ((images, self.encoder.encode_images), (texts, self.encoder.encode_texts)):
            for i, vector, error in self._encode(items, encode):
                results[i] = self._fail(rows[i], "encode_error", error, retryable=True) if error else ok_result(
                    {"embedding_id": rows[i]["embedding_id"], "id": rows[i]["id"], "kind": rows[i]["kind"],
                     "model": self.cfg.family, "checkpoint": self.cfg.checkpoint, "vector": vector,
                     "split": rows[i]["split"]}, rows[i]["embedding_id"])
        return pa.Table.from_pylist(results, schema=RESULT_SCHEMA)

    def _image(self, row: dict):
        data = row["image"]
        if data is None:
            if not row["image_uri"]:
                raise ImageError("no_image", "the artwork has no image bytes and no image_uri; run `artray corpus ingest`")
            data = storage.read_bytes(row["image_uri"], self.opts)
        return to_rgb(data, self.cfg.max_image_pixels)

    @staticmethod
    def _encode(items: list[tuple[int, object]], encode):
        """(row index, vector, error) per item: one forward for the batch, one per item if that fails."""
        if not items:
            return []
        try:
            vectors = encode([x for _, x in items])
            return [(i, v.tolist(), None) for (i, _), v in zip(items, vectors)]
        except Exception:  # isolate the row that breaks the batch; the others still succeed
            out = []
            for i, x in items:
                try:
                    out.append((i, encode([x])[0].tolist(), None))
                except Exception as exc:
                    out.append((i, None, f"the encoder failed on this row: {type(exc).__name__}: {exc}"))
            return out

    def _fail(self, row: dict, reason: str, detail: str, retryable: bool = False) -> dict:
        base = {"embedding_id": row["embedding_id"], "id": row["id"], "kind": row["kind"], "model": self.cfg.family,
                "checkpoint": self.cfg.checkpoint, "vector": None, "split": row["split"]}
        return failed_result(base, row["embedding_id"], reason, detail, file=row["image_uri"], retryable=retryable)


def _pin_encoder(cfg: EmbedConfig, identity: dict, opts: storage.StorageOptions) -> None:
    """Record the encoder's identity at the output, or refuse if the one recorded differs."""
    uri = storage.join(cfg.output, ENCODER)
    recorded = storage.read_json(uri, opts)
    if recorded is None:
        storage.write_json_atomic(uri, identity, opts)
    else:
        check_same_encoder(recorded, identity, f"the embeddings at {cfg.output}")


def _read_images(batch: dict, todo: pa.Array, options: storage.StorageOptions) -> pa.Table:
    """The artwork rows of one corpus shard that are still to embed, in the input schema."""
    tables = [storage.read_parquet(uri, options, columns=["artwork_id", "split", "image", "image_uri"])
              for uri in batch["shard"]]
    table = pa.concat_tables(tables)
    table = table.filter(pc.is_in(table["artwork_id"], value_set=todo))
    n, ids = table.num_rows, table["artwork_id"].cast(pa.string())
    return pa.table({"embedding_id": pc.binary_join_element_wise("image:", ids, ""), "id": ids,
                     "kind": pa.array(["image"] * n, pa.string()), "split": table["split"].cast(pa.string()),
                     "image": table["image"].cast(pa.binary()), "image_uri": table["image_uri"].cast(pa.string()),
                     "text": pa.nulls(n, pa.string())}, schema=INPUT_SCHEMA)


def _todo(keys: list[str], done: set[str], failed: dict[str, bool], retry_failed: bool) -> tuple[list[bool], Counter]:
    """Per key whether to embed it, and how many were skipped as done / failed for good."""
    flags, skipped = [], Counter()
    for key in keys:
        if key in done:
            skipped["done"] += 1
        elif failed.get(key) is False and not retry_failed:
            skipped["failed"] += 1
        else:
            flags.append(True)
            continue
        flags.append(False)
    return flags, skipped


def _pool(cfg: EmbedConfig, batches: int) -> tuple[int, float]:
    """(actors, GPUs per actor): one actor per GPU when there are GPUs, else as many as the CPUs allow."""
    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    num_gpus = cfg.actor_num_gpus if cfg.actor_num_gpus is not None else (1.0 if gpus >= 1 and cfg.device != "cpu" else 0.0)
    if num_gpus > gpus:
        raise EmbedError(f"actor_num_gpus={num_gpus} but the cluster has {gpus:g} GPUs; lower it or set device=cpu")
    by_cpu = int(max(cpus - 3 * TASK_CPUS, cfg.actor_num_cpus) // cfg.actor_num_cpus)
    wanted = cfg.actors or (int(gpus // num_gpus) if num_gpus else by_cpu)
    if wanted * cfg.actor_num_cpus + TASK_CPUS > cpus:
        raise EmbedError(
            f"{wanted} actors x {cfg.actor_num_cpus} CPUs leave no CPU for read/write tasks on a {cpus:g}-CPU "
            "cluster (Ray Data would wait forever); lower actors or actor_num_cpus")
    return max(1, min(wanted, batches)), num_gpus


def _check_params(cfg: EmbedConfig, opts: storage.StorageOptions) -> None:
    uri = storage.join(cfg.output, PARAMS)
    wanted = {"family": cfg.family, "checkpoint": cfg.checkpoint}
    found = storage.read_json(uri, opts)
    if found is None:
        storage.write_json_atomic(uri, wanted, opts)
    elif found != wanted:
        raise EmbedError(
            f"{cfg.output} holds embeddings of {found['family']}:{found['checkpoint']}, this run asks for "
            f"{cfg.family}:{cfg.checkpoint}: one output holds one encoder's vectors. Use a new output URI "
            "(one per checkpoint), or delete the old output to start over")


def run_embed(cfg: EmbedConfig) -> dict:
    """Embed what is missing from `cfg.output`, consolidate failures, write the manifest; returns it."""
    started = time.time()
    opts = cfg.storage_options()
    if corpus.read_manifest(cfg.input, opts) is None:
        raise EmbedError(f"{cfg.input} has no {MANIFEST}: it is not a finished corpus (run `artray corpus import` first)")
    if not (cfg.images or cfg.texts):
        raise EmbedError("nothing to embed: images and texts are both off")
    _check_params(cfg, opts)
    storage.delete(storage.join(cfg.output, MANIFEST), opts)
    if not ray.is_initialized():
        ray.init()
    run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started)) + "-" + corpus.new_run_id()
    done = corpus.committed_ids(storage.join(cfg.output, EMBEDDINGS), "embedding_id", opts)
    failed = latest_failures(cfg.output, STAGE, opts)
    wanted = pa.array(cfg.splits, pa.string()) if cfg.splits else None

    parts, counts = [], {"images_in": 0, "texts_in": 0}
    skipped: Counter = Counter()
    if cfg.images:
        arts = corpus.read_artworks(cfg.input, opts, columns=["artwork_id", "split"])
        arts = arts.filter(pc.is_in(arts["split"], wanted)) if wanted is not None else arts
        ids = arts["artwork_id"].to_pylist()
        flags, skip = _todo([f"image:{a}" for a in ids], done, failed, cfg.retry_failed)
        todo = pa.array([a for a, f in zip(ids, flags) if f], pa.string())
        counts["images_in"], counts["images_todo"], skipped = len(ids), len(todo), skipped + skip
        if len(todo):  # one read task per corpus shard; image bytes never pass through the driver
            shards = storage.list_files(storage.join(cfg.input, ARTWORKS), ".parquet", opts)
            parts.append(ray.data.from_items([{"shard": u} for u in shards]).map_batches(
                _read_images, fn_kwargs={"todo": todo, "options": opts}, batch_size=1, batch_format="numpy",
                num_cpus=TASK_CPUS))
    if cfg.texts:
        texts = corpus.read_texts(cfg.input, opts)
        texts = texts.filter(pc.is_in(texts["split"], wanted)) if wanted is not None else texts
        flags, skip = _todo([f"text:{t}" for t in texts["text_id"].to_pylist()], done, failed, cfg.retry_failed)
        texts = texts.filter(pa.array(flags, pa.bool_()))
        counts["texts_in"], counts["texts_todo"], skipped = len(flags), texts.num_rows, skipped + skip
        if texts.num_rows:
            n = texts.num_rows
            parts.append(ray.data.from_arrow(pa.table({
                "embedding_id": pc.binary_join_element_wise("text:", texts["text_id"], ""), "id": texts["text_id"],
                "kind": pa.array(["text"] * n, pa.string()), "split": texts["split"], "image": pa.nulls(n, pa.binary()),
                "image_uri": pa.nulls(n, pa.string()), "text": texts["text"]}, schema=INPUT_SCHEMA)))

    stats, actors = {"written": 0, "failed": {}}, 0
    todo_rows = counts.get("images_todo", 0) + counts.get("texts_todo", 0)
    embed_started = time.time()
    if parts:
        actors, num_gpus = _pool(cfg, -(-todo_rows // cfg.batch_size))
        ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        sink = StageSink(cfg.output, EMBEDDINGS, EMBEDDING_SCHEMA, STAGE, run_id, opts, cfg.shard_rows)
        run_pipeline(lambda: ds.map_batches(
            _EmbedBatch, fn_constructor_kwargs={"cfg": cfg}, batch_size=cfg.batch_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cfg.actor_num_cpus, num_gpus=num_gpus,
        ).write_datasink(sink, ray_remote_args={"num_cpus": TASK_CPUS}), EmbedError, STAGE)
        stats = sink.stats
    embed_wall = time.time() - embed_started

    table = corpus.read_table(storage.join(cfg.output, EMBEDDINGS), EMBEDDING_SCHEMA, opts, columns=["embedding_id", "kind"])
    final = set(table["embedding_id"].to_pylist())
    failures = consolidate_failures(cfg.output, STAGE, final, run_id, opts)
    kinds = Counter(table["kind"].to_pylist())
    counts.update({
        "skipped_done": skipped["done"], "skipped_failed": skipped["failed"], "embedded": stats["written"],
        "failed_this_run": stats["failed"], "output_images": kinds["image"], "output_texts": kinds["text"],
        "duplicate_embeddings": table.num_rows - len(final),
        **failure_counts(failures),
    })
    manifest = build_manifest(
        STAGE, cfg.model_dump(mode="json"), counts, started, run_id=run_id, input=cfg.input, output=cfg.output,
        encoder=storage.read_json(storage.join(cfg.output, ENCODER), opts), actors=actors,
        embed_wall_s=round(embed_wall, 3), rows_per_s=round(stats["written"] / embed_wall, 2) if stats["written"] else 0.0,
    )
    corpus.write_manifest(cfg.output, manifest, opts)
    print(summary_line(manifest))
    return manifest


def read_embeddings(uri: str, options: storage.StorageOptions = storage.DEFAULT_OPTIONS,
                    columns: list[str] | None = None) -> pa.Table:
    """All committed embedding rows at `uri` (an embed job's output)."""
    return corpus.read_table(storage.join(uri, EMBEDDINGS), EMBEDDING_SCHEMA, options, columns)


def summary_line(manifest: dict) -> str:
    """One line for people: what was embedded, skipped and failed, and how fast."""
    c, enc = manifest["counts"], manifest.get("encoder") or {}
    return (
        f"[embed] {manifest['output']}: embedded {c['embedded']}, {failed_phrase(c['failed_this_run'])}"
        + f", skipped {c['skipped_done']} done + {c['skipped_failed']} failed; {c['output_images']} images + "
        f"{c['output_texts']} texts ({enc.get('family')}, dim {enc.get('dim')}), "
        f"{sum(c['failures_total'].values())} in _failures; {manifest['wall_s']:.1f}s ({manifest['rows_per_s']} rows/s)"
    )
