"""The family-agnostic encoders, and `artray embed` on a real local Ray from S3 to S3 (a local
moto server): one row per image and text, failures recorded, resume after lost shards without
duplicates, one encoder per output."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from artray import corpus, storage
from artray.corpora.importer import ImportConfig, import_corpus
from artray.scaffold.sample_corpora import make_samples
from artray.encoders import EncoderMismatchError, check_same_encoder
from artray.families import load_encoder
from artray.models.weights import load_state_dict, save_state_dict
from artray.schema import ARTWORK_SCHEMA, EMBEDDING_SCHEMA, TEXT_SCHEMA, artwork_row
from artray.outputs import read_embeddings
from artray.stages.embed import EmbedConfig, EmbedError, run_embed
from artray.storage import StorageOptions

N = 20  # artworks (and texts) in the sample folder corpus


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    from artray.scaffold.tiny import make_tiny

    return make_tiny(str(tmp_path_factory.getbasetemp() / "tiny"))  # idempotent: shared by the session's modules


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> dict[str, str]:
    return make_samples(str(tmp_path_factory.mktemp("samples")), n=N)


@pytest.fixture(scope="module")
def s3(s3_endpoint) -> tuple[str, StorageOptions]:
    """A bucket for this module on the local S3 server, and the options that reach it."""
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="artray-embed-test")
    return "s3://artray-embed-test", StorageOptions(endpoint_url=s3_endpoint)


@pytest.fixture(scope="module")
def folder_corpus(samples, s3) -> str:
    """The sample folder corpus on S3, plus three rows that must fail: a corrupt image, no image, an empty text."""
    uri, opts = f"{s3[0]}/corpora/folder", s3[1]
    import_corpus(ImportConfig(format="folder", src=samples["folder"], dest=uri, s3_endpoint=opts.endpoint_url))
    bad = corpus.ShardWriter(storage.join(uri, corpus.ARTWORKS), ARTWORK_SCHEMA, run_id="bad", options=opts)
    bad.add(artwork_row(artwork_id="corrupt", split="test", image=b"\xff\xd8 not a jpeg", captions=["x"],
                        text_ids=[], language="en", source="folder"))
    bad.add(artwork_row(artwork_id="imageless", split="test", captions=["x"], text_ids=[], language="en",
                        source="folder"))
    bad.flush()
    texts = corpus.ShardWriter(storage.join(uri, corpus.TEXTS), TEXT_SCHEMA, run_id="bad", options=opts)
    texts.add({"text_id": "blank", "split": "test", "text": "   ", "artwork_ids": ["corrupt"], "language": "en",
               "source": "folder"})
    texts.flush()
    return uri


def test_every_family_loads_through_one_interface(tiny, tmp_path):
    checkpoints = {"blip": tiny["blip-retrieval"], "longclip": tiny["longclip"], "cnclip": tiny["cnclip"],
                   "open_clip": tiny["clip-77"], "hf_clip": tiny["hf-clip"]}
    images = [Image.new("RGB", (50, 30), "red"), Image.linear_gradient("L").convert("RGB")]
    texts = ["a red circle on a blue ground", "敦煌壁画中的飞天", "word " * 400]  # the last one is truncated
    identities = {}
    for family, checkpoint in checkpoints.items():
        enc = load_encoder(family, checkpoint, device="cpu")
        assert (enc.family, enc.checkpoint) == (family, str(Path(checkpoint).resolve()))
        for vectors, n in ((enc.encode_images(images), 2), (enc.encode_texts(texts), 3)):
            assert vectors.shape == (n, enc.dim) and vectors.dtype == np.float32
            assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        assert np.allclose(enc.encode_texts(texts[:1]), enc.encode_texts(texts)[:1], atol=1e-5)  # batch-independent
        assert enc.encode_images([]).shape == (0, enc.dim)
        identities[family] = enc.identity()
        check_same_encoder(identities[family], enc.identity(), "itself")
    with pytest.raises(EncoderMismatchError, match="not comparable"):
        check_same_encoder(identities["longclip"], identities["open_clip"], "the gallery")
    with pytest.raises(ValueError, match="unknown encoder family 'siglip'"):
        load_encoder("siglip", "x")


@pytest.fixture(scope="module")
def embedded(ray_local, folder_corpus, tiny, s3):
    """S3 corpus → S3 embeddings with tiny Long-CLIP, in small shards."""
    cfg = EmbedConfig(input=folder_corpus, output=f"{s3[0]}/embeddings/longclip", family="longclip",
                      checkpoint=tiny["longclip"], batch_size=8, shard_rows=6, device="cpu",
                      s3_endpoint=s3[1].endpoint_url)
    return cfg, run_embed(cfg)


def test_embed_writes_one_row_per_image_and_text_and_records_failures(embedded, folder_corpus, s3):
    (cfg, manifest), opts = embedded, s3[1]
    c = manifest["counts"]
    assert (c["images_in"], c["texts_in"], c["output_images"], c["output_texts"]) == (N + 2, N + 1, N, N)
    assert c["failed_this_run"] == {"empty_text": 1, "no_image": 1, "undecodable_image": 1}
    assert c["duplicate_embeddings"] == 0 and manifest["encoder"]["dim"] == 32
    rows = read_embeddings(cfg.output, opts)
    assert rows.schema.equals(EMBEDDING_SCHEMA) and rows.num_rows == 2 * N
    assert set(rows["model"].to_pylist()) == {"longclip"} and set(rows["checkpoint"].to_pylist()) == {cfg.checkpoint}
    failures = {r["key"]: r for r in corpus.read_failures(cfg.output, opts).to_pylist()}
    assert set(failures) == {"image:corrupt", "image:imageless", "text:blank"}
    assert "ingest" in failures["image:imageless"]["detail"] and not failures["text:blank"]["retryable"]
    # The stored vectors are exactly what the encoder gives in-process.
    enc = load_encoder("longclip", cfg.checkpoint, device="cpu")
    art = corpus.read_artworks(folder_corpus, opts).to_pylist()[0]
    text = corpus.read_texts(folder_corpus, opts).to_pylist()[0]
    by_id = dict(zip(rows["embedding_id"].to_pylist(), rows["vector"].to_pylist()))
    image = Image.open(io.BytesIO(art["image"])).convert("RGB")
    assert np.allclose(by_id[f"image:{art['artwork_id']}"], enc.encode_images([image])[0], atol=1e-5)
    assert np.allclose(by_id[f"text:{text['text_id']}"], enc.encode_texts([text["text"]])[0], atol=1e-5)


def test_embed_resumes_after_lost_shards_without_duplicates(embedded, s3):
    (cfg, _), opts = embedded, s3[1]
    before = read_embeddings(cfg.output, opts).sort_by("embedding_id")
    shards = storage.list_files(storage.join(cfg.output, "embeddings"), ".parquet", opts)
    assert len(shards) >= 4
    lost = sum(storage.read_parquet(s, opts).num_rows for s in shards[:3])
    for shard in shards[:3]:  # as if the job had been killed before committing them
        storage.delete(shard, opts)
    storage.delete(storage.join(cfg.output, corpus.MANIFEST), opts)
    c = run_embed(cfg)["counts"]
    assert (c["embedded"], c["skipped_done"], c["skipped_failed"]) == (lost, 2 * N - lost, 3)
    after = read_embeddings(cfg.output, opts).sort_by("embedding_id")
    assert after["embedding_id"].to_pylist() == before["embedding_id"].to_pylist()  # all back, none twice
    assert np.allclose(np.array(after["vector"].to_pylist()), np.array(before["vector"].to_pylist()), atol=1e-5)
    assert len(corpus.read_failures(cfg.output, opts)) == 3  # consolidated: one row per failed key
    again = run_embed(cfg)["counts"]
    assert again["embedded"] == 0 and again["skipped_done"] == 2 * N and again["output_images"] == N


def test_one_output_holds_one_encoder(embedded, tiny, s3, tmp_path):
    (cfg, _), opts = embedded, s3[1]
    other = cfg.model_copy(update={"family": "cnclip", "checkpoint": tiny["cnclip"]})
    with pytest.raises(EmbedError, match="one output holds one encoder's vectors"):
        run_embed(other)

    # The same path, new weights: the actors' fingerprint check refuses to mix them in.
    original = tmp_path / "original.safetensors"
    shutil.copy(tiny["longclip"], original)
    try:
        sd = load_state_dict(original)
        sd["visual.proj"] = sd["visual.proj"] * -1
        save_state_dict(sd, tiny["longclip"])
        storage.delete(storage.list_files(storage.join(cfg.output, "embeddings"), ".parquet", opts)[0], opts)
        with pytest.raises(Exception, match="overwritten"):
            run_embed(cfg)
    finally:
        shutil.copy(original, tiny["longclip"])
