"""The search API as users run it: `serve run` of serve_configs/retrieval-tiny.yaml on a real local
Ray, two families (Long-CLIP on Artpedia, Chinese-CLIP on CulTi), real HTTP on 127.0.0.1, auth and
CORS on.

Tiny random models rank arbitrarily, so correctness is checked where it is knowable: every
served ranking equals an exact search over the embed job's vectors with the same encoder
in-process, and a gallery image or artwork id finds itself first with score 1.
"""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
from ray import serve
from PIL import Image
import yaml

from artray import corpus
from artray.encoders import EncoderMismatchError
from artray.families import load_encoder
from artray.index.retrieval import read_index_manifest
from artray.runtime import free_port
from artray.scaffold.demo_indexes import demo_indexes
from artray.serve.app import build_app
from artray.serve.config import AuthConfig
from artray.outputs import read_embeddings
from artray.serve.local import ServeProcess, serve_config

TOKEN = "test-token-" + "x" * 24
IDENTITY_LACLIP = {"crops": 1, "scale": 1.0, "global_weight": 0.0}
ORIGIN = "https://collection.example.org"
LIMITS = {"max_body_bytes": 3_000_000, "max_image_bytes": 2_000_000, "max_image_pixels": 1_000_000,
          "max_text_chars": 300, "max_k": 20}


