"""Security checks: weights, decompression bombs, listening sockets and credentials in outputs.

* Weights from user paths load as safetensors; a pickle checkpoint (a Long-CLIP ``.pt``, an HF
  folder with only ``pytorch_model.bin``) is refused, naming the file and the opt-in, and
  loads with ``ARTRAY_ALLOW_PICKLE=1``; a pickle that runs code is never executed.
* Pillow's decompression-bomb limit holds on every image path: a PNG whose header claims a
  huge size is refused by the search API's decoding (413), import and embed (failure rows),
  the augment planner (failure row) and the train loader (an error before any worker starts).
* One session as users run it — ``init_ray`` starts a local cluster, import → embed → index →
  report on the local S3 server, the search API through ``ServeProcess`` — with fake
  credentials planted in its environment: every listening socket of that process tree is on
  loopback, and no credential appears in its logs, its Ray session folder or any object written.

Token auth of the Ray job API (``artray submit``) is in tests/test_submit.py, the search API's
bearer auth in tests/test_serve.py.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import re
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import psutil
import pyarrow as pa
import pytest
import sockets
import torch
from PIL import Image

from artray import corpus, images, storage
from artray.models.weights import ENV as ALLOW_PICKLE
from artray.models.weights import PickleRefusedError, load_state_dict
from artray.schema import ARTWORK_SCHEMA, TEXT_SCHEMA, artwork_row

REPO = Path(__file__).resolve().parents[1]
BOMB_SIDES = [(100_000, 100_000), (12_000, 10_000)]  # over Pillow's own hard limit; over artray's default only


def _png(w: int = 16, h: int = 16, color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims `width`x`height` (CRC fixed): a decompression bomb's header, 69 bytes."""
    data = bytearray(_png(1, 1))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture
def no_pickle(monkeypatch):
    monkeypatch.delenv(ALLOW_PICKLE, raising=False)


# --- weights: safetensors by default, pickle only on request --------------------------------------

class _RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_longclip_pickle_is_refused_unless_opted_in(tiny_models, tmp_path, monkeypatch, no_pickle, capsys):
    from artray.cli import main
    from artray.families import load_encoder
    from artray.models.longclip import load_longclip
    from artray.train.config import TrainConfig
    from artray.train.longclip import LongClipTrainer

    safe = tiny_models["longclip"]
    assert Path(safe).suffix == ".safetensors" and load_longclip(safe).context_length == 248  # no opt-in needed
    sd = load_state_dict(safe)
    pt = tmp_path / "longclip-L.pt"  # the published layout: a pickle
    torch.save(sd, pt)
    for load in (lambda: load_longclip(str(pt)), lambda: load_encoder("longclip", str(pt), device="cpu"),
                 lambda: LongClipTrainer(TrainConfig(model=str(pt), corpus="c", output="o"))):
        with pytest.raises(PickleRefusedError) as exc:
            load()
        assert str(pt) in str(exc.value) and f"{ALLOW_PICKLE}=1" in str(exc.value)
        assert "artray models to-safetensors" in str(exc.value)

    hostile = tmp_path / "hostile.pt"
    marker = tmp_path / "code-ran"
    hostile.write_bytes(pickle.dumps({"positional_embedding": _RunsCode(marker)}, protocol=2))
    with pytest.raises(PickleRefusedError):
        load_longclip(str(hostile))
    monkeypatch.setenv(ALLOW_PICKLE, "1")  # opted in: still torch.load(weights_only=True)
    with pytest.raises(pickle.UnpicklingError):
        load_longclip(str(hostile))
    assert not marker.exists()

    opted = load_longclip(str(pt))
    assert torch.equal(opted.model.positional_embedding, load_longclip(safe).model.positional_embedding)
    monkeypatch.delenv(ALLOW_PICKLE)
    converted = tmp_path / "longclip-L.safetensors"  # the one-off conversion users run on a trusted file
    assert main(["models", "to-safetensors", str(pt), str(converted)]) == 0
    assert "tensors" in capsys.readouterr().out
    assert torch.equal(load_longclip(str(converted)).model.positional_embedding, opted.model.positional_embedding)


