"""`artray submit <stage>` and `artray jobs …`: run stages on a remote Ray cluster through its Jobs API.

A submitted job is exactly `ray job submit --working-dir . -- python jobs/<stage>.py --config …` (the
stages and their entrypoints are the jobs table's, `artray.jobs`):
the repository (minus the excludes in jobs/runtime_env.yaml) is uploaded as the job's
`working_dir`, and the entrypoint runs on the head with the cluster's own Python.

Token authentication (Ray 2.60): when the cluster requires a token, the client sends it as
`Authorization: Bearer …`. It is read, like Ray's own CLI does, from `$RAY_AUTH_TOKEN`, then the
file at `$RAY_AUTH_TOKEN_PATH`, then `~/.ray/auth_token`; `RAY_AUTH_MODE=disabled` sends none.
The token is never printed, logged, or put into the job's runtime_env.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
import tomllib
import uuid
from pathlib import Path
from urllib.parse import urlparse

import yaml

from artray.errors import UserError
from artray.jobs import submittable
from artray.redact import is_credential_name

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
DEFAULT_RUNTIME_ENV = "jobs/runtime_env.yaml"
# Never uploaded, whatever the runtime_env file says (Ray also honours .gitignore).
ALWAYS_EXCLUDE = [".git", ".venv", "demo_out", ".torch_extensions", "__pycache__", "*.egg-info",
                  ".pytest_cache", "tests", "bench", ".whl", ".gl"]
# Ray CLI (`pip install ray`) is not artray's dependency set on a stock image: installed from the pins.
_NOT_INSTALLED_BY_JOB = ("ray",)


# --- connection -----------------------------------------------------------------------------

def read_auth_token() -> str | None:
    """The Ray auth token the client should send, or None (never printed or logged)."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        return None
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


