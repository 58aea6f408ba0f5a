"""Shared fixtures: one real local Ray per session, a real S3-compatible server (moto) on
127.0.0.1, and small corpora/checkpoints built by artray itself."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

# Environment for every test and every Ray worker started from this process.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["ARTRAY_FRESH_RAY"] = "1"  # init_ray (and every CLI a test starts) never joins a running local cluster
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions"))
# Never let a test reach a real cloud endpoint.
for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
    os.environ.pop(var, None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_local():
    """A real single-node Ray cluster with 2 CPUs, shared by the whole test session."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=1_500_000_000,
            logging_level="WARNING",
            configure_logging=True,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto in server mode) on 127.0.0.1; yields its URL."""
    from moto_server import MotoProcess

    server = MotoProcess()
    yield server.url
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket on the local S3 server; yields 's3://<bucket>'."""
    import boto3

    name = f"artray-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Every tiny checkpoint (``artray.scaffold.tiny``), written once per session; name → path."""
    from artray.scaffold.tiny import make_tiny

    return make_tiny(str(tmp_path_factory.getbasetemp() / "tiny"))


@pytest.fixture(scope="session")
def imported_artpedia(tmp_path_factory):
    """``make(n) -> URI``: the sample Artpedia of `n` artworks (``make_samples``) imported as an artray corpus,
    made once per `n` per session. Read-only: tests write their outputs elsewhere."""
    from artray.corpora.importer import ImportConfig, import_corpus
    from artray.scaffold.sample_corpora import make_samples

    made: dict[int, str] = {}

    def make(n: int) -> str:
        if n not in made:
            root = tmp_path_factory.mktemp(f"artpedia-{n}")
            paths = make_samples(str(root / "native"), n=n)
            import_corpus(ImportConfig(format="artpedia", src=paths["artpedia"], dest=str(root / "artpedia")))
            made[n] = str(root / "artpedia")
        return made[n]

    return make