def test_hf_folder_with_only_pytorch_model_bin_is_refused_unless_opted_in(tiny_models, tmp_path, monkeypatch,
                                                                          no_pickle):
    from artray.models.cnclip import load_cnclip
    from artray.models.diffusion import load_img2img
    from artray.models.weights import pretrained_kwargs

    folder = tmp_path / "cnclip-bin"
    shutil.copytree(tiny_models["cnclip"], folder)
    sd = load_state_dict(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(PickleRefusedError) as exc:
        load_cnclip(str(folder))
    assert str(folder / "pytorch_model.bin") in str(exc.value) and ALLOW_PICKLE in str(exc.value)
    assert pretrained_kwargs("OFA-Sys/chinese-clip-vit-base-patch16") == {"use_safetensors": True}  # hub ids

    pipeline = tmp_path / "sd-bin"  # a diffusers pipeline: each component folder is checked
    shutil.copytree(tiny_models["sd-img2img"], pipeline)
    unet = pipeline / "unet"
    torch.save(load_state_dict(unet / "diffusion_pytorch_model.safetensors"), unet / "diffusion_pytorch_model.bin")
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(PickleRefusedError, match="unet/diffusion_pytorch_model.bin"):
        load_img2img(str(pipeline))

    monkeypatch.setenv(ALLOW_PICKLE, "1")
    loaded = load_cnclip(str(folder)).model.state_dict()
    reference = load_cnclip(tiny_models["cnclip"]).model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.items())


def test_pickle_opt_in_travels_to_ray_workers_and_submitted_jobs(monkeypatch):
    from artray.runtime import worker_env
    from artray.submit import build_runtime_env

    monkeypatch.delenv(ALLOW_PICKLE, raising=False)
    assert worker_env() == {} and "env_vars" not in build_runtime_env(REPO, None)
    monkeypatch.setenv(ALLOW_PICKLE, "1")  # init_ray passes worker_env() as the job's runtime_env
    assert worker_env() == {ALLOW_PICKLE: "1"}
    assert build_runtime_env(REPO, None)["env_vars"] == {ALLOW_PICKLE: "1"}


def test_every_tiny_checkpoint_is_safetensors(tiny_models):
    from artray.models.weights import PICKLE_SUFFIXES, is_safetensors

    for name, path in tiny_models.items():
        files = [Path(path)] if Path(path).is_file() else [f for f in Path(path).rglob("*") if f.is_file()]
        assert not [f for f in files if f.suffix in PICKLE_SUFFIXES], name
        weights = [f for f in files if f.suffix == ".safetensors"]
        assert weights and all(is_safetensors(f) for f in weights), name


# --- decompression bombs, on every image path -----------------------------------------------------

@pytest.mark.parametrize("side", BOMB_SIDES, ids=["pillow-limit", "artray-limit"])
def test_every_decoding_helper_refuses_a_bomb_from_its_header(side):
    bomb = _png_claiming(*side)
    for decode in (images.probe, images.header, images.decode, images.to_rgb,
                   lambda b: images.fit_long_side(b, 576)):  # the last one is URL ingest's
        with pytest.raises(images.ImageError) as exc:
            decode(bomb)
        assert exc.value.reason == "decompression_bomb" and "pixels" in exc.value.detail


def test_no_image_is_opened_outside_the_checked_helpers():
    # (Image.frombytes / fromarray take pixels decoded through the helpers already, not encoded files.)
    opened = [f"{p.relative_to(REPO)}:{i}" for p in (REPO / "artray").rglob("*.py") if p.name != "images.py"
              for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
              if re.search(r"Image\.open\(|\bread_images\(", line)]
    assert opened == [], "decode images with artray.images (pixel limit checked first)"


@pytest.mark.parametrize("side", BOMB_SIDES, ids=["pillow-limit", "artray-limit"])
def test_search_api_answers_413_for_a_bomb(side):
    from artray.serve.config import Limits
    from artray.serve.queries import ApiError, decode_image

    b64 = base64.b64encode(_png_claiming(*side)).decode()
    for value in (b64, f"data:image/png;base64,{b64}", base64.b64decode(b64)):  # JSON, data: URL, upload
        with pytest.raises(ApiError) as exc:
            decode_image(value, Limits())
        assert (exc.value.status, exc.value.code) == (413, "image_too_large") and "pixels" in exc.value.detail
    assert decode_image(base64.b64encode(_png()).decode(), Limits()) == _png()


