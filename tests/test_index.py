"""`artray index build` on real embed output: exact and approximate FAISS galleries, the metadata
join, the encoder version check (another checkpoint, or the same path with new weights), S3."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from artray import corpus, storage
from artray.corpora.importer import ImportConfig, import_corpus
from artray.scaffold.sample_corpora import make_samples
from artray.encoders import EncoderMismatchError
from artray.families import load_encoder
from artray.index.build import IndexConfig, build_index
from artray.index.faiss_types import IndexBuildError
from artray.index.retrieval import IndexNotFoundError, load_index
from artray.models.weights import load_state_dict, save_state_dict
from artray.outputs import read_embeddings
from artray.stages.embed import EmbedConfig, run_embed
from artray.storage import StorageOptions

N = 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    from artray.scaffold.tiny import make_tiny

    return make_tiny(str(tmp_path_factory.getbasetemp() / "tiny"))  # idempotent: shared by the session's modules


@pytest.fixture(scope="module")
def embedded(ray_local, tiny, tmp_path_factory) -> tuple[str, str]:
    """(corpus URI, embeddings URI): the Artpedia sample embedded with tiny Long-CLIP."""
    root = tmp_path_factory.mktemp("index")
    samples = make_samples(str(root / "samples"), n=N)
    corpus_uri = str(root / "artpedia")
    import_corpus(ImportConfig(format="artpedia", src=samples["artpedia"], dest=corpus_uri))
    emb = str(root / "emb")
    run_embed(EmbedConfig(input=corpus_uri, output=emb, family="longclip", checkpoint=tiny["longclip"], device="cpu"))
    return corpus_uri, emb


@pytest.fixture(scope="module")
def flat(embedded, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("flat") / "idx")
    build_index(IndexConfig(embeddings=embedded[1], output=out))
    return out


def test_flat_index_finds_every_artwork_and_carries_its_metadata(embedded, flat):
    index = load_index(flat)
    arts = {a["artwork_id"]: a for a in corpus.read_artworks(embedded[0]).to_pylist()}
    assert index.size("image") == N and index.size("text") == N and index.dim == 32
    for aid, art in arts.items():
        top = index.search(index.vector("image", aid), 3, "image")[0]
        assert top[0]["id"] == aid and top[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert [h["rank"] for h in top] == [1, 2, 3] and top[0]["score"] >= top[1]["score"] >= top[2]["score"]
        assert (top[0]["title"], top[0]["split"], top[0]["source"]) == (art["title"], art["split"], "artpedia")
        assert top[0]["text"] == art["captions"][0]
    hit = index.search(index.vector("image", aid), 50, "text")[0]
    assert len(hit) == N and all(h["artwork_ids"] and h["text"] for h in hit)  # k is capped at the gallery
    assert index.vector("image", "no-such-artwork") is None
    info = index.info()
    assert info["galleries"] == {"image": N, "text": N} and info["faiss"]["image"] == {"type": "flat"}
    assert info["family"] == "longclip" and info["embeddings"] == embedded[1]


def test_ivf_and_hnsw_agree_with_exact_search(embedded, flat, tmp_path):
    exact = load_index(flat)
    queries = np.stack([exact.vector("image", i) for i in list(exact.galleries["image"].rows)[:8]])
    for params in ({"type": "ivf", "ivf_nlist": 2, "ivf_nprobe": 2}, {"type": "hnsw", "hnsw_m": 8, "hnsw_ef_search": 64}):
        out = str(tmp_path / params["type"])
        manifest = build_index(IndexConfig(embeddings=embedded[1], output=out, index=params))
        assert manifest["faiss"]["image"]["type"] == params["type"]
        approx = load_index(out)
        for kind in ("image", "text"):
            want = [[h["id"] for h in hits] for hits in exact.search(queries, 5, kind)]
            assert [[h["id"] for h in hits] for hits in approx.search(queries, 5, kind)] == want
    with pytest.raises(IndexBuildError, match="lower ivf_nlist or use type flat"):
        build_index(IndexConfig(embeddings=embedded[1], output=str(tmp_path / "bad"), index={"type": "ivf", "ivf_nlist": 64}))
    test_only = build_index(IndexConfig(embeddings=embedded[1], output=str(tmp_path / "test"), splits=["test"]))
    n_test = sum(1 for s in read_embeddings(embedded[1])["split"].to_pylist() if s == "test")
    assert sum(c["vectors"] for c in test_only["counts"].values()) == n_test


def test_index_refuses_an_encoder_it_was_not_built_with(flat, tiny, tmp_path):
    right = load_encoder("longclip", tiny["longclip"], device="cpu")
    load_index(flat, encoder=right.identity())
    other = load_encoder("open_clip", tiny["clip-77"], device="cpu")
    with pytest.raises(EncoderMismatchError, match="not comparable"):
        load_index(flat, encoder=other.identity())
    # Same path, retrained weights: the fingerprint catches it.
    original = tmp_path / "original.safetensors"
    shutil.copy(tiny["longclip"], original)
    try:
        sd = load_state_dict(original)
        sd["text_projection"] = sd["text_projection"] + 0.5 * torch.randn_like(sd["text_projection"])
        save_state_dict(sd, tiny["longclip"])
        with pytest.raises(EncoderMismatchError, match="overwritten"):
            load_index(flat, encoder=load_encoder("longclip", tiny["longclip"], device="cpu").identity())
    finally:
        shutil.copy(original, tiny["longclip"])


def test_index_build_needs_a_finished_embed_output(embedded, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(embedded[1], unfinished)
    storage.delete(storage.join(str(unfinished), corpus.MANIFEST))
    with pytest.raises(IndexBuildError, match="run `artray embed` to the end"):
        build_index(IndexConfig(embeddings=str(unfinished), output=str(tmp_path / "idx")))
    with pytest.raises(IndexNotFoundError, match="artray index build"):
        load_index(str(tmp_path / "idx"))


def test_index_on_s3(embedded, s3_bucket, s3_endpoint):
    out = f"{s3_bucket}/indexes/longclip"
    build_index(IndexConfig(embeddings=embedded[1], output=out, s3_endpoint=s3_endpoint, index={"type": "hnsw"}))
    index = load_index(out, StorageOptions(endpoint_url=s3_endpoint))
    aid = next(iter(index.galleries["image"].rows))
    assert index.search(index.vector("image", aid), 1, "image")[0][0]["id"] == aid
