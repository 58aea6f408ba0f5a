"""Every job artray runs, in one table: its typed config, its run function and how each front door offers it.

Three front doors read this table: the CLI (`artray <command>`, flags from the config), `artray submit`
(a ``jobs/<stage>.py`` entrypoint on a remote cluster) and recipes (a step names a job by its key).
The references are ``"package.module:attribute"`` strings, imported only when a job runs or its
flags are built (:func:`artray.import_refs.load_ref`), so reading the table imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Job:
    """One job. Its key in `JOBS` is its name in `artray submit` and in recipe steps."""

    config: str | None  # "module:ConfigClass" of its typed config (None: `recipe`, which takes a recipe file)
    run: str | None  # "module:function(cfg)": writes the outputs + manifest and prints its one-line summary
    ray: bool = True  # runs on a Ray cluster: started/joined first, `--address` on the CLI
    leased: bool = False  # writes its output under a run lease (`artray.lease`): `--force-lease` on the CLI
    command: tuple[str, ...] = ()  # `artray …` path whose flags come from the config; (): none generated
    positionals: tuple[str, ...] = ()  # config fields the command also takes as positional arguments
    help: str = ""  # the command's one line in `artray --help`
    entrypoint: tuple[str, ...] = ()  # `artray submit`: jobs/<script>.py and its leading arguments; (): not offered
    output_key: str | None = None  # the config key naming what it writes; set for jobs a recipe step may name


JOBS: dict[str, Job] = {
    # `artray corpus import` has its own parser (the format and its src/dest positionals).
    "import": Job("artray.corpora.importer:ImportConfig", "artray.corpora.importer:import_corpus", ray=False,
                  entrypoint=("jobs/import_corpus.py",), output_key="dest"),
    "ingest": Job("artray.stages.ingest:IngestConfig", "artray.stages.ingest:run_ingest", leased=True,
                  command=("corpus", "ingest"), positionals=("input", "output"),
                  help="download the img_url images of a corpus on Ray Data",
                  entrypoint=("jobs/ingest.py",), output_key="output"),
    "augment": Job("artray.stages.augment:AugmentConfig", "artray.stages.augment:run_augment", leased=True,
                   command=("augment",), help="write M diffusion img2img variants of every train artwork on Ray Data",
                   entrypoint=("jobs/augment.py",), output_key="output"),
    "caption": Job("artray.stages.caption_config:CaptionConfig", "artray.stages.caption:run_caption", leased=True,
                   command=("caption",),
                   help="write MLLM (or GIT/BLIP captioner) captions / search queries for a corpus on Ray Data",
                   entrypoint=("jobs/caption.py",), output_key="output"),
    "evaluate-captions": Job("artray.evaluate.caption_metrics:CaptionMetricsConfig",
                             "artray.evaluate.caption_metrics:run_caption_metrics", ray=False,
                             command=("evaluate", "captions"),
                             help="BLEU/METEOR/ROUGE-L/CIDEr/SPICE/BERTScore of two caption sources",
                             entrypoint=("jobs/evaluate.py", "captions"), output_key="output"),
    "evaluate-retrieval": Job("artray.evaluate.retrieval:RetrievalEvalConfig",
                              "artray.evaluate.retrieval:run_retrieval_eval", command=("evaluate", "retrieval"),
                              help="R@K/MRR/MR of checkpoints both ways, ITM, LACLIP, RRF fusion, significance",
                              entrypoint=("jobs/evaluate.py", "retrieval"), output_key="output"),
    "evaluate-runs": Job("artray.evaluate.runs:RunsEvalConfig", "artray.evaluate.runs:run_runs_eval", ray=False,
                         command=("evaluate", "runs"), positionals=("runs",),
                         help="P@1/MRR/R@K/ranks of ranx-format run files (JSON {query: {doc: score}}), RRF fusion, "
                              "significance",
                         entrypoint=("jobs/evaluate.py", "runs")),
    "report": Job("artray.evaluate.report:ReportConfig", "artray.evaluate.report:run_report", ray=False,
                  command=("report",), help="one self-contained HTML report of retrieval metrics, captions and "
                                            "augmentation", entrypoint=("jobs/report.py",), output_key="output"),
    "train": Job("artray.train.config:TrainConfig", "artray.train.run:run_train", leased=True, command=("train",),
                 help="fine-tune CLIP / Long-CLIP / Chinese-CLIP / BLIP / captioners on Ray Train (DDP or DeepSpeed)",
                 entrypoint=("jobs/train.py",), output_key="output"),
    "embed": Job("artray.stages.embed:EmbedConfig", "artray.stages.embed:run_embed", leased=True, command=("embed",),
                 help="embed a corpus's images and texts with a retrieval checkpoint on Ray Data",
                 entrypoint=("jobs/embed.py",), output_key="output"),
    "index": Job("artray.index.build:IndexConfig", "artray.index.build:build_index", ray=False, leased=True,
                 command=("index", "build"), help="build FAISS galleries + metadata from `artray embed` output",
                 entrypoint=("jobs/index.py",), output_key="output"),
    "search": Job("artray.serve.client:SearchClientConfig", "artray.serve.client:run_search", ray=False,
                  command=("search",), help="query a running search API (artray serve run serve_configs/retrieval.yaml)"),
    "table": Job("artray.recipes.table:TableConfig", "artray.recipes.table:run_table", ray=False, output_key="output"),
    # `artray submit recipe NAME --corpus … --out …`: the recipe file is its config.
    "recipe": Job(None, None, entrypoint=("jobs/recipe.py", "run")),
}


def commands() -> dict[str, Job]:
    """The jobs the CLI offers as `artray <command>` with flags from their config, in `artray --help` order."""
    return {name: job for name, job in JOBS.items() if job.command}


def submittable() -> dict[str, Job]:
    """The jobs `artray submit <stage>` runs on a cluster (each has a jobs/ entrypoint)."""
    return {name: job for name, job in JOBS.items() if job.entrypoint}


def recipe_stages() -> dict[str, Job]:
    """The jobs a recipe step may name (each says which config key it writes to)."""
    return {name: job for name, job in JOBS.items() if job.output_key}