def test_import_records_a_bomb_as_a_failure_row(tmp_path):
    from artray.corpora.importer import ImportConfig, import_corpus

    src = tmp_path / "museum"
    src.mkdir()
    for name, data in (("fine", _png()), ("bomb", _png_claiming(*BOMB_SIDES[0])),
                       ("big", _png_claiming(*BOMB_SIDES[1]))):
        (src / f"{name}.png").write_bytes(data)
        (src / f"{name}.txt").write_text(f"the {name} one", encoding="utf-8")
    dest = str(tmp_path / "corpus")
    manifest = import_corpus(ImportConfig(format="folder", src=str(src), dest=dest, split_ratios=(1.0, 0.0, 0.0)))
    assert corpus.read_artworks(dest)["artwork_id"].to_pylist() and manifest["counts"]["artworks"] == 1
    failures = corpus.read_failures(dest).to_pylist()
    assert sorted(f["reason"] for f in failures) == ["decompression_bomb"] * 2
    assert sorted(re.findall(r"\b(big|bomb)\.png", " ".join(f"{f['file']} {f['detail']}" for f in failures))) \
        >= ["big", "bomb"]


def test_embed_turns_a_bomb_into_a_failure_row(tiny_models, tmp_path):
    from artray.stages.embed import INPUT_SCHEMA, EmbedBatch, EmbedConfig

    cfg = EmbedConfig(input=str(tmp_path / "corpus"), output=str(tmp_path / "emb"), family="longclip",
                      checkpoint=tiny_models["longclip"], device="cpu", max_image_pixels=10_000)
    rows = [{"embedding_id": f"image:{aid}", "id": aid, "kind": "image", "split": "test", "image": data,
             "image_uri": None, "text": None}
            for aid, data in (("fine", _png()), ("bomb", _png_claiming(*BOMB_SIDES[0])), ("large", _png(200, 100)))]
    out = {r["id"]: r for r in EmbedBatch(cfg)(pa.Table.from_pylist(rows, schema=INPUT_SCHEMA)).to_pylist()}
    assert out["fine"]["_ok"] and len(out["fine"]["vector"]) == 32
    for aid in ("bomb", "large"):  # a claimed header, and a real image over the configured max_image_pixels
        assert not out[aid]["_ok"] and out[aid]["_reason"] == "decompression_bomb" and out[aid]["vector"] is None
        assert "pixels" in out[aid]["_detail"] and "replace the image" in out[aid]["_detail"]


def test_augment_planner_records_a_bomb_as_a_failure_row():
    from artray.stages.augment_plan import _sizes

    train = pa.Table.from_pylist([artwork_row(artwork_id="fine", split="train", image=_png(24, 16)),
                                  artwork_row(artwork_id="bomb", split="train", image=_png_claiming(*BOMB_SIDES[0]))],
                                 schema=ARTWORK_SCHEMA)
    sizes, fails = _sizes(train, storage.DEFAULT_OPTIONS, images.DEFAULT_MAX_PIXELS)
    assert sizes == [(24, 16), None]
    assert [(f["key"], f["reason"]) for f in fails] == [("bomb", "decompression_bomb")]
    assert "pixels" in fails[0]["detail"]


def test_train_loader_refuses_a_bomb_before_any_worker_starts(tmp_path):
    from artray.train.config import TrainConfig
    from artray.train.data import TrainImageError, build_train_table, build_val_tables
    from artray.train.batches import decode_images as _images

    uri = str(tmp_path / "corpus")
    writer = corpus.ShardWriter(storage.join(uri, corpus.ARTWORKS), ARTWORK_SCHEMA)
    for aid, split, data in (("fine", "train", _png()), ("bomb", "train", _png_claiming(*BOMB_SIDES[1])),
                             ("valbomb", "val", _png_claiming(*BOMB_SIDES[0]))):
        writer.add(artwork_row(artwork_id=aid, split=split, image=data, captions=[f"the {aid} one"],
                               text_ids=[f"{aid}-0"], language="en", source="test"))
    writer.flush()
    texts = corpus.ShardWriter(storage.join(uri, corpus.TEXTS), TEXT_SCHEMA)
    texts.add({"text_id": "valbomb-0", "text": "the valbomb one", "artwork_ids": ["valbomb"], "split": "val",
               "language": "en", "source": "test"})
    texts.flush()
    cfg = TrainConfig(model="unused.safetensors", corpus=uri, output=str(tmp_path / "runs"))
    with pytest.raises(TrainImageError, match=r"artwork 'bomb' \(image\): .*pixels.*max_image_pixels"):
        build_train_table(cfg)
    with pytest.raises(TrainImageError, match=r"val set .*artwork 'valbomb'"):
        build_val_tables(cfg)
    with pytest.raises(images.ImageError) as exc:  # the workers' own decode, for rows that reach it another way
        _images([_png(), _png_claiming(*BOMB_SIDES[1])], cfg.max_image_pixels)
    assert exc.value.reason == "decompression_bomb"
    assert [im.size for im in _images([_png(8, 4)], cfg.max_image_pixels)] == [(8, 4)]


