"""Connecting to Ray the same way from the CLI, `ray job submit` entrypoints and tests."""

from __future__ import annotations

import os
import random
import socket
import sys

BIND_ENV = "ARTRAY_BIND"  # address a local cluster listens on; default loopback
# Ray's switch for single-machine clusters (its default on macOS/Windows): with it off, Ray takes
# 127.0.0.1 as the node address, and its gRPC servers (GCS, raylet, workers, agents) then listen
# on loopback only instead of on every interface.
_RAY_MULTI_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_IN_RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job manager for a submitted job's driver


def is_loopback(host: str) -> bool:
    """True for 127.x.x.x, ::1 and localhost."""
    return host in ("localhost", "::1") or host.startswith("127.")


def _loopback_only() -> None:
    """Make the Ray cluster this process starts single-machine: every port on 127.0.0.1."""
    os.environ[_RAY_MULTI_NODE_ENV] = "0"  # the processes Ray spawns read it at import
    from ray._private import ray_constants

    if hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):  # this process imported Ray already
        ray_constants.ENABLE_RAY_CLUSTER = False


def worker_env() -> dict[str, str]:
    """artray settings the driver's environment must hand to every Ray worker (the pickle opt-in)."""
    from artray.models.weights import ENV as ALLOW_PICKLE

    return {ALLOW_PICKLE: os.environ[ALLOW_PICKLE]} if os.environ.get(ALLOW_PICKLE) else {}


def init_ray(address: str | None = None) -> None:
    """Attach to the cluster at `address` / $RAY_ADDRESS, else join this user's running local cluster
    (cluster/start-local.sh), else start a private one that listens on 127.0.0.1.

    A job submitted with `ray job submit` already has RAY_ADDRESS set and joins its cluster.
    Joining a running head skips Ray's start-up and shutdown (bench/RESULTS.md "Fixed start-up"); the
    console says which cluster was joined, and ``ARTRAY_FRESH_RAY=1`` (`--fresh-ray`) starts a private
    one instead (tests set it: they never join a stray head). A private cluster opens no dashboard and
    binds every Ray port to loopback, so nothing listens beyond this machine; ``ARTRAY_BIND=<address of
    this machine>`` makes it listen there instead (Ray then binds its gRPC ports on every interface: a
    trusted network only, token auth stays on). `worker_env` travels to the workers as the job's
    runtime_env, with what a same-machine cluster's workers need to see this driver's files and code.
    """
    import ray

    from artray.console import quiet_ray_console, quiet_ray_init, ray_init_kwargs

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    joined_local = None
    if not address and not fresh_ray_requested():
        joined_local = joinable_local_cluster()
        if joined_local:
            address = joined_local["RAY_ADDRESS"]
            for key in ("RAY_AUTH_MODE", _RAY_MULTI_NODE_ENV):  # what `source client.env` would have set
                if joined_local.get(key) and not os.environ.get(key):
                    os.environ[key] = joined_local[key]
    kwargs: dict = {"logging_level": "WARNING", **ray_init_kwargs()}
    env = worker_env()
    if address and _is_loopback_address(address) and _IN_RAY_JOB_ENV not in os.environ:
        # a running head's workers start in its folder, with its PYTHONPATH: say where this driver's are
        env.update(same_machine_worker_env(joined_local or _client_env_of(address)))
    if env and _IN_RAY_JOB_ENV not in os.environ:  # a submitted job has it in its runtime_env already
        kwargs["runtime_env"] = {"env_vars": env}
        if DRIVER_CWD_ENV in env:
            kwargs["runtime_env"]["worker_process_setup_hook"] = "artray.runtime.enter_driver_cwd"
    if address:
        address = _cluster_address(address)
    else:
        bind = os.environ.get(BIND_ENV, "").strip() or "127.0.0.1"
        if is_loopback(bind):
            _loopback_only()
        else:
            kwargs["_node_ip_address"] = bind
        kwargs["include_dashboard"] = False
        _hint_running_cluster()
    try:
        with quiet_ray_init():
            ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        if "InvalidAuthToken" in str(exc) or "AuthenticationError" in repr(exc.__cause__):
            from artray.errors import UserError

            raise UserError(f"the Ray cluster at {address} refused this client's token: set RAY_AUTH_MODE=token and "
                            "the cluster's token (RAY_AUTH_TOKEN, or ~/.ray/auth_token) before Ray is imported "
                            "(`source <cluster dir>/client.env` after cluster/start-local.sh does both)") from exc
        raise
    if joined_local:
        sys.stderr.write(f"[artray] joined the running local Ray cluster at {address} ({joined_local['dir']}, "
                         "cluster/start-local.sh): no Ray start-up; --fresh-ray or ARTRAY_FRESH_RAY=1 starts a private "
                         "one\n")
    quiet_ray_console()