def resolve_address(address: str | None) -> str:
    """--address, else $RAY_API_SERVER_ADDRESS / $RAY_ADDRESS (as Ray's client), else the local head."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    if "://" not in address:
        address = "http://" + address
    return address


def _is_loopback(address: str) -> bool:
    host = urlparse(address).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def make_client(address: str | None = None):
    """A `JobSubmissionClient` for the cluster, with the auth header when a token is available."""
    from ray.job_submission import JobSubmissionClient

    address = resolve_address(address)
    headers = {}
    token = read_auth_token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
        if urlparse(address).scheme == "http" and not _is_loopback(address):
            print(f"artray: warning: sending the Ray auth token over plain HTTP to {urlparse(address).hostname}; "
                  "use an SSH tunnel / kubectl port-forward or an HTTPS proxy", file=sys.stderr)
    try:
        return JobSubmissionClient(address, headers=headers or None)
    except Exception as exc:  # connection refused, 401/403, wrong scheme …
        detail = _scrub(str(exc), token)
        if _auth_refused(detail):
            if token:
                raise UserError(f"the Ray job API at {address} refused the auth token ({_first_line(detail)}): this "
                                "shell's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) is not the "
                                "cluster's; use the cluster's token") from exc
            raise UserError(f"the Ray job API at {address} needs an auth token and this shell sends none: set "
                            "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or the token file ~/.ray/auth_token) to the "
                            "cluster's token") from exc
        raise UserError(f"cannot reach the Ray job API at {address}: {detail}") from exc


def _auth_refused(message: str) -> bool:
    lowered = message.lower()
    return any(s in lowered for s in ("401", "403", "unauthorized", "unauthenticated", "forbidden",
                                      "invalid auth", "authentication"))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else ""


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


# --- runtime_env ----------------------------------------------------------------------------

def pinned_requirements(pyproject: Path) -> list[str]:
    """artray's own pinned dependencies from pyproject.toml, minus Ray (the cluster's own)."""
    deps = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    return [d for d in deps if not d.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower()
            in _NOT_INSTALLED_BY_JOB]


def build_runtime_env(working_dir: str | Path = ".", runtime_env_file: str | None = DEFAULT_RUNTIME_ENV,
                      install_deps: bool = False) -> dict:
    """The job's runtime_env: the YAML file's, with `working_dir` set, the excludes ensured and this shell's
    ``ARTRAY_ALLOW_PICKLE`` passed on."""
    from artray.runtime import worker_env  # here: `artray --help` builds this module's parsers, runtime may grow

    working_dir = Path(working_dir)
    env: dict = {}
    if runtime_env_file:
        path = Path(runtime_env_file)
        if not path.is_absolute() and not path.exists():
            path = working_dir / path
        if not path.exists():
            raise UserError(f"runtime_env file {runtime_env_file} does not exist")
        env = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(env, dict):
            raise UserError(f"runtime_env file {runtime_env_file} must hold a mapping")
    env["working_dir"] = str(working_dir)
    if worker_env():  # this shell's pickle opt-in (ARTRAY_ALLOW_PICKLE) goes with the job; the file's wins
        env["env_vars"] = {**worker_env(), **(env.get("env_vars") or {})}
    env["excludes"] = list(dict.fromkeys([*(env.get("excludes") or []), *ALWAYS_EXCLUDE]))
    if install_deps:
        reqs = pinned_requirements(working_dir / "pyproject.toml")
        pip = env.get("pip") or {}
        if isinstance(pip, list):
            pip = {"packages": pip}
        pip["packages"] = list(dict.fromkeys([*reqs, *(pip.get("packages") or [])]))
        pip.setdefault("pip_check", False)
        env["pip"] = pip
    for name in (env.get("env_vars") or {}):
        if is_credential_name(name):  # the runtime_env is stored in the job table, readable by whoever lists jobs
            raise UserError(f"runtime_env env_vars.{name}: credentials do not belong in a runtime_env "
                                "(they are visible to everyone who can list jobs); use instance profiles / IRSA")
    return env


def build_entrypoint(stage: str, config: str | None, working_dir: str | Path = ".",
                     overrides: list[str] = (), extra: list[str] = ()) -> str:
    """`python jobs/<stage>.py [sub-command] --config <path relative to working_dir> [--set …] …`."""
    stages = submittable()
    if stage not in stages:
        raise UserError(f"unknown stage {stage!r}; use one of {sorted(stages)}")
    argv = ["python", *stages[stage].entrypoint]
    if config:
        cfg = Path(config)
        if not cfg.exists():
            raise UserError(f"config file {config} does not exist")
        wd = Path(working_dir).resolve()
        try:
            rel = cfg.resolve().relative_to(wd)
        except ValueError as exc:
            raise UserError(f"config file {config} is outside the working dir {working_dir}: the job could not "
                            "read it on the cluster; put it under the working dir (e.g. jobs/configs/)") from exc
        argv += ["--config", rel.as_posix()]
    for pair in overrides:
        argv += ["--set", pair]
    argv += list(extra)
    return shlex.join(argv)


# --- submit / follow ------------------------------------------------------------------------

# Config keys that name where a job writes: a relative path there is always a local path, never a hub id.
OUTPUT_KEYS = ("output", "dest")


def _relative_paths(data, key: str = "") -> list[tuple[str, str, bool]]:
    """(dotted key, value, inside a list) of every value of a job config that is a relative path on this
    machine: an output key's value, or any value naming a file or folder that exists here."""
    found = []
    if isinstance(data, dict):
        for k, v in data.items():
            found += _relative_paths(v, f"{key}.{k}" if key else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found += [(k, val, True) for k, val, _ in _relative_paths(v, f"{key}[{i}]")]
    elif isinstance(data, str) and data.strip() and "://" not in data and not data.startswith(("hf-hub:", "local-dir:")):
        path = Path(data).expanduser()
        if not path.is_absolute() and (key.rsplit(".", 1)[-1] in OUTPUT_KEYS or path.exists()):
            found.append((key, data, False))
    return found


def resolve_relative_paths(config: str | None, overrides: list[str], address: str) -> list[str]:
    """`overrides` with every relative local path of the job's config made absolute (against the directory
    `artray submit` runs in), when the job runs on this machine; refused with the fix otherwise.

    A submitted job runs inside Ray's unpacked copy of the working dir, which is deleted with the
    cluster: a relative output would be written there and lost, a relative input not found."""
    from artray.config import ConfigError, _merge, parse_overrides

    data: dict = {}
    if config:
        try:
            data = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"config file {config} cannot be read: {exc}") from exc
    try:
        data = _merge(data if isinstance(data, dict) else {}, parse_overrides(list(overrides)))
    except ConfigError as exc:
        raise UserError(str(exc)) from exc
    paths = _relative_paths(data)
    if not paths:
        return list(overrides)
    listed = ", ".join(f"{k}={v}" for k, v, _ in paths)
    if not _is_loopback(address):
        raise UserError(
            f"{listed}: relative paths name files on this machine, but the job runs on the cluster at "
            f"{urlparse(address).hostname}, inside a temporary copy of the working dir that is deleted with the "
            "cluster (an output there is lost, an input is not found). Use s3:// URIs, or absolute paths on "
            "storage every node mounts")
    in_lists = [k for k, _, nested in paths if nested]
    if in_lists:
        raise UserError(f"{', '.join(in_lists)}: relative paths inside a list cannot be resolved for a submitted job; "
                        "write them as absolute paths (or s3:// URIs) in the config")
    resolved = [f"{k}={Path(v).expanduser().resolve()}" for k, v, _ in paths]
    print(f"[submit] relative paths resolved against {Path.cwd()}: "
          + ", ".join(r for r in resolved), file=sys.stderr)
    return [*overrides, *resolved]