# --- manifests mask credentials -------------------------------------------------------------------

def test_manifest_and_failure_rows_mask_credentials(monkeypatch):
    from artray.manifest import build_manifest
    from artray.schema import failure_row

    secret = "artrayFAKEsecret" + secrets.token_hex(8)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    config = {"s3_endpoint": "http://minio-user:minio-pass@127.0.0.1:9000", "max_new_tokens": 64,
              "auth": {"token_env": "ARTRAY_API_TOKEN", "token": "inline-token-value"},
              "src": "https://bucket.s3.amazonaws.com/a.json?X-Amz-Credential=AKIA%2F&X-Amz-Signature=abc123&v=2",
              "note": f"key {secret} pasted by mistake"}
    text = json.dumps(build_manifest("test", config, {"n": 1}, time.time()))
    for leaked in ("minio-pass", "minio-user", "inline-token-value", "abc123", "AKIA%2F", secret):
        assert leaked not in text
    assert '"max_new_tokens": 64' in text and '"token_env": "ARTRAY_API_TOKEN"' in text and "&v=2" in text
    row = failure_row("test", "unreadable_image", f"GET s3://b/x failed with secret {secret}",
                      file="http://u:p4ss@host/x.png")
    assert secret not in row["detail"] and "p4ss" not in row["file"]


# --- one user session: loopback only, and no credential in any output -----------------------------

SESSION = r'''
"""A user's session: a local cluster (artray.runtime.init_ray), import → embed → index → report on
S3, then the search API through ServeProcess, kept up until stdin closes."""
import json
import sys

import ray

from artray.corpora.importer import ImportConfig, import_corpus
from artray.evaluate.report import ReportConfig, run_report
from artray.index.build import IndexConfig, build_index
from artray.runtime import free_port, init_ray
from artray.scaffold.sample_corpora import make_samples
from artray.serve.local import ServeProcess, serve_config
from artray.stages.embed import EmbedConfig, run_embed

work, checkpoint, bucket, endpoint = sys.argv[1:5]
init_ray()
samples = make_samples(f"{work}/samples", n=6)
s3 = {"s3_endpoint": endpoint}
corpus_uri, emb, idx = f"{bucket}/corpus", f"{bucket}/embeddings", f"{bucket}/index"
import_corpus(ImportConfig(format="artpedia", src=samples["artpedia"], dest=corpus_uri, **s3))
run_embed(EmbedConfig(input=corpus_uri, output=emb, family="longclip", checkpoint=checkpoint, device="cpu", **s3))
build_index(IndexConfig(embeddings=emb, output=idx, **s3))
run_report(ReportConfig(output=f"{bucket}/report/report.html", corpus=corpus_uri, **s3))
config = serve_config({"longclip": idx}, free_port(), auth={"token_env": "ARTRAY_API_TOKEN"}, **s3)
with ServeProcess(config, ray.get_runtime_context().gcs_address, keep_files=True) as proc:
    print("READY " + json.dumps({"url": proc.url, "serve_dir": str(proc.log.parent)}), flush=True)
    sys.stdin.readline()
ray.shutdown()
print("DONE", flush=True)
'''


