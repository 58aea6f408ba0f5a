"""The search API in the split layout (``layout: split``): the ingress and a ``model-<name>`` deployment per
model, so models scale apart from HTTP. `serve run` of the tiny config on a real local Ray, auth on; the
answers equal the colocated layout's (tests/test_serve.py): an exact search with the same encoder in-process."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import ray
from ray import serve

from artray import corpus
from artray.families import load_encoder
from artray.index.retrieval import read_index_manifest
from artray.outputs import read_embeddings
from artray.runtime import free_port
from artray.scaffold.demo_indexes import demo_indexes
from artray.serve.local import ServeProcess, serve_config

TOKEN = "split-token-" + "y" * 24


@pytest.fixture(scope="module")
def split_app(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-split")
    indexes = demo_indexes(str(root), n=12, tiny_dir=str(tmp_path_factory.getbasetemp() / "tiny"),
                           names=("longclip",))
    (root / "token").write_text(TOKEN)
    config = serve_config(indexes, free_port(), layout="split", auth={"token_file": str(root / "token")})
    with ServeProcess(config, ray.get_runtime_context().gcs_address) as proc, \
            httpx.Client(base_url=proc.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
        yield client, indexes["longclip"], root


def test_split_layout_runs_a_model_deployment_and_answers_as_the_encoder_and_index_do(split_app):
    client, index_uri, root = split_app
    deployments = serve.status().applications["retrieval"].deployments
    assert set(deployments) == {"ingress", "model-longclip"}
    assert all(d.replica_states.get("RUNNING") == 1 for d in deployments.values()), deployments
    assert httpx.post(f"{client.base_url}/search", json={"text": "x"}).status_code == 401  # auth holds

    manifest = read_index_manifest(index_uri)
    encoder = load_encoder(manifest["encoder"]["family"], manifest["encoder"]["checkpoint"], device="cpu")
    rows = [r for r in read_embeddings(manifest["embeddings"]).to_pylist() if r["kind"] == "image"]
    text = corpus.read_texts(str(root / "corpora" / "longclip"))["text"].to_pylist()[0]
    scores = np.array([r["vector"] for r in rows], np.float32) @ encoder.encode_texts([text])[0]
    expected = [rows[i]["id"] for i in np.argsort(-scores)[:5]]
    hits = client.post("/search", json={"text": text, "k": 5}).json()["results"]
    assert [h["id"] for h in hits] == expected
    assert [h["score"] for h in hits] == pytest.approx(sorted(scores, reverse=True)[:5], abs=1e-4)

    reranked = client.post("/search", json={"text": text, "k": 3, "rerank": "laclip"}).json()["results"]
    assert [h["rank"] for h in reranked] == [1, 2, 3] and all(h["reranked_by"] == "laclip" for h in reranked)
    assert {h["id"] for h in reranked} <= set(expected + [rows[i]["id"] for i in np.argsort(-scores)[5:10]])
