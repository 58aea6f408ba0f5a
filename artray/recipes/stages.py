"""The stage jobs a recipe step may name: config class, run function, where it writes, whether it needs Ray.

Names are `artray submit`'s stage names. Each entry is imported only when a step of it runs (or a
config of it is validated), so listing or showing recipes loads no torch or Ray."""

from __future__ import annotations

import importlib
from typing import NamedTuple


class StageJob(NamedTuple):
    config: str  # "module:ConfigClass"
    run: str  # "module:function(cfg)"
    output_key: str  # the config key naming what the stage writes
    ray: bool  # runs on a Ray cluster (init_ray first)


STAGES: dict[str, StageJob] = {
    "import": StageJob("artray.corpora.importer:ImportConfig", "artray.corpora.importer:import_corpus", "dest", False),
    "ingest": StageJob("artray.stages.ingest:IngestConfig", "artray.stages.ingest:run_ingest", "output", True),
    "augment": StageJob("artray.stages.augment:AugmentConfig", "artray.stages.augment:run_augment", "output", True),
    "caption": StageJob("artray.stages.caption_config:CaptionConfig", "artray.stages.caption:run_caption", "output",
                        True),
    "train": StageJob("artray.train.config:TrainConfig", "artray.train.run:run_train", "output", True),
    "evaluate-captions": StageJob("artray.evaluate.caption_metrics:CaptionMetricsConfig",
                                  "artray.evaluate.caption_metrics:run_caption_metrics", "output", False),
    "evaluate-retrieval": StageJob("artray.evaluate.retrieval:RetrievalEvalConfig",
                                   "artray.evaluate.retrieval:run_retrieval_eval", "output", True),
    "embed": StageJob("artray.stages.embed:EmbedConfig", "artray.stages.embed:run_embed", "output", True),
    "index": StageJob("artray.index.build:IndexConfig", "artray.index.build:build_index", "output", False),
    "report": StageJob("artray.evaluate.report:ReportConfig", "artray.evaluate.report:run_report", "output", False),
    "table": StageJob("artray.recipes.table:TableConfig", "artray.recipes.table:run_table", "output", False),
}


def load(ref: str):
    """The object a "module:name" reference names (imported now)."""
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)