def recipe_arguments(name: str | None, corpus: str | None, out: str | None, address: str) -> list[str]:
    """`NAME --corpus URI --out URI` of a submitted recipe, its local paths made absolute for a head on this
    machine and refused for a remote one (as `resolve_relative_paths` does for a stage's config)."""
    if not (name and corpus and out):
        raise UserError("artray submit recipe needs the recipe's name, --corpus and --out (e.g. artray submit "
                        "recipe culti2025 --corpus s3://b/corpora/culti --out s3://b/recipes/culti)")
    found = {k: v for k, v, _ in _relative_paths({"corpus": corpus, "output": out})}
    if found and not _is_loopback(address):
        flags = ", ".join(f"--{'out' if k == 'output' else k} {v}" for k, v in found.items())
        raise UserError(f"{flags}: relative "
                        "paths name files on this machine, but the recipe runs on the cluster at "
                        f"{urlparse(address).hostname}; use s3:// URIs or absolute paths on storage every node mounts")
    corpus, out = (str(Path(v).expanduser().resolve()) if k in found else v
                   for k, v in (("corpus", corpus), ("output", out)))
    return [name, "--corpus", corpus, "--out", out]


def submit(stage: str, config: str | None, *, address: str | None = None, working_dir: str | Path = ".",
           runtime_env_file: str | None = DEFAULT_RUNTIME_ENV, install_deps: bool = False,
           overrides: list[str] = (), extra: list[str] = (), submission_id: str | None = None,
           client=None) -> str:
    """Submit one stage as a Ray job; returns its submission id. Relative local paths in its config are
    made absolute when the cluster is on this machine, and refused otherwise (`resolve_relative_paths`)."""
    overrides = resolve_relative_paths(config, list(overrides),  # before connecting
                                       client.get_address() if client is not None else resolve_address(address))
    entrypoint = build_entrypoint(stage, config, working_dir, overrides, extra)
    runtime_env = build_runtime_env(working_dir, runtime_env_file, install_deps)
    client = client or make_client(address)
    submission_id = submission_id or f"artray-{stage}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=submission_id,
                             metadata={"artray_stage": stage, "artray_config": str(config or "")})


async def _tail(client, job_id: str, out) -> None:
    async for lines in client.tail_job_logs(job_id):
        out.write(lines)
        out.flush()


def wait(client, job_id: str, *, follow: bool = True, out=None, poll_s: float = 1.0) -> int:
    """Stream the job's logs until it ends; 0 if it SUCCEEDED, 1 otherwise (status on stderr)."""
    from ray.job_submission import JobStatus

    out = out or sys.stdout
    if follow:
        try:
            asyncio.run(_tail(client, job_id, out))
        except Exception as exc:  # noqa: BLE001  (any aiohttp/websocket error) the stream dropped: poll instead
            print(f"artray: log stream ended early ({type(exc).__name__}); polling status", file=sys.stderr)
    while True:
        info = client.get_job_info(job_id)
        if info.status.is_terminal():
            break
        time.sleep(poll_s)
    if info.status == JobStatus.SUCCEEDED:
        print(f"[submit] {job_id}: SUCCEEDED", file=sys.stderr)
        return 0
    print(f"[submit] {job_id}: {info.status.value}: {info.message or ''}".rstrip(), file=sys.stderr)
    return 1


# --- CLI ------------------------------------------------------------------------------------