class Session:
    """The session script as a subprocess with planted credentials; `stop()` ends it and its cluster."""

    def __init__(self, root: Path, checkpoint: str, bucket: str, endpoint: str):
        self.root, self.bucket, self.endpoint = root, bucket, endpoint
        tag = secrets.token_hex(6)
        self.planted = {  # what a user's shell holds; none of it may appear in any output
            "AWS_SECRET_ACCESS_KEY": f"artrayFAKEawsSecret{tag}/{secrets.token_hex(8)}",
            "HF_TOKEN": f"hf_artrayFAKEhub{tag}{secrets.token_hex(8)}",
            "RAY_AUTH_TOKEN": f"artrayfakeraytoken{tag}{secrets.token_hex(12)}",  # becomes the cluster's token
            "ARTRAY_API_TOKEN": f"artrayFAKEapi{tag}{secrets.token_hex(8)}",  # the search API's bearer token
        }
        (root / "work").mkdir()
        script = root / "session.py"
        script.write_text(SESSION, encoding="utf-8")
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "ARTRAY_BIND", ALLOW_PICKLE)}
        env.update(self.planted, RAY_TMPDIR=str(root), PYTHONPATH=str(REPO))  # Ray's session folder: root/ray
        self.out, self.err = root / "stdout.log", root / "stderr.log"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            argv = [sys.executable, str(script), str(root / "work"), checkpoint, bucket, endpoint]
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, env=env, cwd=str(root))
        self.info = self._wait_ready(timeout_s=540)
        self.pids: set[int] = set()

    def _wait_ready(self, timeout_s: float) -> dict:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for line in self.out.read_text(errors="replace").splitlines():
                if line.startswith("READY "):
                    return json.loads(line[len("READY "):])
            if self.proc.poll() is not None:
                break
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"the session did not get ready:\n{self.err.read_text(errors='replace')[-4000:]}")

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        procs = [root, *root.children(recursive=True)]
        self.pids |= {p.pid for p in procs}
        return procs

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.tree()
            self.proc.stdin.close()  # the script stops Serve and its cluster
            try:
                self.proc.wait(180)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        deadline = time.time() + 60  # the cluster's processes go with it; any left over are ours to end
        while time.time() < deadline and [p for p in self.pids if psutil.pid_exists(p)]:
            time.sleep(1)
        for pid in self.pids:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass


@pytest.fixture(scope="module")
def session(tiny_models, s3_endpoint):
    import boto3

    root = Path(tempfile.mkdtemp(prefix="/tmp/arsec"))  # short: Ray's socket paths have a length limit
    bucket = f"artray-sec-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    s = Session(root, tiny_models["longclip"], f"s3://{bucket}", s3_endpoint)
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(s.info.get("serve_dir", "/nonexistent"), ignore_errors=True)


def test_session_listens_on_loopback_only(session):
    import httpx

    url = session.info["url"]
    session.tree()  # remember the pids, to check they are gone after stop()
    listening = sockets.listening(session.proc.pid)
    names = {name for name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names and any("ProxyActor" in n for n in names), listening
    assert any("ServeReplica" in n for n in names), listening  # replicas' own gRPC ports are checked too
    assert sockets.wide(listening) == [], f"listening beyond 127.0.0.1: {sockets.wide(listening)}"
    port = int(url.rsplit(":", 1)[1])
    assert [ip for _, ip, p in listening if p == port] == ["127.0.0.1"]  # the search API, from serve_config

    token = session.planted["ARTRAY_API_TOKEN"]  # the API works, with the planted token and S3 credentials
    assert httpx.post(f"{url}/search", json={"text": "a red circle", "k": 2}).status_code == 401
    answer = httpx.post(f"{url}/search", json={"text": "a red circle", "k": 2},
                        headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert answer.status_code == 200 and len(answer.json()["results"]) == 2


def _files(root: Path):
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield str(path), path.read_bytes()


def _objects(endpoint: str, bucket: str):
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            yield f"s3://{bucket}/{obj['Key']}", s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()


def test_no_credential_in_logs_manifests_or_report(session):
    session.stop()
    assert "DONE" in session.out.read_text(), session.err.read_text(errors="replace")[-3000:]
    assert [p for p in session.pids if psutil.pid_exists(p)] == []  # its whole cluster is gone

    outputs = dict(_objects(session.endpoint, session.bucket.removeprefix("s3://")))
    names = {k.rsplit("/", 1)[-1] for k in outputs}
    assert {"_manifest.json", "report.html", "_encoder.json"} <= names, sorted(names)
    manifests = [json.loads(v) for k, v in outputs.items() if k.endswith("_manifest.json")]
    assert len(manifests) >= 3 and all(m["config"].get("s3_endpoint") == session.endpoint for m in manifests)
    ray_logs = dict(_files(session.root / "ray"))
    assert any("/logs/" in k for k in ray_logs) and any("serve" in k for k in ray_logs)
    outputs.update(ray_logs)
    outputs.update(_files(session.root / "work"))
    outputs.update(_files(Path(session.info["serve_dir"])))
    outputs.update({str(session.out): session.out.read_bytes(), str(session.err): session.err.read_bytes()})
    assert len(outputs) > 50

    leaks = [(name, path) for path, data in outputs.items() for name, value in session.planted.items()
             if value.encode() in data]
    assert leaks == [], f"credentials found in outputs: {leaks}"
