"""`artray …` — one subcommand per job. Each job's flags come from its typed config, so the
CLI, the YAML files under jobs/configs/ and the Python API never drift apart.

The parser is built from the jobs table (`artray.jobs`); a job's config module (which may import
torch, Ray or FAISS) is imported, and its flags added, only when that job is the command
being parsed. So `artray --help`, `artray <group> --help` and `artray corpus info` stay fast."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing

from artray.import_refs import load_ref
from artray.jobs import JOBS, Job, commands

log = logging.getLogger("artray")


def _print_json(obj) -> None:
    from artray.jsonio import dumps_strict

    print(dumps_strict(obj, indent=2, ensure_ascii=False))


def _cmd_import(args) -> int:
    from artray.config import config_from_args
    from artray.corpora.importer import ImportConfig, import_corpus

    cfg = config_from_args(ImportConfig, args, {"format": args.format, "src": args.src, "dest": args.dest})
    manifest = import_corpus(cfg)
    c = manifest["counts"]
    print(f"[import] {cfg.format}: {c['artworks']} artworks {c['artworks_per_split']}, {c['texts']} texts, "
          f"{c['failed']} failures {c['failure_reasons'] or ''} → {cfg.dest}")
    return 0


def _cmd_serve_run(args) -> int:
    from artray.serve.local import serve_run

    return serve_run(args.config, args.address, args.non_blocking, args.direct_ingress)


def _run_job(args) -> int:
    from artray.config import config_from_args

    job = JOBS[args.job_name]
    given = {name: getattr(args, name) for name in job.positionals}
    cfg = config_from_args(load_ref(job.config), args, {k: v for k, v in given.items() if v not in (None, [])})
    if getattr(args, "force_lease", False):
        from artray.lease import FORCE_ENV

        os.environ[FORCE_ENV] = "1"
    if job.ray:
        from artray.runtime import init_ray

        init_ray(args.address)
    load_ref(job.run)(cfg)
    return 0


class _LazyParser(argparse.ArgumentParser):
    """An argparse parser whose arguments may be added on first use, by `populate(parser)`.

    A leaf command's flags come from its config class, whose module can be heavy; the parser
    adds them just before it parses or prints help, i.e. only for the command being run."""

    def __init__(self, *args, populate=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._populate = populate

    def _complete(self) -> None:
        populate, self._populate = self._populate, None
        if populate:
            populate(self)

    def parse_known_args(self, args=None, namespace=None):
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()


def _job_arguments(job: Job):
    """The `populate` of a job's parser: its positionals, --address if it starts Ray, its config's flags."""

    def populate(p: argparse.ArgumentParser) -> None:
        from artray.config import add_config_arguments

        config_cls = load_ref(job.config)
        p.description = (config_cls.__doc__ or "").strip()
        for name in job.positionals:  # a list field takes several (`artray evaluate runs A.json B.json`)
            many = typing.get_origin(config_cls.model_fields[name].annotation) is list
            p.add_argument(name, nargs="*" if many else "?",
                           help=f"{name} URI{'s' if many else ''} (or set {'them' if many else 'it'} in --config)")
        if job.ray:
            _add_ray_arguments(p)
        if job.leased:
            p.add_argument("--force-lease", action="store_true",
                           help="take the output's run lease even if another run seems to hold it: only once you "
                                "are sure that run is dead (same as ARTRAY_FORCE_LEASE=1)")
        add_config_arguments(p, config_cls, skip=job.positionals)

    return populate


def _add_job(sub, name: str, job: Job):
    p = sub.add_parser(job.command[-1], help=job.help, populate=_job_arguments(job))
    p.set_defaults(func=_run_job, job_name=name)


def _import_arguments(p: argparse.ArgumentParser) -> None:
    from artray.config import add_config_arguments
    from artray.corpora.importer import FORMATS, ImportConfig

    p.add_argument("--format", choices=FORMATS, required=False, help="native format of SRC")
    p.add_argument("src", nargs="?", help="input file or folder (local or s3://)")
    p.add_argument("dest", nargs="?", help="output corpus URI (local or s3://)")
    add_config_arguments(p, ImportConfig, skip=("format", "src", "dest"))


def _cmd_info(args) -> int:
    from artray import corpus
    from artray.storage import StorageOptions

    options = StorageOptions(endpoint_url=args.s3_endpoint)
    summary = corpus.summarize(args.uri, options)
    manifest = corpus.read_manifest(args.uri, options) or {}
    summary["manifest"] = {k: v for k, v in manifest.items() if k in ("stage", "finished", "wall_s", "format")}
    config = manifest.get("config") or {}
    if manifest.get("stage") == "import":  # how the captions were made from the native format
        summary["caption_source"] = (config.get("caption_source") if config.get("format") == "artpedia"
                                     else config.get("caption_column") if config.get("format") == "folder"
                                     else "the format's captions")
    _print_json(summary)
    for hint in corpus_next_steps(summary):
        print(f"next: {hint}", file=sys.stderr)
    return 0


def corpus_next_steps(summary: dict) -> list[str]:
    """What a person does next with a corpus like `summary` (from `corpus info`)."""
    hints = []
    missing = summary["artworks"] - summary["with_image"]
    if summary["artworks"] and missing:
        what = "no artwork has" if missing == summary["artworks"] else f"{missing} of {summary['artworks']} artworks have no"
        hints.append(f"{what} image yet: `artray corpus ingest {summary['uri']} <output>` downloads their img_url "
                     "images (set --contact for Wikimedia)")
    if summary["failures"]:
        hints.append(f"{summary['failures']} rows failed ({', '.join(summary['failure_reasons'])}): their reasons and "
                     f"files are in {summary['uri']}/_failures/")
    return hints


def _cmd_make_sample(args) -> int:
    from artray.scaffold.sample_corpora import make_samples

    paths = make_samples(args.dir, n=args.n, seed=args.seed)
    for name, path in paths.items():
        print(f"[make-sample] {name}: {path}")
    return 0


def _cmd_make_tiny(args) -> int:
    from artray.scaffold.tiny import make_tiny

    paths = make_tiny(args.dir, seed=args.seed)
    for name, path in paths.items():
        print(f"[make-tiny] {name}: {path}")
    return 0


def _cmd_to_safetensors(args) -> int:
    from artray.models.weights import convert_to_safetensors

    n = convert_to_safetensors(args.src, args.dst)
    print(f"[to-safetensors] {args.src}: {n} tensors → {args.dst}")
    return 0


def _cmd_demo(args) -> int:
    from artray.scaffold.demo import run_demo

    run_demo(args.workdir)
    return 0


def _cmd_recipe(args) -> int:
    from artray.recipes.config import load_recipe

    if args.recipe_command == "list":
        from artray.recipes.show import list_text

        print(list_text())
        return 0
    recipe = load_recipe(args.name)
    if args.recipe_command == "show":
        from artray.recipes.show import show_text

        print(show_text(recipe, args.corpus or "<corpus>", args.out or "<out>", args.overrides))
        return 0
    from artray.recipes.runner import run_recipe

    run_recipe(recipe, args.corpus, args.out, args.overrides, address=args.address, s3_endpoint=args.s3_endpoint)
    return 0


def _add_recipe_parsers(sub) -> None:
    p = sub.add_parser("recipe", help="published experiments as one job: list, show and run paper recipes")
    recipe_sub = p.add_subparsers(dest="recipe_command", required=True)
    q = recipe_sub.add_parser("list", help="the recipes under jobs/recipes/")
    q.set_defaults(func=_cmd_recipe)
    for name, help_text in (("show", "a recipe's params and each step with its config and output URI"),
                            ("run", "run (or resume) a recipe: every step, then the paper's table")):
        q = recipe_sub.add_parser(name, help=help_text)
        q.add_argument("name", help="recipe name (artray recipe list) or the path of a recipe .yaml")
        q.add_argument("--corpus", required=name == "run", help="the artray corpus URI the recipe reads")
        q.add_argument("--out", required=name == "run", help="URI under which every step writes (running again "
                       "resumes: finished steps are skipped)")
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="a param (--set scale=tiny) or a step's config key (--set train.epochs=1); repeatable")
        if name == "run":
            _add_ray_arguments(q)
            q.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: the AWS environment's)")
        q.set_defaults(func=_cmd_recipe)


def build_parser() -> argparse.ArgumentParser:
    """The whole `artray` parser; only the command being parsed imports its config module."""
    parser = _LazyParser(prog="artray", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, with Ray's own logs and progress bars on the console")
    sub = parser.add_subparsers(dest="command", required=True)

    corpus_p = sub.add_parser("corpus", help="import, ingest, sample and inspect corpora")
    corpus_sub = corpus_p.add_subparsers(dest="corpus_command", required=True)

    p = corpus_sub.add_parser("import", help="native corpus (artpedia/artcap/cnclip/folder) → artray corpus",
                              populate=_import_arguments)
    p.set_defaults(func=_cmd_import)

    p = corpus_sub.add_parser("info", help="print a corpus summary (counts per split, failures)")
    p.add_argument("uri", help="corpus URI (local path or s3://)")
    p.add_argument("--s3-endpoint", help="S3-compatible endpoint URL (default: the AWS environment's)")
    p.set_defaults(func=_cmd_info)

    p = corpus_sub.add_parser("make-sample", help="write small sample corpora in the native formats")
    p.add_argument("dir", help="folder to write artpedia/, artcap/, culti/ and folder/ into")
    p.add_argument("--n", type=int, default=50, help="artworks per corpus (default: 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the drawn scenes and splits (default: 0)")
    p.set_defaults(func=_cmd_make_sample)

    models_p = sub.add_parser("models", help="model checkpoints")
    models_sub = models_p.add_subparsers(dest="models_command", required=True)
    p = models_sub.add_parser("make-tiny", help="write tiny random checkpoints of every architecture artray uses")
    p.add_argument("dir", help="folder to write one sub-folder per architecture into")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    p.set_defaults(func=_cmd_make_tiny)
    p = models_sub.add_parser(
        "to-safetensors", help="convert a trusted pickle state dict (.pt/.pth/.bin, e.g. longclip-L.pt) to safetensors",
        description="Loads SRC with torch.load(weights_only=True) (run it only on a file you trust) and writes "
                    "its tensors to DST as safetensors, which artray loads without ARTRAY_ALLOW_PICKLE.")
    p.add_argument("src", help="local pickle checkpoint")
    p.add_argument("dst", help="local .safetensors file to write")
    p.set_defaults(func=_cmd_to_safetensors)

    groups = {("corpus",): corpus_sub}
    for name, job in commands().items():  # the jobs table (artray.jobs): flags from each job's config
        parent = job.command[:-1]
        if parent and parent not in groups:
            group = sub.add_parser(parent[0], help=f"{parent[0]} jobs")
            groups[parent] = group.add_subparsers(dest=f"{parent[0]}_command", required=True)
        _add_job(groups[parent] if parent else sub, name, job)

    _add_recipe_parsers(sub)

    serve_p = sub.add_parser("serve", help="the search API")
    serve_sub = serve_p.add_subparsers(dest="serve_command", required=True)
    p = serve_sub.add_parser(
        "run", help="`serve run <config>` on a local Ray bound to 127.0.0.1 (or $RAY_ADDRESS / --address)",
        description="Ray Serve's `serve run <config>`, on a Ray started the way every artray job starts it: "
                    "$RAY_ADDRESS or --address joins that cluster; else a local cluster whose every port listens on "
                    "127.0.0.1 (ARTRAY_BIND=<address> binds there instead). Ray's own `serve run` without a cluster "
                    "starts one listening on every interface. Ctrl-C stops the app.")
    p.add_argument("config", help="Serve config file (serve_configs/retrieval.yaml)")
    _add_ray_arguments(p)
    p.add_argument("--non-blocking", action="store_true", help="return once the app is deployed")
    p.add_argument("--direct-ingress", action="store_true",
                   help="Serve's experimental direct ingress (Ray 2.60): each ingress replica answers HTTP on its own "
                        "port (30000 and up, printed once up), no proxy hop (a few ms less per request); the proxy "
                        "stays on port 8000. Needs a cluster where Serve is not running yet, or runs with it")
    p.set_defaults(func=_cmd_serve_run)

    p = sub.add_parser("demo", help="run the chain on the sample corpora with tiny models")
    p.add_argument("--workdir", default="demo_out", help="where the demo writes everything (default: demo_out)")
    p.set_defaults(func=_cmd_demo)

    from artray.submit import add_parsers as add_submit_parsers  # `artray submit`, `artray jobs`

    add_submit_parsers(sub)
    return parser


def _add_ray_arguments(p: argparse.ArgumentParser) -> None:
    """--address and --fresh-ray: where a command that runs on Ray gets its cluster."""
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else this user's running "
                   "cluster/start-local.sh cluster, else a private local one)")
    p.add_argument("--fresh-ray", action="store_true",
                   help="start a private local Ray even when a cluster/start-local.sh cluster is running "
                        "(same as ARTRAY_FRESH_RAY=1)")


def _address_in(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--address" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--address="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    from artray.runtime import prepare_client_env

    prepare_client_env(_address_in(list(sys.argv[1:] if argv is None else argv)))  # before anything imports Ray
    args = build_parser().parse_args(argv)
    if getattr(args, "fresh_ray", False):
        from artray.runtime import FRESH_ENV

        os.environ[FRESH_ENV] = "1"
    from artray.console import setup_cli_logging

    setup_cli_logging(args.verbose)
    from artray.errors import UserError

    try:
        return args.func(args)
    except UserError as exc:
        print(f"artray: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
