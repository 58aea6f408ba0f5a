"""The fields every Ray Data stage shares: where it reads and writes, and how its actor pool is sized.

One name per concept across the four stages' YAML keys, ``--flags`` and code: ``input`` /
``output`` (URIs), ``actors``, ``cpus_per_actor``, ``gpus_per_actor``, ``batch_size``,
``shard_rows``, ``retry_failed``. The names used before (``actor_num_cpus``, ``actor_num_gpus``,
``num_gpus``) are still read from configs, with a warning, as the new ones.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from artray.config import JobConfig



class StageConfig(JobConfig):
    """Settings every stage has; each stage's config adds its own and may change the defaults."""

    # old key → new key (JobConfig reads the old ones with a warning)
    RENAMED: ClassVar[dict[str, str]] = {
        "actor_num_cpus": "cpus_per_actor",
        "actor_num_gpus": "gpus_per_actor",
        "num_gpus": "gpus_per_actor",
    }

    input: str = Field(description="corpus URI to read (written by `artray corpus import` or `ingest`)")
    output: str = Field(description="URI to write; running again resumes it")
    actors: int | None = Field(None, ge=1, description="actors in the pool (default: one per GPU, else as many as "
                               "the CPUs allow beside the stage's read/write tasks)")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per actor")
    batch_size: int = Field(64, ge=1, description="rows per actor call")
    shard_rows: int = Field(500, ge=1, description="rows per committed Parquet shard at most")
    retry_failed: bool = Field(False, description="also re-attempt permanent failures (corrupt images, ...)")


class ModelStageConfig(StageConfig):
    """A stage whose actors run a model, on a GPU when the cluster has one (augment, caption, embed)."""

    gpus_per_actor: float | None = Field(None, ge=0, description="GPUs per actor, fractional allowed (default: 1 if "
                                         "the cluster has GPUs, else 0; 0 runs on CPU)")