FRESH_ENV = "ARTRAY_FRESH_RAY"  # "1": never join a running local cluster by default (tests, benchmarks, --fresh-ray)
DRIVER_CWD_ENV = "ARTRAY_DRIVER_CWD"  # the driver's folder, where a joined cluster's workers resolve relative paths


def fresh_ray_requested() -> bool:
    return os.environ.get(FRESH_ENV, "").strip().lower() not in ("", "0", "false", "no")


def same_machine_worker_env(head: dict[str, str] | None = None) -> dict[str, str]:
    """Env vars for the workers of a cluster on this machine that this process did not start: this driver's
    folder (relative local paths in a config mean the same file in a worker, see `enter_driver_cwd`) and
    PYTHONPATH (the workers import the artray this driver runs), each only where it differs from what the
    head's client.env (`head`) says its workers have. Any env var makes the job's workers a runtime_env of
    their own, so none of the head's idle workers serves it: measured, +3.6 s and +7 CPU-s for an ingest of
    1000 images on 2 cores (bench/RESULTS.md "Fixed start-up")."""
    head = head or {}
    env = {}
    if head.get("cwd") is None or os.path.realpath(head["cwd"]) != os.path.realpath(os.getcwd()):
        env[DRIVER_CWD_ENV] = os.getcwd()
    if head.get("pythonpath") is None or head["pythonpath"] != os.environ.get("PYTHONPATH", ""):
        env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    return env


def _client_env_of(address: str) -> dict[str, str] | None:
    """The client.env settings of the running cluster/start-local.sh cluster at `address`, if it is one."""
    for env_file in running_local_clusters():
        settings = read_client_env(env_file)
        if settings.get("RAY_ADDRESS") == address and os.stat(env_file).st_uid == os.getuid():
            return settings
    return None


def enter_driver_cwd() -> None:
    """Ray's worker_process_setup_hook for a joined same-machine cluster: work in the driver's folder."""
    folder = os.environ.get(DRIVER_CWD_ENV)
    if folder and os.path.isdir(folder):
        os.chdir(folder)


LOCAL_CLUSTER_ENVS = "/tmp/artray-ray-*/client.env"  # cluster/start-local.sh's default ARTRAY_CLUSTER_DIR


def read_client_env(env_file: str) -> dict[str, str]:
    """The `export KEY=VALUE` settings of a client.env that cluster/start-local.sh wrote (comments dropped),
    plus ``dir`` (its folder) and, when it says, ``python_prefix``, ``cwd`` and ``pythonpath``: sys.prefix, folder and
    PYTHONPATH of the head's workers."""
    out = {"dir": os.path.dirname(env_file)}
    with open(env_file, encoding="utf-8") as f:
        for line in f:
            if line.startswith("export "):
                key, _, value = line.removeprefix("export ").split("#", 1)[0].strip().partition("=")
                out[key] = value
            else:
                for key in ("python-prefix", "cwd", "pythonpath"):  # what the head's workers run with
                    if line.startswith(f"# {key}: ") or line.rstrip("\n") == f"# {key}:":
                        out[key.replace("-", "_")] = line.rstrip("\n").partition(":")[2].removeprefix(" ")
    return out


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return False
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=0.2):
            return True
    except OSError:
        return False


def running_local_clusters(pattern: str | None = None) -> list[str]:
    """client.env files of clusters cluster/start-local.sh started on this machine whose head still listens
    (those of $ARTRAY_CLUSTER_DIR, start-local.sh's folder setting, when it is set)."""
    import glob

    if pattern is None and os.environ.get("ARTRAY_CLUSTER_DIR"):
        pattern = os.path.join(os.environ["ARTRAY_CLUSTER_DIR"], "client.env")
    found = []
    for env_file in sorted(glob.glob(pattern or LOCAL_CLUSTER_ENVS)):
        try:
            settings = read_client_env(env_file)
        except OSError:
            continue
        if _listening(settings.get("RAY_ADDRESS", "")):
            found.append(env_file)
    return found


def _why_not_joinable(env_file: str, settings: dict[str, str]) -> str | None:
    """None when this process may join the cluster of `env_file` by default, else the reason it may not."""
    if os.stat(env_file).st_uid != os.getuid():
        return "another user's cluster"
    if not _is_loopback_address(settings.get("RAY_ADDRESS", "")):
        return "it listens beyond this machine (ARTRAY_BIND)"
    prefix = settings.get("python_prefix")
    if not prefix or os.path.realpath(prefix) != os.path.realpath(sys.prefix):
        return f"its workers run another Python environment ({prefix or 'unknown'}; this one is {sys.prefix})"
    return None


def joinable_local_cluster(pattern: str | None = None) -> dict[str, str] | None:
    """The client settings of a running cluster/start-local.sh cluster this process may join by default: this
    user's, loopback-only, run by this Python (its workers then import the same packages); else None."""
    for env_file in running_local_clusters(pattern):
        settings = read_client_env(env_file)
        if _why_not_joinable(env_file, settings) is None:
            return settings
    return None


