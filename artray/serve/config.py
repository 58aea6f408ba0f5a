"""The search app's settings: the ``args:`` of the application in a Serve config file.

What runs where — replicas, ``num_gpus``, autoscaling, batch sizes — is *not* here: it
belongs to the ``deployments:`` section of the same file (see serve_configs/), so the
same code runs on a laptop and on a GPU cluster.

Auth is off unless ``auth.token_env`` or ``auth.token_file`` is set; then every route
but ``/healthz`` wants ``Authorization: Bearer <token>``. A configured source that holds
no token stops the app from starting rather than leaving it open.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from artray.encoders import Device, DType, canonical_checkpoint
from artray.families import RetrievalFamily
from artray.serve.rerank import RerankConfig
from artray.storage import StorageOptions

MODEL_NAME = r"^[a-z0-9][a-z0-9_-]{0,40}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    """One searchable model: an index, and the encoder that made it (read from the index by default)."""

    name: str = Field(pattern=MODEL_NAME, description="what requests name in `model`; also names its deployments")
    index: str = Field(description="URI of an index written by `artray index build`")
    family: RetrievalFamily | None = Field(None, description="default: the index's; set it to make a mismatch an error")
    checkpoint: str | None = Field(None, description="default: the index's; set it to make a mismatch an error")
    device: Device = "auto"
    dtype: DType = "auto"
    rerank: RerankConfig = Field(default_factory=RerankConfig, description="how `rerank` requests are re-scored")

    def expected(self, recorded: dict) -> tuple[str, str]:
        """(family, checkpoint) to load: the configured ones, else those the index records."""
        return (self.family or recorded["family"],
                canonical_checkpoint(self.checkpoint) if self.checkpoint else recorded["checkpoint"])


class Limits(_Section):
    """Input limits; a request over one gets a 4xx that names the limit."""

    max_body_bytes: int = Field(16_000_000, ge=1024, description="whole request body (base64 adds a third)")
    max_image_bytes: int = Field(10_000_000, ge=1024, description="one encoded image")
    max_image_pixels: int = Field(40_000_000, ge=1, description="width × height of one image (decompression bombs)")
    max_text_chars: int = Field(2000, ge=1, description="one query text")
    max_k: int = Field(100, ge=1, description="largest k a search may ask for")
    max_embed_items: int = Field(32, ge=1, description="texts + images in one /embed request")


class AuthConfig(_Section):
    """Bearer-token auth: on when a token source is set. Off by default — put the app behind auth
    or on 127.0.0.1 only."""

    token_env: str | None = Field(None, description="environment variable holding the token")
    token_file: str | None = Field(None, description="file holding the token (e.g. a mounted secret)")

    @property
    def enabled(self) -> bool:
        return bool(self.token_env or self.token_file)

    def token(self) -> str | None:
        """The token, None when auth is off; raises ValueError when a configured source is empty."""
        if not self.enabled:
            return None
        if self.token_file:
            try:
                token = Path(self.token_file).expanduser().read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"auth.token_file {self.token_file} cannot be read ({exc}); create it or fix the path") from exc
            where = f"auth.token_file {self.token_file}"
        else:
            token = os.environ.get(self.token_env, "").strip()
            where = f"environment variable {self.token_env} (auth.token_env) in the ingress replica"
        if len(token) < 16:
            raise ValueError(f"{where} holds no token of at least 16 characters; set one "
                             "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`) or remove the auth section")
        return token


class CorsConfig(_Section):
    """CORS for browser clients; no origins (the default) sends no CORS headers."""

    allow_origins: list[str] = Field(default_factory=list, description='e.g. ["https://collection.example.org"]')
    allow_methods: list[str] = Field(default_factory=lambda: ["GET", "POST"])
    allow_headers: list[str] = Field(default_factory=lambda: ["Authorization", "Content-Type"])
    allow_credentials: bool = False
    max_age_s: int = 600


class RetrievalAppConfig(_Section):
    """Everything the search app needs besides placement."""

    models: list[ModelConfig] = Field(min_length=1)
    default_model: str | None = Field(None, description="model used when a request names none (default: the first)")
    limits: Limits = Field(default_factory=Limits)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    cors: CorsConfig = Field(default_factory=CorsConfig)
    s3_endpoint: str | None = None
    layout: Literal["colocated", "split"] = Field(
        "colocated", description="colocated: every model's encoder and index inside the ingress replica (one Serve "
        "hop, the fastest; a request whose replica dies gets 503 from the proxy callback `artray.serve.proxy`); "
        "split: a `model-<name>` deployment per model (models scale apart from HTTP; one hop more; the ingress "
        "answers 503 for a dead model replica)")

    @model_validator(mode="after")
    def _names(self) -> RetrievalAppConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        if self.default_model is None:
            self.default_model = names[0]
        elif self.default_model not in names:
            raise ValueError(f"default_model {self.default_model!r} is not one of the models {names}")
        return self

    def storage_options(self) -> StorageOptions:
        return StorageOptions(endpoint_url=self.s3_endpoint)