@pytest.fixture(scope="module")
def app(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    indexes = demo_indexes(str(root), n=20, tiny_dir=str(tmp_path_factory.getbasetemp() / "tiny"))
    (root / "token").write_text(TOKEN + "\n")
    config = serve_config(indexes, free_port(), auth={"token_file": str(root / "token")}, limits=LIMITS,
                          cors={"allow_origins": [ORIGIN]})
    by_name = {m["name"]: m for m in config["applications"][0]["args"]["models"]}
    by_name["cnclip"]["rerank"] = {"candidates": 6, "laclip": IDENTITY_LACLIP}  # LACLIP that is the plain cosine
    with ServeProcess(config, ray.get_runtime_context().gcs_address) as proc:
        yield proc, indexes, root


@pytest.fixture(scope="module")
def client(app):
    with httpx.Client(base_url=app[0].url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
        yield c


class Reference:
    """Exact search over the embed output with the same encoder, in this process."""

    def __init__(self, root, name: str, index_uri: str):
        manifest = read_index_manifest(index_uri)
        enc = manifest["encoder"]
        self.encoder = load_encoder(enc["family"], enc["checkpoint"], device="cpu")
        rows = read_embeddings(manifest["embeddings"])
        self.ids, self.vectors = {}, {}
        for kind in ("image", "text"):
            part = [r for r in rows.to_pylist() if r["kind"] == kind]
            self.ids[kind] = [r["id"] for r in part]
            self.vectors[kind] = np.array([r["vector"] for r in part], np.float32)
        self.artworks = corpus.read_artworks(str(root / "corpora" / name)).to_pylist()
        self.texts = corpus.read_texts(str(root / "corpora" / name)).to_pylist()

    def check(self, results: list[dict], query: np.ndarray, kind: str, k: int) -> None:
        scores = self.vectors[kind] @ query
        by_id = dict(zip(self.ids[kind], scores))
        assert len(results) == k and [h["rank"] for h in results] == list(range(1, k + 1))
        assert [h["score"] for h in results] == pytest.approx(sorted(scores, reverse=True)[:k], abs=1e-4)
        for hit in results:
            assert hit["kind"] == kind and by_id[hit["id"]] == pytest.approx(hit["score"], abs=1e-4)
            assert hit["split"] in ("train", "val", "test") and hit["source"] and hit["artwork_ids"]


@pytest.fixture(scope="module")
def refs(app):
    _, indexes, root = app
    return {name: Reference(root, name, uri) for name, uri in indexes.items()}


def test_healthz_is_open_everything_else_needs_the_token_and_cors_answers(app, client):
    url = app[0].url
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "models": ["longclip", "cnclip"]}
    denied = httpx.get(f"{url}/models")
    assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in denied.json()["detail"]
    assert httpx.post(f"{url}/search", json={"text": "x"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    outside = ray.nodes()[0]["NodeManagerAddress"]  # this machine's non-loopback address
    if outside not in ("127.0.0.1", "localhost"):
        with pytest.raises(OSError):  # bound to 127.0.0.1 only
            socket.create_connection((outside, app[0].port), timeout=2).close()
    preflight = httpx.options(f"{url}/search", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                                         "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == ORIGIN
    assert client.get("/models", headers={"Origin": ORIGIN}).headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-origin" not in client.get("/models", headers={"Origin": "https://evil.example"}).headers
    models = client.get("/models").json()
    assert models["default"] == "longclip"
    assert {m["name"]: m["family"] for m in models["models"]} == {"longclip": "longclip", "cnclip": "cnclip"}
    assert all(m["galleries"]["image"] == 20 and m["dim"] > 0 for m in models["models"])
    # no path on the server's disks in an answer: checkpoints and indexes by name, images by file name
    root = str(app[2])
    assert root not in str(models) and all("/" not in m["index"] for m in models["models"])
    hits = client.post("/search", json={"text": "a painting", "k": 5}).json()["results"]
    assert root not in str(hits)


@pytest.mark.parametrize("model", ["longclip", "cnclip"])
def test_text_to_image_and_image_to_text(client, refs, model):
    ref = refs[model]
    text = ref.texts[0]["text"]
    answer = client.post("/search", json={"text": text, "k": 5, "model": model}).json()
    assert (answer["model"], answer["query"], answer["target"], answer["k"]) == (model, "text", "image", 5)
    ref.check(answer["results"], ref.encoder.encode_texts([text])[0], "image", 5)
    top = client.post("/search", json={"text": text, "k": 3, "model": model, "target": "text"}).json()["results"][0]
    assert top["id"] == ref.texts[0]["text_id"] and top["score"] == pytest.approx(1.0, abs=1e-4)

    art = ref.artworks[3]
    image = Image.open(io.BytesIO(art["image"])).convert("RGB")
    b64 = base64.b64encode(art["image"]).decode()
    answer = client.post("/search", json={"image": b64, "k": 4, "model": model}).json()
    assert (answer["query"], answer["target"]) == ("image", "text")
    ref.check(answer["results"], ref.encoder.encode_images([image])[0], "text", 4)
    upload = client.post("/search", files={"image": ("art.png", art["image"], "image/png")},
                         data={"k": "2", "model": model, "target": "image"}).json()["results"]
    assert upload[0]["id"] == art["artwork_id"] and upload[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert upload[0]["artwork_ids"] == [art["artwork_id"]] and len(upload) == 2

    by_id = client.post("/search", json={"artwork_id": art["artwork_id"], "k": 3, "model": model, "target": "image"})
    first = by_id.json()["results"][0]
    assert first["id"] == art["artwork_id"] and first["score"] == pytest.approx(1.0, abs=1e-4)
    assert first["title"] == art["title"] and first["split"] == art["split"]
    texts = client.post("/search", json={"artwork_id": art["artwork_id"], "k": 6, "model": model}).json()
    stored = ref.vectors["image"][ref.ids["image"].index(art["artwork_id"])]
    ref.check(texts["results"], stored, "text", 6)


def test_embed_returns_the_encoders_vectors(client, refs):
    ref = refs["cnclip"]
    art = ref.artworks[0]
    answer = client.post("/embed", json={"model": "cnclip", "texts": ["红色的圆形", "蓝色方形"],
                                         "images": [base64.b64encode(art["image"]).decode()]}).json()
    assert answer["family"] == "cnclip" and answer["dim"] == ref.encoder.dim
    assert np.allclose(answer["texts"], ref.encoder.encode_texts(["红色的圆形", "蓝色方形"]), atol=1e-4)
    image = Image.open(io.BytesIO(art["image"])).convert("RGB")
    assert np.allclose(answer["images"], ref.encoder.encode_images([image]), atol=1e-4)


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), "white").save(buf, "PNG")
    return buf.getvalue()


def test_bad_requests_get_a_4xx_with_a_message_and_the_app_keeps_serving(client, refs):
    good = refs["longclip"].artworks[0]["image"]
    json_headers = {"Content-Type": "application/json"}
    cases = [
        (dict(content=b'{"text": "a red', headers=json_headers), 400, "malformed_json"),
        (dict(json={"image": "not base64 at all!"}), 400, "bad_base64"),
        (dict(json={"image": base64.b64encode(b"plain text, not pixels").decode()}), 415, "not_an_image"),
        (dict(files={"image": ("notes.txt", b"hello, I am text", "text/plain")}), 415, "not_an_image"),
        (dict(files={"image": ("cut.jpg", good[: len(good) // 2], "image/jpeg")}), 415, "not_an_image"),
        (dict(json={"image": base64.b64encode(_png(1100, 1000)).decode()}), 413, "image_too_large"),
        (dict(content=b"x" * 3_100_000, headers=json_headers), 413, "body_too_large"),
        (dict(json={"text": "   "}), 400, "empty_text"),
        (dict(json={"text": "y" * 301}), 400, "text_too_long"),
        (dict(json={"text": "a red circle", "model": "siglip"}), 400, "unknown_model"),
        (dict(json={"text": "a red circle", "k": 0}), 400, "bad_k"),
        (dict(json={"text": "a red circle", "k": 21}), 400, "bad_k"),
        (dict(json={"text": "a red circle", "k": "many"}), 400, "invalid_request"),
        (dict(json={"text": "a red circle", "rerank": "bm25"}), 400, "invalid_request"),
        (dict(json={"text": "a", "artwork_id": "1"}), 400, "one_query"),
        (dict(json={"k": 3}), 400, "one_query"),
        (dict(json=["text"]), 400, "malformed_json"),
        (dict(json={"artwork_id": "no-such-artwork"}), 404, "unknown_artwork"),
        (dict(content=b"text=hi", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
    ]
    for kwargs, status, code in cases:
        response = client.post("/search", **kwargs)
        assert (response.status_code, response.json()["error"]) == (status, code), (kwargs.keys(), response.text)
        assert len(response.json()["detail"]) > 10
    assert client.post("/embed", json={"texts": []}).json()["error"] == "bad_items"
    assert client.get("/search").status_code == 405
    answer = client.post("/search", json={"text": "a red circle", "k": 2})
    assert answer.status_code == 200 and len(answer.json()["results"]) == 2
    status = ray.serve.status().applications["retrieval"]
    assert status.status == "RUNNING" and all(d.status == "HEALTHY" for d in status.deployments.values())


def test_the_default_layout_is_one_ingress_holding_both_models_behind_a_proxy_that_answers_for_it(app):
    """Layout "colocated" (the default): a query is one hop, proxy → ingress, whose replica holds both
    models' encoders and indexes: `serve status` lists the ingress alone, one running replica. Serve's
    proxy runs artray's callback (the config's controller_options), which answers 503 + Retry-After for a
    request whose replica died under it (tests/chaos/test_serve_faults.py kills them)."""
    deployments = serve.status().applications["retrieval"].deployments
    assert set(deployments) == {"ingress"} and deployments["ingress"].replica_states.get("RUNNING") == 1, deployments
    (proxy,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == "serve" and a["name"].startswith("SERVE_PROXY_ACTOR")]
    installed = ray.get(ray.get_actor(proxy, namespace="serve").__ray_call__.remote(
        lambda self: [m.cls.__name__ for m in self._http_options.middlewares]), timeout=30)
    assert installed == ["AnswerUnansweredRequests"]


def test_direct_ingress_is_refused_where_serve_already_runs_without_it(app, tmp_path):
    """A running Serve controller keeps its mode (a config's controller_options count only when it starts), so
    `artray serve run --direct-ingress` onto a cluster whose Serve runs through the proxy stops with what to do,
    and leaves the running app alone."""
    from artray.errors import UserError
    from artray.serve import direct
    from artray.serve.local import serve_run

    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(serve_config(app[1], free_port()), sort_keys=False), encoding="utf-8")
    with pytest.raises(UserError, match=r"without direct ingress.*serve shutdown -y.*RAY_SERVE_ENABLE_DIRECT_INGRESS=1"):
        serve_run(str(path), ray.get_runtime_context().gcs_address, direct_ingress=True)
    assert direct.running_mode() is False and direct.urls("retrieval") == []
    assert serve.status().applications["retrieval"].status == "RUNNING"


def test_builder_refuses_an_index_of_another_checkpoint(app, monkeypatch):
    _, indexes, root = app
    cnclip = read_index_manifest(indexes["cnclip"])["encoder"]["checkpoint"]
    with pytest.raises(EncoderMismatchError, match="configured as longclip"):
        build_app({"models": [{"name": "longclip", "index": indexes["longclip"], "checkpoint": cnclip}]})
    with pytest.raises(ValueError, match="model names must be unique"):
        build_app({"models": [{"name": "a", "index": indexes["longclip"]}, {"name": "a", "index": indexes["cnclip"]}]})
    (root / "empty-token").write_text("\n")
    with pytest.raises(ValueError, match="holds no token"):
        AuthConfig(token_file=str(root / "empty-token")).token()
    monkeypatch.setenv("ARTRAY_TEST_TOKEN", TOKEN)
    assert AuthConfig(token_env="ARTRAY_TEST_TOKEN").token() == TOKEN and AuthConfig().token() is None
    monkeypatch.setenv("ARTRAY_TEST_TOKEN", "short")
    with pytest.raises(ValueError, match="ARTRAY_TEST_TOKEN"):
        AuthConfig(token_env="ARTRAY_TEST_TOKEN").token()


def test_serve_build_makes_a_deployable_config_of_the_app(app, tmp_path):
    """`serve build artray.serve.app:app` (Serve's tool takes an application, not a builder): the config it
    writes for the split layout lists the ingress and one deployment per model (its encoder and index together)."""
    import subprocess
    import sys

    import yaml

    proc, indexes, _ = app
    args = tmp_path / "args.yaml"
    args.write_text(yaml.safe_dump({"models": [{"name": n, "index": indexes[n], "device": "cpu"} for n in indexes],
                                    "layout": "split"}))
    out = tmp_path / "built.yaml"
    serve_cli = str(Path(sys.executable).parent / "serve")
    env = {**os.environ, "ARTRAY_SERVE_ARGS": str(args)}
    done = subprocess.run([serve_cli, "build", "artray.serve.app:app", "-o", str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    built = yaml.safe_load(out.read_text())
    (application,) = built["applications"]
    assert application["import_path"] == "artray.serve.app:app"
    names = {d["name"] for d in application["deployments"]}
    assert names == {"ingress", *(f"model-{n}" for n in indexes)}  # one deployment per model: encoder + index
    env.pop("ARTRAY_SERVE_ARGS")
    refused = subprocess.run([serve_cli, "build", "artray.serve.app:app"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode != 0 and "ARTRAY_SERVE_ARGS" in refused.stderr


def _metrics() -> list[tuple[str, dict, float]]:
    """(name, labels, value) of every sample on this node's Ray metrics endpoint."""
    port = ray.nodes()[0]["MetricsExportPort"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        lines = r.read().decode().splitlines()
    samples = []
    for line in lines:
        m = re.match(r"^(\w+)\{(.*)\} (\S+)$", line)
        if m:
            samples.append((m[1], dict(re.findall(r'(\w+)="([^"]*)"', m[2])), float(m[3])))
    return samples


def _total(samples, name: str, **labels) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == w for k, w in labels.items()))


def test_concurrent_queries_are_batched_and_metrics_are_exported(client):
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda i: client.post("/search", json={"text": f"query {i}", "k": 3}).status_code,
                              range(48)))
    assert codes == [200] * 48
    deadline = time.time() + 60

    def batched(samples) -> tuple[float, float]:
        """(forward passes, passes that embedded a single query) of the text encoders."""
        passes = _total(samples, "ray_artray_encoder_batch_size_count", kind="text")
        singles = sum(v for n, lab, v in samples if n == "ray_artray_encoder_batch_size_bucket"
                      and lab.get("kind") == "text" and float(lab["le"]) == 1.0)
        return passes, singles

    while time.time() < deadline:  # each process exports its metrics every few seconds
        samples = _metrics()
        passes, singles = batched(samples)
        if _total(samples, "ray_artray_http_requests_total", route="/search", status="200") >= 48 and passes > singles:
            break
        time.sleep(2)
    assert _total(samples, "ray_artray_http_requests_total", route="/search", status="400") >= 10
    assert _total(samples, "ray_artray_http_requests_total", status="401") >= 2
    assert _total(samples, "ray_artray_http_request_latency_ms_count", route="/search") > 0
    assert _total(samples, "ray_artray_index_search_latency_ms_count") > 0
    assert passes > singles  # some forward pass embedded several queries at once


def test_search_cli_prints_ranked_hits_and_names_a_refused_token(app, refs, monkeypatch, capsys):
    from artray.cli import main

    url = app[0].url
    monkeypatch.setenv("ARTRAY_API_TOKEN", TOKEN)
    assert main(["search", "--url", url, "--text", refs["longclip"].texts[0]["text"], "--set", "k=3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("[search] longclip:") and "3 results" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["1", "2", "3"]
    monkeypatch.setenv("ARTRAY_API_TOKEN", "wrong")
    assert main(["search", "--url", url, "--text", "a red circle"]) == 2
    assert "answered 401" in capsys.readouterr().err


def test_laclip_rerank_rescores_the_top_candidates_in_both_directions(client, refs):
    from artray.evaluate.laclip import LaclipOptions, laclip_rerank

    ref = refs["longclip"]
    text = ref.texts[1]["text"]
    plain = client.post("/search", json={"text": text, "k": 10}).json()["results"]
    answer = client.post("/search", json={"text": text, "k": 4, "rerank": "laclip"}).json()["results"]
    assert [h["rank"] for h in answer] == [1, 2, 3, 4] and all(h["reranked_by"] == "laclip" for h in answer)
    pool = {h["id"]: h["score"] for h in plain}  # rerank candidates: the model's top 10 by cosine
    assert all(pool[h["id"]] == pytest.approx(h["retrieval_score"], abs=1e-5) for h in answer)
    images = {a["artwork_id"]: Image.open(io.BytesIO(a["image"])).convert("RGB") for a in ref.artworks}
    ids = list(pool)
    expected = laclip_rerank(ref.encoder, [images[i] for i in ids], ref.encoder.encode_texts([text]),
                             LaclipOptions(crops=4, scale=0.5, layout="grid"),
                             image_emb=np.stack([ref.vectors["image"][ref.ids["image"].index(i)] for i in ids]),
                             keys=ids)[:, 0]
    best = sorted(zip(ids, expected), key=lambda p: -p[1])[:4]
    assert [h["id"] for h in answer] == [i for i, _ in best]
    assert [h["score"] for h in answer] == pytest.approx([s for _, s in best], abs=1e-4)

    art = ref.artworks[2]  # image → texts, query by an uploaded image
    up = client.post("/search", files={"image": ("q.png", art["image"], "image/png")},
                     data={"k": "3", "rerank": "laclip"}).json()["results"]
    assert len(up) == 3 and up[0]["kind"] == "text" and up[0]["score"] >= up[-1]["score"]


def test_identity_laclip_keeps_the_cosine_order_and_itm_needs_blip(client, refs):
    art = refs["cnclip"].artworks[0]
    for query in ({"text": refs["cnclip"].texts[0]["text"]}, {"artwork_id": art["artwork_id"]}):
        plain = client.post("/search", json={**query, "model": "cnclip", "k": 5}).json()["results"]
        reranked = client.post("/search", json={**query, "model": "cnclip", "k": 5, "rerank": "laclip"}).json()["results"]
        assert [h["id"] for h in reranked] == [h["id"] for h in plain]
        assert [h["score"] for h in reranked] == pytest.approx([h["score"] for h in plain], abs=1e-4)
    itm = client.post("/search", json={"text": "a red circle", "rerank": "itm"})
    assert itm.status_code == 400 and "BLIP" in itm.json()["detail"]
    same_modal = client.post("/search", json={"text": "a red circle", "target": "text", "rerank": "laclip"})
    assert same_modal.status_code == 400 and same_modal.json()["error"] == "bad_rerank"
    assert client.get("/healthz").status_code == 200


def test_itm_rerank_scores_are_the_blip_itm_heads_match_probability(tiny_models):
    import torch

    from artray.families import load_encoder
    from artray.serve.rerank import RerankConfig, apply_scores, rerank_scores

    enc = load_encoder("blip", tiny_models["blip-retrieval"], device="cpu")
    images = [Image.new("RGB", (48, 40), c) for c in ("red", "navy", "gold")]
    hits = [{"id": str(i), "artwork_id": str(i), "score": 0.5 - i / 10, "text": None} for i in range(3)]
    query = "a red square"
    scores = rerank_scores(enc, "itm", RerankConfig(), "image", enc.encode_texts([query])[0], hits,
                           query_text=query, gallery_images=images, hit_vectors=enc.encode_images(images))
    for image, score in zip(images, scores):
        pixels = enc.bundle.processor(images=[image], return_tensors="pt").pixel_values
        tok = enc.bundle.processor.tokenizer([query], return_tensors="pt")
        with torch.no_grad():
            out = enc.bundle.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask, pixel_values=pixels,
                                   use_itm_head=True)
        assert score == pytest.approx(out.itm_score.softmax(-1)[0, 1].item(), abs=1e-5)
    ranked = apply_scores(hits, scores, "itm", 2)
    assert [h["rank"] for h in ranked] == [1, 2] and ranked[0]["score"] == pytest.approx(max(scores), abs=1e-6)
    assert {h["retrieval_score"] for h in ranked} <= {h["score"] for h in hits}


# Runs last in this module: it ends the module's app.
def test_stopping_the_app_frees_the_cluster_even_if_serve_run_died_without_shutting_serve_down(app):
    """Regression (CI hang): Ray 2.60's `serve run` can exit on Ctrl-C without shutting Serve down
    (its controller health check timed out under load), leaving every replica holding its CPUs, and
    the next Ray Data job waited forever for one. Killing `serve run` outright leaves the same state."""
    proc = app[0]
    proc.proc.kill()
    proc.proc.wait(30)
    assert serve.status().applications, "Serve should still be up after its `serve run` was killed"
    proc.stop()
    with pytest.raises(ValueError):
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    deadline = time.time() + 60
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == ray.cluster_resources()["CPU"], "replicas still hold CPUs"


def test_a_lone_query_skips_the_batch_queue_but_never_runs_beside_a_batch(app, refs):
    """`search_now` (the ingress's path for a query alone in the replica) gives the batched path's hits, says why an
    image is unreadable, and declines while the encoder is at work in a worker thread (tokenizers are not
    thread-safe)."""
    import asyncio
    import threading

    from artray.serve.deployments import ModelDeployment

    uri = app[1]["longclip"]
    recorded = read_index_manifest(uri)["encoder"]
    model = ModelDeployment.func_or_class("longclip", recorded["family"], recorded["checkpoint"], "cpu", "float32",
                                          uri, recorded, 1_000_000)
    text = refs["longclip"].texts[0]["text"]
    hits, problem = model.search_now("text", text, 3, "image")
    expected = model.index.search(model.encoder.encode_texts([text]), 3, "image")[0]
    assert problem is None and [h["id"] for h in hits] == [h["id"] for h in expected]
    assert model.search_now("image", b"not an image", 3, "text")[0] is None
    release = threading.Event()

    async def busy_then_free():
        work = asyncio.ensure_future(model._in_thread(release.wait))
        await asyncio.sleep(0.1)
        refused = model.search_now("text", text, 3, "image")
        release.set()
        await work
        return refused, model.search_now("text", text, 3, "image")

    refused, after = asyncio.run(busy_then_free())
    assert refused is None and after == (hits, None)
