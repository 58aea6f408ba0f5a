"""`artray embed`: a corpus's images (and texts) → embedding rows, with one encoder, on Ray Data.

One task per artwork shard reads it (only the columns needed) and keeps the rows that
still need work; the texts still to embed join them
(``union``); one actor pool (`EmbedBatch`: the encoder loaded once per actor, one GPU
per actor when the cluster has GPUs) turns each batch into result rows, and
``StageSink`` commits them to ``<out>/embeddings/`` and ``<out>/_failures/``.

The run protocol (guard, resume from the committed ``embedding_id``s — ``image:<artwork_id>`` /
``text:<text_id>`` —, permanent failures skipped unless ``retry_failed``, manifest last) is
`artray.stages.run`'s. ``_embed_params.json`` pins family and checkpoint, and ``_encoder.json``
the encoder's fingerprint, written by the first actor and checked by every later one: an output
never mixes vectors of two encoders, even when a checkpoint is overwritten in place. Read the
output with `artray.outputs.read_embeddings`.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import ray
from pydantic import Field, field_validator

from artray import corpus, storage
from artray.corpus import ARTWORKS
from artray.encoders import Device, DType, canonical_checkpoint, check_same_encoder
from artray.families import RetrievalFamily, load_encoder
from artray.images import DEFAULT_MAX_PIXELS, ImageError, to_rgb
from artray.outputs import EMBEDDINGS
from artray.schema import EMBEDDING_SCHEMA
from artray.stages.config import ModelStageConfig
from artray.stages.run import TASK_CPUS, ActorPool, Run, Stage, StageError, Todo, actor_pool, rate, run_stage
from artray.stages.sink import failed_phrase, failed_result, ok_result, result_schema

STAGE = "embed"
ENCODER = "_encoder.json"  # identity (with fingerprint) of the encoder that made them
TASK_OPS = 3  # read, select and write: task operators beside the encoder actors
INPUT_SCHEMA = pa.schema([("embedding_id", pa.string()), ("id", pa.string()), ("kind", pa.string()),
                          ("split", pa.string()), ("image", pa.binary()), ("image_uri", pa.string()),
                          ("text", pa.string())])
RESULT_SCHEMA = result_schema(pa.schema([f.with_nullable(True) for f in EMBEDDING_SCHEMA]))


class EmbedError(StageError):
    """The embed job cannot start or finish; the message says what to fix."""


class EmbedConfig(ModelStageConfig):
    """Turns a corpus's images and texts into embedding rows with one encoder, for retrieval and the index."""

    input: str = Field(description="corpus URI to embed (written by `artray corpus import` / `ingest`)")
    output: str = Field(description="embeddings URI to write; running again resumes it")
    family: RetrievalFamily = Field(description="encoder family: blip, longclip, cnclip, open_clip or hf_clip")
    checkpoint: str = Field(description="hub id, local path or s3:// URI of the weights")
    images: bool = Field(True, description="embed artwork images")
    texts: bool = Field(True, description="embed the corpus texts (needed for image→text search)")
    splits: list[str] | None = Field(None, description="only these splits (default: all)")
    device: Device = Field("auto", description="auto: CUDA when the actor has a GPU, else CPU")
    dtype: DType = Field("auto", description="auto: float16 on CUDA, float32 on CPU")
    batch_size: int = Field(64, ge=1, description="rows per actor call (and per forward pass)")
    shard_rows: int = Field(2000, ge=1, description="rows per committed Parquet shard at most")
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="refuse images with more pixels")

    @field_validator("checkpoint")
    @classmethod
    def _canonical(cls, value: str) -> str:
        return canonical_checkpoint(value)


class EmbedBatch:
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


def _todo(run: Run, keys: list[str]) -> tuple[list[bool], Counter]:
    """Per key whether to embed it, and how many were skipped as done / failed for good."""
    flags, skipped = [], Counter()
    for key in keys:
        why = run.skip(key)
        flags.append(why is None)
        if why:
            skipped[why] += 1
    return flags, skipped


