"""Serve's direct ingress (Ray 2.60, experimental): each ingress replica answers HTTP on its own port, no proxy hop.

``RAY_SERVE_ENABLE_DIRECT_INGRESS=1`` in the Serve controller's environment makes the controller give every
ingress replica a port of its node (30000-31000, `NodePortManager`), which the replica then listens on
with uvicorn at ``http_options.host``; the proxy still runs, on the head node only (port 8000). The
replicas inherit the controller's ``runtime_env`` env vars, so a Serve config's
``controller_options.runtime_env.env_vars`` turns it on for everything that Serve starts — no Ray restart,
but only when the controller is first created: a controller already running keeps its mode.

A replica's port is its own: a replaced replica (crash, redeploy, scale) listens on another port (a released
port is quarantined for minutes), and an ingress replica drains for at least 30 s before it stops
(``RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S``), so a load balancer can drop it first. Clients
find the ports in the controller's target groups (`urls`; the dashboard's ``/api/serve/applications/``
shows the same ``target_groups``).
"""

from __future__ import annotations

import copy
import logging
import threading
import time

logger = logging.getLogger(__name__)

ENV = "RAY_SERVE_ENABLE_DIRECT_INGRESS"
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def enable(config: dict) -> dict:
    """A copy of the Serve config `config` (a dict of the YAML) that starts Serve with direct ingress."""
    config = copy.deepcopy(config)
    options = config.setdefault("controller_options", {}) or {}
    config["controller_options"] = options
    runtime_env = options.setdefault("runtime_env", {}) or {}
    options["runtime_env"] = runtime_env
    runtime_env.setdefault("env_vars", {})[ENV] = "1"
    return config


def requested(config: dict) -> bool:
    """True when the Serve config turns direct ingress on (its controller_options env vars)."""
    env = ((config.get("controller_options") or {}).get("runtime_env") or {}).get("env_vars") or {}
    return str(env.get(ENV, "0")) == "1"


def _controller():
    """The running Serve controller actor, or None when Serve is not running on this cluster."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return None


def _enabled_in(controller) -> bool:
    import ray

    def read(_self) -> bool:
        from ray.serve._private import constants

        return bool(constants.RAY_SERVE_ENABLE_DIRECT_INGRESS)

    return bool(ray.get(controller.__ray_call__.remote(read), timeout=30))


def running_mode() -> bool | None:
    """Whether the Serve controller on the connected cluster runs direct ingress; None when Serve is not running."""
    controller = _controller()
    return None if controller is None else _enabled_in(controller)


def check_can_enable() -> None:
    """Raise a UserError when Serve already runs on the connected cluster without direct ingress (a running
    controller keeps its mode: the config's controller_options would be ignored)."""
    from artray.errors import UserError

    if running_mode() is False:
        raise UserError("--direct-ingress: Serve is already running on this Ray cluster without direct ingress, and a "
                        "running Serve controller keeps its mode. Shut it down first (`serve shutdown -y`; its apps "
                        f"stop), or start the cluster with {ENV}=1 in the environment of `ray start` on every node, "
                        "or drop --direct-ingress to serve through the proxy (port 8000)")


def replicas(app: str = "retrieval") -> dict[str, str]:
    """``http://host:port`` → replica actor name, for each running ingress replica of `app` that listens on its own
    port; {} when direct ingress is off or no replica has its port yet. The host is ``http_options.host`` (the
    address the replicas bind) unless that is every interface, then the replica's node address."""
    import ray

    controller = _controller()
    if controller is None:
        return {}
    details = ray.get(controller.get_serve_instance_details.remote(), timeout=30)
    host = (details.get("http_options") or {}).get("host", "127.0.0.1") or ""
    found = {}
    for group in details.get("target_groups") or []:
        if group.get("app_name") != app or str(group.get("protocol")).upper().rsplit(".", 1)[-1] != "HTTP":
            continue
        for target in group.get("targets") or []:
            if not str(target.get("name", "")).startswith("SERVE_REPLICA::"):
                continue  # the proxy (no replica is up yet, or direct ingress is off)
            ip = target["ip"] if host in WILDCARD_HOSTS else host
            found[f"http://{'[' + ip + ']' if ':' in ip else ip}:{target['port']}"] = target["name"]
    return found


def urls(app: str = "retrieval") -> list[str]:
    """The URLs of `replicas(app)`, sorted."""
    return sorted(replicas(app))


def wait_for_urls(app: str = "retrieval", timeout_s: float = 120) -> list[str]:
    """`urls(app)` once at least one replica listens on its own port; raises TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = urls(app)
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"no ingress replica of {app!r} listens on its own port after {timeout_s:.0f}s")
        time.sleep(0.5)


def announce(app: str = "retrieval", every_s: float = 2.0, write=print) -> threading.Event:
    """Start a daemon thread that writes one line with the direct URLs of `app` whenever they change (first when
    its replicas are up; again when a replaced replica comes back on another port). It ends when Serve's controller
    turns out to run without direct ingress, or when the returned event is set."""
    stop = threading.Event()

    def watch() -> None:
        shown, mode = [], None
        while not stop.is_set():
            try:
                mode = mode or running_mode()  # a (restarted) controller keeps its mode
                if mode is False:
                    return  # Serve runs through its proxy: nothing to announce
                found = urls(app) if mode else []
            except Exception as exc:  # noqa: BLE001 - a controller starting or restarting: look again
                logger.debug("direct ingress urls: %s", exc)
                found = shown
            if found and found != shown and not stop.is_set():
                write(f"[artray] direct ingress: POST {', '.join(u + '/search' for u in found)} (each ingress "
                      "replica on its own port, no proxy; a replaced replica comes back on another port and this "
                      "line is printed again)")
                shown = found
            stop.wait(every_s)

    threading.Thread(target=watch, name="artray-direct-ingress-urls", daemon=True).start()
    return stop