def _cmd_submit(args) -> int:
    # no client yet: submit() checks the config's paths before it connects
    extra = []
    if args.stage == "recipe":
        extra = recipe_arguments(args.recipe, args.corpus, args.out, resolve_address(args.address))
    elif args.recipe or args.corpus or args.out:
        raise UserError("a recipe name, --corpus and --out are for `artray submit recipe` only")
    job_id = submit(args.stage, args.config, address=args.address, working_dir=args.working_dir,
                    runtime_env_file=args.runtime_env, install_deps=args.install_deps, overrides=args.overrides,
                    extra=extra, submission_id=args.job_id)
    print(f"[submit] {args.stage}: submitted {job_id}", file=sys.stderr)
    if not args.wait:
        print(job_id)
        return 0
    try:
        return wait(make_client(args.address), job_id)
    except KeyboardInterrupt:
        print(f"\n[submit] stopped following; the job keeps running. Stop it with: artray jobs stop {job_id}",
              file=sys.stderr)
        return 130


def _cmd_jobs(args) -> int:
    client = make_client(args.address)
    if args.jobs_command == "list":
        jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
        for j in jobs:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "-"
            print(f"{j.submission_id or j.job_id}\t{j.status.value}\t{started}\t{j.entrypoint}")
        return 0
    if args.jobs_command == "status":
        info = client.get_job_info(args.job_id)
        print(f"{args.job_id}\t{info.status.value}\t{info.message or ''}")
        return 0 if info.status.value == "SUCCEEDED" else (0 if not info.status.is_terminal() else 1)
    if args.jobs_command == "logs":
        if args.follow:
            return wait(client, args.job_id)
        sys.stdout.write(client.get_job_logs(args.job_id))
        return 0
    if args.jobs_command == "stop":
        stopped = client.stop_job(args.job_id)
        print(f"[jobs] {args.job_id}: {'stop requested' if stopped else 'already finished'}", file=sys.stderr)
        return 0
    raise UserError(f"unknown jobs command {args.jobs_command}")


def add_parsers(sub) -> None:
    """`artray submit …` and `artray jobs list|status|logs|stop` on the CLI's sub-parsers."""
    addr_help = f"Ray job API (dashboard) address (default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, {DEFAULT_ADDRESS})"
    p = sub.add_parser("submit", help="run a stage as a Ray job on a cluster (Jobs API), optionally following it",
                       description="Submit `python jobs/<stage>.py --config … [--set …]` with the repository as "
                                   "working_dir.")
    p.add_argument("stage", choices=sorted(submittable()))
    p.add_argument("recipe", nargs="?", help="recipe: its name (artray recipe list) or a recipe .yaml under the "
                   "working dir")
    p.add_argument("--config", help="the stage's YAML config, a path under the working dir")
    p.add_argument("--corpus", help="recipe: the artray corpus URI it reads")
    p.add_argument("--out", help="recipe: the URI every step writes under")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed to the stage; repeatable")
    p.add_argument("--address", help=addr_help)
    p.add_argument("--wait", action="store_true", help="stream the logs and exit with the job's status (0 = SUCCEEDED)")
    p.add_argument("--working-dir", default=".", help="uploaded as the job's working_dir (default: .)")
    p.add_argument("--runtime-env", default=DEFAULT_RUNTIME_ENV,
                   help=f"runtime_env YAML (default: {DEFAULT_RUNTIME_ENV}); '' for none")
    p.add_argument("--install-deps", action="store_true",
                   help="also pip-install artray's pinned dependencies in the job (stock rayproject/ray images)")
    p.add_argument("--job-id", help="submission id (default: artray-<stage>-<time>-<random>)")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("jobs", help="list, inspect, follow and stop Ray jobs on a cluster")
    jobs_sub = p.add_subparsers(dest="jobs_command", required=True)
    for name, help_text in (("list", "all jobs: id, status, start time, entrypoint"),
                            ("status", "one job's status and message"), ("logs", "one job's logs"),
                            ("stop", "stop a running job")):
        q = jobs_sub.add_parser(name, help=help_text)
        q.add_argument("--address", help=addr_help)
        if name != "list":
            q.add_argument("job_id")
        if name == "logs":
            q.add_argument("--follow", "-f", action="store_true", help="stream until the job ends; exit with its status")
    p.set_defaults(func=_cmd_jobs)