def _hint_running_cluster() -> None:
    """Say so when a local cluster (cluster/start-local.sh) is running but was not joined: joining it skips Ray's
    start-up (seconds per stage) instead of starting a private cluster beside it."""
    if fresh_ray_requested():
        return
    running = running_local_clusters()
    if running:
        reason = _why_not_joinable(running[0], read_client_env(running[0]))
        sys.stderr.write(f"[artray] a local Ray cluster is running ({running[0]}"
                         + (f"; not joined: {reason}" if reason else "")
                         + f"): `source {running[0]}` to run on it and skip Ray's start-up; starting a private one "
                         "for this run\n")


def _cluster_address(address: str) -> str:
    """`address` checked and prepared for `ray.init`: a job-API URL is refused with the fix, and a loopback
    head is reached the way cluster/start-local.sh's client.env does it (Ray would otherwise dial this
    machine's own address, where a loopback-only GCS does not listen, and hang; and would retry for a
    minute without sending the token it has)."""
    from artray.errors import UserError

    if address.startswith(("http://", "https://")):
        raise UserError(
            f"Ray address {address} is the dashboard / job API, not a cluster a stage can join: give the GCS "
            "address (host:6379; `source <cluster dir>/client.env` after cluster/start-local.sh sets RAY_ADDRESS "
            "to it), or unset RAY_ADDRESS to run on a private local Ray. `artray submit` and `ray job submit` read "
            "the job API's URL from RAY_API_SERVER_ADDRESS")
    prepare_client_env(address)
    if os.environ.get(_RAY_MULTI_NODE_ENV) == "0":  # Ray is imported already: its copy of the setting too
        _loopback_only()
    match_auth_mode(address)
    return address


def _is_loopback_address(address: str) -> bool:
    return is_loopback(address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]"))


def prepare_client_env(address: str | None = None) -> None:
    """Before Ray is imported: a loopback head at `address` / $RAY_ADDRESS is dialled on 127.0.0.1
    (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, as cluster/start-local.sh's client.env sets it), which Ray reads when
    it is imported; the CLI calls this first thing. The token mode is matched to the cluster later, when
    `init_ray` joins it (`match_auth_mode`)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address.startswith(("http://", "https://")):
        return
    if _is_loopback_address(address):
        os.environ.setdefault(_RAY_MULTI_NODE_ENV, "0")


def _has_token() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or os.path.exists(os.path.expanduser("~/.ray/auth_token")))


# A GCS method every Ray cluster serves; the request is an empty message (b"").
_PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"


def cluster_auth_mode(address: str, timeout_s: float = 5.0) -> str | None:
    """"token" when the GCS at `address` refuses a call that carries no token, "disabled" when it answers it,
    None when it cannot be asked (not reachable in `timeout_s`)."""
    import grpc

    with grpc.insecure_channel(address.split("://", 1)[-1]) as channel:
        try:
            channel.unary_unary(_PROBE_METHOD)(b"", timeout=timeout_s)
        except grpc.RpcError as exc:
            return "token" if exc.code() == grpc.StatusCode.UNAUTHENTICATED else None
    return "disabled"


def match_auth_mode(address: str) -> None:
    """Make this driver send a token exactly when the cluster at `address` wants one, unless RAY_AUTH_MODE says.

    A driver in token mode cannot join a cluster without token auth (the cluster's processes send no token to
    the driver's own servers), and one without a token retries for a minute against a cluster with it, so the
    cluster is asked first (one gRPC call without a token)."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    mode = cluster_auth_mode(address)
    if mode == "token" or (mode is None and _has_token()):  # not reachable: ray.init reports that itself
        if mode == "token" and not _has_token():
            from artray.errors import UserError

            raise UserError(f"the Ray cluster at {address} requires token authentication and this shell has no "
                            "token: set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH, or the file ~/.ray/auth_token) to the "
                            "cluster's token (`source <cluster dir>/client.env` after cluster/start-local.sh)")
        os.environ["RAY_AUTH_MODE"] = "token"
    elif mode == "disabled":
        os.environ["RAY_AUTH_MODE"] = "disabled"
    if "ray" in sys.modules:  # Ray read its settings at import: refresh them, as Ray does when it turns auth on
        from ray._raylet import Config

        Config.initialize("")


# Ports for artray's own local servers: below Linux's ephemeral range (32768-60999), where every process
# that binds port 0 (Ray's gRPC servers among them) lands, and above Ray's worker ports (10002-19999). A
# port drawn from the ephemeral range can be taken by a Ray process between the draw and the bind (seen:
# `serve run` then probed a gRPC server on it).
PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (artray's local servers never bind another address)."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # the range is crowded: any port the kernel gives
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
