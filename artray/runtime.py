"""Connecting to Ray the same way from the CLI, `ray job submit` entrypoints and tests."""

from __future__ import annotations

import os
import random
import socket

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
    """Attach to the cluster at `address` / $RAY_ADDRESS, or start a local one that listens on 127.0.0.1.

    A job submitted with `ray job submit` already has RAY_ADDRESS set and joins its cluster.
    A local cluster started here opens no dashboard and binds every Ray port to loopback, so
    nothing listens beyond this machine; ``ARTRAY_BIND=<address of this machine>`` makes it
    listen there instead (Ray then binds its gRPC ports on every interface: a trusted network
    only, token auth stays on). `worker_env` travels to the workers as the job's runtime_env.
    A stage joins a running cluster only when told (RAY_ADDRESS, `--address`); one that
    cluster/start-local.sh started is named in a hint, never joined by surprise.
    """
    import ray

    from artray.console import quiet_ray_console, quiet_ray_init, ray_init_kwargs

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"logging_level": "WARNING", **ray_init_kwargs()}
    env = worker_env()
    if env and _IN_RAY_JOB_ENV not in os.environ:  # a submitted job has it in its runtime_env already
        # (also without an address: a plain ray.init() joins a `ray start` cluster when there is one)
        kwargs["runtime_env"] = {"env_vars": env}
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
    quiet_ray_console()


LOCAL_CLUSTER_ENVS = "/tmp/artray-ray-*/client.env"  # cluster/start-local.sh's default ARTRAY_CLUSTER_DIR


def running_local_clusters(pattern: str | None = None) -> list[str]:
    """client.env files of clusters cluster/start-local.sh started on this machine whose head still listens."""
    import glob

    found = []
    for env_file in sorted(glob.glob(pattern or LOCAL_CLUSTER_ENVS)):
        try:
            with open(env_file, encoding="utf-8") as f:
                line = next((ln for ln in f if ln.startswith("export RAY_ADDRESS=")), "")
        except OSError:
            continue
        host, _, port = line.split("=", 1)[-1].split("#", 1)[0].strip().rpartition(":")
        if not port.isdigit():
            continue
        try:
            with socket.create_connection((host, int(port)), timeout=0.2):
                found.append(env_file)
        except OSError:
            continue
    return found


def _hint_running_cluster() -> None:
    """Say so when a local cluster (cluster/start-local.sh) is running but this shell is not pointed at it:
    joining it skips Ray's start-up (seconds per stage) instead of starting a private cluster beside it."""
    running = running_local_clusters()
    if running:
        import sys

        sys.stderr.write(f"[artray] a local Ray cluster is running: `source {running[0]}` to run on it and skip "
                         "Ray's start-up; starting a private one for this run\n")


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
    return address


def _is_loopback_address(address: str) -> bool:
    return is_loopback(address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]"))


def prepare_client_env(address: str | None = None) -> None:
    """Before Ray is imported: the settings a client of the cluster at `address` / $RAY_ADDRESS needs, when the
    shell has not set them (what cluster/start-local.sh's client.env sets): a loopback head is dialled on
    127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), and a token this shell has is sent (RAY_AUTH_MODE=token).
    Ray reads both when it is imported; the CLI calls this first thing."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address.startswith(("http://", "https://")):
        return
    if _is_loopback_address(address):
        os.environ.setdefault(_RAY_MULTI_NODE_ENV, "0")
    if not os.environ.get("RAY_AUTH_MODE") and (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                                                or os.path.exists(os.path.expanduser("~/.ray/auth_token"))):
        os.environ["RAY_AUTH_MODE"] = "token"


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