def embed_pool(cfg: EmbedConfig, rows: int) -> ActorPool:
    """The encoder actor pool for `rows` rows (also what evaluate's encoder jobs use)."""
    return actor_pool(cfg, -(-rows // cfg.batch_size), device=cfg.device, task_ops=TASK_OPS, error=EmbedError)


class EmbedStage(Stage):
    name, table, schema, key, error = STAGE, EMBEDDINGS, EMBEDDING_SCHEMA, "embedding_id", EmbedError
    task_ops, udf, final_columns = TASK_OPS, EmbedBatch, ("kind",)
    pin_hint = "one output holds one encoder's vectors (use one output URI per checkpoint)"

    def check(self, cfg: EmbedConfig, opts) -> None:
        if not (cfg.images or cfg.texts):
            raise EmbedError("nothing to embed: images and texts are both off")

    def params(self, cfg: EmbedConfig) -> dict:
        return {"family": cfg.family, "checkpoint": cfg.checkpoint}

    def device(self, cfg: EmbedConfig) -> str:
        return cfg.device

    def pool(self, run: Run, todo: Todo) -> ActorPool:
        return embed_pool(run.cfg, todo.rows)

    def todo(self, run: Run) -> Todo:
        cfg, opts = run.cfg, run.opts
        wanted = pa.array(cfg.splits, pa.string()) if cfg.splits else None
        parts, counts, skipped = [], {"images_in": 0, "texts_in": 0}, Counter()
        if cfg.images:
            arts = corpus.read_artworks(cfg.input, opts, columns=["artwork_id", "split"])
            arts = arts.filter(pc.is_in(arts["split"], wanted)) if wanted is not None else arts
            ids = arts["artwork_id"].to_pylist()
            flags, skip = _todo(run, [f"image:{a}" for a in ids])
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
            flags, skip = _todo(run, [f"text:{t}" for t in texts["text_id"].to_pylist()])
            texts = texts.filter(pa.array(flags, pa.bool_()))
            counts["texts_in"], counts["texts_todo"], skipped = len(flags), texts.num_rows, skipped + skip
            if texts.num_rows:
                n = texts.num_rows
                parts.append(ray.data.from_arrow(pa.table({
                    "embedding_id": pc.binary_join_element_wise("text:", texts["text_id"], ""), "id": texts["text_id"],
                    "kind": pa.array(["text"] * n, pa.string()), "split": texts["split"],
                    "image": pa.nulls(n, pa.binary()), "image_uri": pa.nulls(n, pa.string()), "text": texts["text"]},
                    schema=INPUT_SCHEMA)))
        counts.update(skipped_done=skipped["done"], skipped_failed=skipped["failed"])
        data = (parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]) if parts else None
        return Todo(data, counts.get("images_todo", 0) + counts.get("texts_todo", 0), counts=counts)

    def finish(self, run: Run, todo: Todo, stats: dict, table: pa.Table, failures: list[dict]) -> dict:
        kinds = Counter(table["kind"].to_pylist())
        return {"embedded": stats["written"], "output_images": kinds["image"], "output_texts": kinds["text"],
                "duplicate_embeddings": table.num_rows - len(set(table["embedding_id"].to_pylist()))}

    def manifest_fields(self, run: Run, todo: Todo, stats: dict, wall_s: float) -> dict:
        return {"encoder": storage.read_json(storage.join(run.cfg.output, ENCODER), run.opts),
                "embed_wall_s": round(wall_s, 3), "rows_per_s": rate(stats["written"], wall_s)}

    def summary_line(self, manifest: dict) -> str:
        return summary_line(manifest)


def run_embed(cfg: EmbedConfig) -> dict:
    """Embed what is missing from `cfg.output`, consolidate failures, write the manifest; returns it."""
    return run_stage(EmbedStage(), cfg)


def summary_line(manifest: dict) -> str:
    """One line for people: what was embedded, skipped and failed, and how fast."""
    c, enc = manifest["counts"], manifest.get("encoder") or {}
    return (
        f"[embed] {manifest['output']}: embedded {c['embedded']}, {failed_phrase(c['failed_this_run'])}"
        + f", skipped {c['skipped_done']} done + {c['skipped_failed']} failed; {c['output_images']} images + "
        f"{c['output_texts']} texts ({enc.get('family')}, dim {enc.get('dim')}), "
        f"{sum(c['failures_total'].values())} in _failures; {manifest['wall_s']:.1f}s ({manifest['rows_per_s']} rows/s)"
    )
