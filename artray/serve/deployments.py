"""The search app's back-end deployments: one encoder and one index per configured model.

The classes hold no placement: replicas, ``num_gpus``, autoscaling and the encoder's
batch size come from the Serve config file (``deployments:`` by name, ``encoder-<model>``
/ ``index-<model>``; batch size and wait through ``user_config``).

An encoder replica refuses to start when its weights are not the ones the index was
built with (family, checkpoint and fingerprint, see ``artray.encoders``), so a gallery
is never searched with queries from another embedding space.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from ray import serve
from ray.serve.metrics import Histogram

from artray.encoders import EncoderMismatchError, check_same_encoder, load_encoder
from artray.images import ImageError, to_rgb
from artray.index.retrieval import load_index
from artray.serve.binding import pin_replica_grpc_to_node
from artray.serve.rerank import CorpusImages, RerankConfig, rerank_scores
from artray.storage import StorageOptions

BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]
LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


@serve.deployment(name="encoder")
class EncoderDeployment:
    """One model's encoder; single queries are batched (``@serve.batch``) into one forward pass."""

    def __init__(self, model: str, family: str, checkpoint: str, device: str, dtype: str, expected: dict,
                 max_image_pixels: int, s3_endpoint: str | None = None, corpus: str | None = None,
                 rerank: dict | None = None):
        pin_replica_grpc_to_node()
        self.model, self.max_image_pixels = model, max_image_pixels
        options = StorageOptions(endpoint_url=s3_endpoint)
        self.encoder = load_encoder(family, checkpoint, device, dtype, options)
        check_same_encoder(expected, self.encoder.identity(), f"the index of model {model!r}")
        self.rerank_cfg = RerankConfig.model_validate(rerank or {})
        self.images = CorpusImages(corpus, options, max_image_pixels, self.rerank_cfg.image_cache) if corpus else None
        self.batch_size = Histogram("artray_encoder_batch_size", description="queries per encoder forward pass",
                                    boundaries=BATCH_BOUNDARIES, tag_keys=("model", "kind"))
        self.latency = Histogram("artray_encoder_batch_latency_ms", description="encoder forward pass latency",
                                 boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("model", "kind"))

    def reconfigure(self, config: dict) -> None:
        """``user_config: {max_batch_size: 16, batch_wait_timeout_s: 0.005}`` from the Serve config."""
        for method in (self._texts, self._images):
            method.set_max_batch_size(int(config.get("max_batch_size", 16)))
            method.set_batch_wait_timeout_s(float(config.get("batch_wait_timeout_s", 0.005)))

    def info(self) -> dict:
        enc = self.encoder
        return {"family": enc.family, "checkpoint": enc.checkpoint, "dim": enc.dim, "device": enc.device,
                "dtype": str(enc.dtype).removeprefix("torch.")}

    async def embed_text(self, text: str) -> np.ndarray:
        return await self._texts(text)

    async def embed_image(self, data: bytes) -> tuple[np.ndarray | None, str | None]:
        """(vector, None), or (None, why) when the image cannot be decoded."""
        return await self._images(data)

    async def rerank(self, method: str, target: str, query_kind: str, query_value: str | bytes,
                     query_vector: np.ndarray, hits: list[dict], hit_vectors: np.ndarray) -> list[float]:
        """Re-ranking scores of `hits` for one query (see ``artray.serve.rerank``)."""
        return await asyncio.to_thread(self._rerank, method, target, query_kind, query_value, query_vector,
                                       hits, hit_vectors)

    def _rerank(self, method, target, query_kind, query_value, query_vector, hits, hit_vectors) -> list[float]:
        if not hits:
            return []
        if self.images is None:
            raise RuntimeError(f"model {self.model!r} has no corpus to read gallery images from; rebuild its index")
        kwargs = {"hit_vectors": hit_vectors}
        if target == "image":
            kwargs.update(query_text=query_value, gallery_images=self.images.get([h["artwork_id"] for h in hits]))
        elif query_kind == "image":
            kwargs["query_image"] = to_rgb(query_value, self.max_image_pixels)
        else:
            kwargs["query_image"] = self.images.get([query_value])[0]
        return rerank_scores(self.encoder, method, self.rerank_cfg, target, query_vector, hits, **kwargs).tolist()

    def _observe(self, kind: str, n: int, started: float) -> None:
        tags = {"model": self.model, "kind": kind}
        self.batch_size.observe(n, tags=tags)
        self.latency.observe((time.perf_counter() - started) * 1000, tags=tags)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _texts(self, texts: list[str]) -> list[np.ndarray]:
        started = time.perf_counter()
        vectors = await asyncio.to_thread(self.encoder.encode_texts, texts)  # the loop keeps queueing the next batch
        self._observe("text", len(texts), started)
        return list(vectors)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _images(self, images: list[bytes]) -> list[tuple[np.ndarray | None, str | None]]:
        started = time.perf_counter()
        decoded: list = []
        for data in images:  # one bad image must not fail the other requests of its batch
            try:
                decoded.append(to_rgb(data, self.max_image_pixels))
            except ImageError as exc:
                decoded.append(exc.detail)
        good = [im for im in decoded if not isinstance(im, str)]
        vectors = iter(await asyncio.to_thread(self.encoder.encode_images, good))
        self._observe("image", len(good), started)
        return [(None, d) if isinstance(d, str) else (next(vectors), None) for d in decoded]


@serve.deployment(name="index")
class IndexDeployment:
    """One model's galleries (images and texts) in FAISS, with their metadata."""

    def __init__(self, model: str, uri: str, expected: dict, s3_endpoint: str | None = None):
        pin_replica_grpc_to_node()
        self.model = model
        self.index = load_index(uri, StorageOptions(endpoint_url=s3_endpoint))
        if self.index.encoder != expected:
            raise EncoderMismatchError(f"the index at {uri} was rebuilt with another encoder while model {model!r} "
                                       "was starting; deploy again")
        self.latency = Histogram("artray_index_search_latency_ms", description="FAISS search latency",
                                 boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("model", "target"))

    def info(self) -> dict:
        return self.index.info()

    def artwork_vector(self, artwork_id: str) -> np.ndarray | None:
        """The stored image vector of an artwork, None if it is not in the image gallery."""
        return self.index.vector("image", artwork_id)

    def candidates(self, vector: np.ndarray, n: int, target: str) -> tuple[list[dict], np.ndarray]:
        """The top-`n` hits and their stored vectors (n, dim): what a re-ranker re-scores."""
        hits = self.search(vector, n, target)
        vectors = [self.index.vector(target, h["id"]) for h in hits]
        return hits, np.stack(vectors) if vectors else np.zeros((0, self.index.dim), np.float32)

    def search_artwork(self, artwork_id: str, k: int, target: str) -> list[dict] | None:
        """Search with an artwork's stored image vector; None if it is not in the image gallery."""
        vector = self.artwork_vector(artwork_id)
        return None if vector is None else self.search(vector, k, target)

    def search(self, vector: np.ndarray, k: int, target: str) -> list[dict]:
        started = time.perf_counter()
        hits = self.index.search(vector[None, :], k, target)[0]
        self.latency.observe((time.perf_counter() - started) * 1000, tags={"model": self.model, "target": target})
        return hits
