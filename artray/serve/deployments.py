"""The search app's back end: one model's encoder *and* index, in one replica.

With ``layout: colocated`` (the default) the ingress builds this class itself, one per model, and calls
it in-process; with ``layout: split`` it is a deployment per model (``model-<name>``).

A query costs one call from the ingress: the model embeds it and searches the FAISS
gallery in the same process, so no vector crosses a process boundary and no second actor
is on the path (bench/serve.py: each Serve hop costs a few ms on a small machine). Queries
arriving together are batched (``@serve.batch``): one forward pass, then one FAISS search
per (target, k) group of the batch, in one worker thread, so the replica's event loop keeps
queueing the next batch meanwhile. Re-ranking (LACLIP, ITM) runs in the same replica too: the
candidates' stored vectors and the gallery images never travel.

The class holds no placement: replicas, ``num_gpus``, autoscaling and the batch size come from
the Serve config file (``deployments:`` by name, ``ingress`` or ``model-<model>``; batch size and wait
through ``user_config``). Scaling a model means more replicas of its deployment, each with the encoder
and a copy of the index in host memory (a flat index holds 3 KB per vector at dim 768).

A replica refuses to start when the encoder's weights are not the ones the index was built with
(family, checkpoint and fingerprint, see ``artray.encoders``), so a gallery is never searched with
queries from another embedding space.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
from ray import serve
from ray.serve.metrics import Histogram

from artray.encoders import EncoderMismatchError, check_same_encoder
from artray.families import load_encoder
from artray.images import ImageError, to_rgb
from artray.index.retrieval import load_index
from artray.serve.binding import pin_replica_grpc_to_node
from artray.serve.rerank import CorpusImages, RerankConfig, rerank_scores
from artray.storage import StorageOptions

BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]
LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
DEFAULT_BATCH = {"max_batch_size": 16, "batch_wait_timeout_s": 0.005}


@serve.deployment(name="model")
class ModelDeployment:
    """One model's encoder and galleries: embeds queries (batched) and searches them in-process."""

    def __init__(self, model: str, family: str, checkpoint: str, device: str, dtype: str, index_uri: str,
                 expected: dict, max_image_pixels: int, s3_endpoint: str | None = None, corpus: str | None = None,
                 rerank: dict | None = None):
        pin_replica_grpc_to_node()
        self.model, self.max_image_pixels = model, max_image_pixels
        options = StorageOptions(endpoint_url=s3_endpoint)
        self.encoder = load_encoder(family, checkpoint, device, dtype, options)
        check_same_encoder(expected, self.encoder.identity(), f"the index of model {model!r}")
        self.index = load_index(index_uri, options)
        if self.index.encoder != expected:
            raise EncoderMismatchError(f"the index at {index_uri} was rebuilt with another encoder while model "
                                       f"{model!r} was starting; deploy again")
        self._busy, self._busy_lock = 0, threading.Lock()  # encoder calls under way in worker threads
        self.rerank_cfg = RerankConfig.model_validate(rerank or {})
        self.images = CorpusImages(corpus, options, max_image_pixels, self.rerank_cfg.image_cache) if corpus else None
        self.batch_size = Histogram("artray_encoder_batch_size", description="queries per encoder forward pass",
                                    boundaries=BATCH_BOUNDARIES, tag_keys=("model", "kind"))
        self.latency = Histogram("artray_encoder_batch_latency_ms", description="encoder forward pass latency",
                                 boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("model", "kind"))
        self.search_latency = Histogram("artray_index_search_latency_ms", description="FAISS search latency",
                                        boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("model", "target"))

    def reconfigure(self, config: dict) -> None:
        """``user_config: {max_batch_size: 16, batch_wait_timeout_s: 0.005}`` from the Serve config.
        A wait of 0 batches what queued while the previous batch ran, and never delays a lone query."""
        config = {**DEFAULT_BATCH, **(config or {})}
        for method in (self._texts, self._images):
            method.set_max_batch_size(int(config["max_batch_size"]))
            method.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))

    def info(self) -> dict:
        enc = self.encoder
        return {"family": enc.family, "checkpoint": enc.checkpoint, "dim": enc.dim, "device": enc.device,
                "dtype": str(enc.dtype).removeprefix("torch."), "index": self.index.info()}

    # --- the routes' calls: one per request ---------------------------------------------------------

    async def search_text(self, text: str, k: int, target: str) -> list[dict]:
        """The top-`k` hits of `target` for a text query."""
        return (await self._texts(text, k, target))[1]

    async def search_image(self, data: bytes, k: int, target: str) -> tuple[list[dict] | None, str | None]:
        """(hits, None) for an image query, or (None, why) when the image cannot be decoded."""
        vector_hits, problem = await self._images(data, k, target)
        return (None, problem) if problem else (vector_hits[1], None)

    def search_now(self, kind: str, value: str | bytes, k: int, target: str) -> tuple[list[dict] | None, str | None] | None:
        """A lone text or image query answered on the calling thread: no batch queue, no worker-thread hop
        (the ingress calls it when no other request is in the replica; bench/RESULTS.md measured the hop at
        ~1.3 ms on a loaded 2-core box). (hits, None), (None, why the image cannot be decoded), or None when
        the encoder is already at work in a worker thread: then the caller batches the query as usual."""
        with self._busy_lock:
            if self._busy:
                return None
            self._busy += 1
        try:
            if kind == "image":
                try:
                    value = to_rgb(value, self.max_image_pixels)
                except ImageError as exc:
                    return None, exc.detail
            return self._embed_and_search(kind, [value], [k], [target])[0][1], None
        finally:
            self._release()

    async def search_artwork(self, artwork_id: str, k: int, target: str) -> list[dict] | None:
        """Search with an artwork's stored image vector; None if it is not in the image gallery."""
        vector = self.index.vector("image", artwork_id)
        return None if vector is None else self._search(vector[None, :], k, target)[0]

    async def embed(self, texts: list[str], images: list[bytes]) -> tuple[list, list, list[str | None]]:
        """(text vectors, image vectors, why each image could not be decoded or None), as lists."""
        text_vectors = await asyncio.gather(*(self._texts(t, 0, "") for t in texts))
        image_results = await asyncio.gather(*(self._images(im, 0, "") for im in images))
        return ([v.tolist() for v, _ in text_vectors],
                [None if problem else vh[0].tolist() for vh, problem in image_results],
                [problem for _, problem in image_results])

    async def rerank_search(self, method: str, kind: str, value: str | bytes, k: int, target: str,
                            candidates: int) -> tuple[list[dict] | None, list[float] | None, str | None]:
        """(candidates' hits, their re-ranking scores, None), or (None, None, why) when the query image
        is unreadable or the artwork unknown ("unknown_artwork"). The best `k` are the caller's to pick."""
        if kind == "text":
            vector = (await self._texts(value, 0, ""))[0]
        elif kind == "image":
            vector_hits, problem = await self._images(value, 0, "")
            if problem:
                return None, None, problem
            vector = vector_hits[0]
        else:
            vector = self.index.vector("image", value)
            if vector is None:
                return None, None, "unknown_artwork"
        hits, scores = await self._in_thread(self._rerank, method, target, kind, value, vector, max(k, candidates))
        return hits, scores, None

    # --- batching and the work itself ---------------------------------------------------------------

    @serve.batch(**DEFAULT_BATCH)
    async def _texts(self, texts: list[str], ks: list[int], targets: list[str]) -> list[tuple]:
        """(vector, hits) per query; k == 0 asks for the vector only."""
        return await self._in_thread(self._embed_and_search, "text", texts, ks, targets)

    @serve.batch(**DEFAULT_BATCH)
    async def _images(self, images: list[bytes], ks: list[int], targets: list[str]) -> list[tuple]:
        """((vector, hits), None) per query, or (None, why) for an image that cannot be decoded."""
        decoded: list = []
        for data in images:  # one bad image must not fail the other requests of its batch
            try:
                decoded.append(to_rgb(data, self.max_image_pixels))
            except ImageError as exc:
                decoded.append(exc.detail)
        good = [i for i, im in enumerate(decoded) if not isinstance(im, str)]
        found = iter(await self._in_thread(self._embed_and_search, "image", [decoded[i] for i in good],
                                             [ks[i] for i in good], [targets[i] for i in good]) if good else [])
        return [(None, d) if isinstance(d, str) else (next(found), None) for d in decoded]

    async def _in_thread(self, fn, *args):
        """`fn(*args)` in a worker thread, counted as busy from now until the thread is done with it (so
        `search_now` never runs the encoder beside it: a tokenizer is not safe to share between threads)."""
        with self._busy_lock:
            self._busy += 1
        state = {"started": False, "dropped": False}

        def counted():
            with self._busy_lock:
                if state["dropped"]:
                    return None
                state["started"] = True
            try:
                return fn(*args)
            finally:
                self._release()

        try:
            return await asyncio.to_thread(counted)
        except asyncio.CancelledError:  # cancelled before a thread took it: it never runs, so count it done here
            with self._busy_lock:
                if not state["started"]:
                    state["dropped"], self._busy = True, self._busy - 1
            raise

    def _release(self) -> None:
        with self._busy_lock:
            self._busy -= 1

    def _embed_and_search(self, kind: str, items: list, ks: list[int], targets: list[str]) -> list[tuple]:
        """One forward pass over `items`, then one FAISS search per (target, k) group of them."""
        started = time.perf_counter()
        vectors = self.encoder.encode_texts(items) if kind == "text" else self.encoder.encode_images(items)
        tags = {"model": self.model, "kind": kind}
        self.batch_size.observe(len(items), tags=tags)
        self.latency.observe((time.perf_counter() - started) * 1000, tags=tags)
        hits: list = [None] * len(items)
        groups: dict[tuple[str, int], list[int]] = {}
        for i, (k, target) in enumerate(zip(ks, targets)):
            if k:
                groups.setdefault((target, k), []).append(i)
        for (target, k), rows in groups.items():
            for i, found in zip(rows, self._search(vectors[rows], k, target)):
                hits[i] = found
        return list(zip(vectors, hits))

    def _search(self, vectors: np.ndarray, k: int, target: str) -> list[list[dict]]:
        started = time.perf_counter()
        hits = self.index.search(vectors, k, target)
        self.search_latency.observe((time.perf_counter() - started) * 1000, tags={"model": self.model, "target": target})
        return hits

    def _rerank(self, method: str, target: str, query_kind: str, query_value: str | bytes, vector: np.ndarray,
                n: int) -> tuple[list[dict], list[float]]:
        """The top-`n` hits by cosine and their re-ranking scores (see ``artray.serve.rerank``)."""
        hits = self._search(vector[None, :], n, target)[0]
        if not hits:
            return [], []
        if self.images is None:
            raise RuntimeError(f"model {self.model!r} has no corpus to read gallery images from; rebuild its index")
        hit_vectors = np.stack([self.index.vector(target, h["id"]) for h in hits])
        kwargs = {"hit_vectors": hit_vectors}
        if target == "image":
            kwargs.update(query_text=query_value, gallery_images=self.images.get([h["artwork_id"] for h in hits]))
        elif query_kind == "image":
            kwargs["query_image"] = to_rgb(query_value, self.max_image_pixels)
        else:
            kwargs["query_image"] = self.images.get([query_value])[0]
        return hits, rerank_scores(self.encoder, method, self.rerank_cfg, target, vector, hits, **kwargs).tolist()
