"""The search app on this machine: `artray serve run`, and `serve run` of a config with overrides.

`serve_run` is `artray serve run <config>`: Ray Serve's own `serve run`, in this process, on a Ray
started the artray way (`artray.runtime.init_ray`: $RAY_ADDRESS / --address, else a local cluster
whose every port listens on 127.0.0.1). Ray's plain ``serve run <config>`` on a machine with no
cluster starts one itself, with Ray's defaults: GCS, raylet, replicas and agents on every interface.

`ServeProcess` starts
``serve run <config>`` as a subprocess attached to the current Ray cluster — exactly
what a user runs — and waits until ``/healthz`` answers and every deployment of the app runs
(``/healthz`` is the ingress alone; in the split layout model replicas may still be loading). Tests, bench/serve.py
and the demo use it with the tiny indexes of `artray.scaffold.demo_indexes`; `stop` also
removes its temp folder. With a config that turns Serve's direct ingress on (`artray.serve.direct.enable`), it
also waits for the ingress replicas' own ports: ``direct_urls``.
"""

from __future__ import annotations

import copy
import http.client
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from artray.serve import direct

logger = logging.getLogger(__name__)

TINY_CONFIG = Path(__file__).resolve().parents[2] / "serve_configs" / "retrieval-tiny.yaml"


SPLIT_MODEL_DEPLOYMENT = {"max_ongoing_requests": 32, "ray_actor_options": {"num_cpus": 0.25}}


def serve_config(indexes: dict[str, str], port: int, template: Path = TINY_CONFIG, **args) -> dict:
    """The tiny Serve config for the models in `indexes` (name → index path), on this HTTP port, with
    `args` merged into the app's args. With ``layout="split"`` each model gets its ``model-<name>``
    deployment (the ingress's batching, a quarter CPU), which the colocated template has none of."""
    config = yaml.safe_load(template.read_text(encoding="utf-8"))
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"]["models"] = [{**m, "index": indexes[m["name"]]} for m in app["args"]["models"] if m["name"] in indexes]
    app["args"].update(copy.deepcopy(args))
    ingress = next(d for d in app["deployments"] if d["name"] == "ingress")
    app["deployments"] = [ingress]
    if app["args"].get("layout", "colocated") == "split":
        batching = ingress.pop("user_config", None)
        app["deployments"] += [{"name": f"model-{m['name']}", **copy.deepcopy(SPLIT_MODEL_DEPLOYMENT),
                                **({"user_config": batching} if batching else {})} for m in app["args"]["models"]]
    return config


def serve_run(config: str, address: str | None = None, non_blocking: bool = False,
              direct_ingress: bool = False) -> int:
    """`artray serve run <config>`: start or join Ray as `init_ray` does, then run Serve's ``serve run`` on it
    (Ctrl-C shuts the app down, and a local cluster with it).

    `direct_ingress` starts Serve with its direct ingress (`artray.serve.direct`: each ingress replica answers on
    its own port); refused when Serve already runs on the cluster without it. With that flag (or a config whose
    controller_options turn it on) one console line gives the replicas' URLs, again when they change."""
    from artray.errors import UserError
    from artray.runtime import init_ray

    if not Path(config).is_file():
        raise UserError(f"{config} is not a file: give a Serve config (e.g. serve_configs/retrieval.yaml)")
    parsed = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
    init_ray(address)
    in_config = direct.requested(parsed)
    folder, wanted = None, direct_ingress or in_config
    if wanted:
        direct.check_can_enable()
    if direct_ingress and not in_config:
        folder = tempfile.mkdtemp(prefix="artray-serve-")
        config = str(Path(folder) / Path(config).name)
        Path(config).write_text(yaml.safe_dump(direct.enable(parsed), sort_keys=False), encoding="utf-8")
    from ray.serve.scripts import cli

    app = _app_name(parsed)
    args = ["run", config, *(["--non-blocking"] if non_blocking else [])]
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731 - beside Serve's own console lines
    announcer = direct.announce(app, write=say) if wanted and not non_blocking else None
    try:
        cli.main(args, prog_name="artray serve", standalone_mode=False)
    except SystemExit as exc:  # serve run's own exit on Ctrl-C
        return int(exc.code or 0)
    finally:
        if announcer:
            announcer.set()  # no Ray call of its thread outlives this one
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
    if non_blocking and wanted:
        try:
            say(f"[artray] direct ingress: POST {', '.join(u + '/search' for u in direct.wait_for_urls(app, 300))}")
        except TimeoutError as exc:
            say(f"[artray] direct ingress: {exc}; `serve status` says why, and `artray serve run` (blocking) prints "
                "the URLs once the replicas are up")
    return 0


def _app_name(config: dict) -> str:
    """The name of the config's artray application (the first application when none imports artray's)."""
    apps = config.get("applications") or [{}]
    ours = [a for a in apps if str(a.get("import_path", "")).startswith("artray.serve.app:")]
    return (ours or apps)[0].get("name", "default")


def _apps_running() -> bool:
    """Every Serve application RUNNING (all replicas up), as seen from this process's Ray connection;
    True when this process is not connected to Ray (then ``/healthz`` is all there is to go by)."""
    import ray

    if not ray.is_initialized():
        return True
    from ray import serve

    try:
        apps = serve.status().applications
    except Exception:  # noqa: BLE001 - no controller yet, or it is restarting: not running
        # serve.status() keeps the controller handle it first found, for the life of this driver; once
        # that controller is gone (an earlier `serve run` shut Serve down) every call fails. Forget it
        # so the next call finds the new controller by name.
        from ray.serve import context

        context._disconnect()
        return False
    return bool(apps) and all(a.status == "RUNNING" for a in apps.values())


def _ensure_serve_shut_down(address: str, timeout_s: float = 60) -> None:
    """Shut Serve down on the cluster at `address` (a GCS address), if this process is connected to it
    and Serve is still up there.

    `serve run` shuts Serve down on Ctrl-C, but Ray 2.60's ``serve.shutdown()`` first checks the
    controller with a 5 s timeout and, when a loaded controller answers late, logs "nothing to shut
    down" and leaves every replica up, holding its CPUs (seen in CI: the next Ray Data job waited
    forever for a CPU). Here a shutdown is repeated until the controller actor is gone.
    """
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().gcs_address != address:
        return  # not connected to that cluster: nothing here can shut it down
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:
            return  # no controller: Serve is down
        if time.monotonic() > deadline:
            raise RuntimeError(f"Serve is still running {timeout_s:.0f}s after its `serve run` ended; shut it "
                               "down with `serve shutdown -y` (or `ray stop`) before starting more work")
        try:
            serve.shutdown()
        except Exception as exc:  # noqa: BLE001 - a controller dying under us: look again
            logger.info("serve.shutdown() failed (%s); retrying", exc)
        time.sleep(1)


class ServeProcess:
    """``serve run`` of a config (a dict) as a subprocess on the current Ray cluster; a context manager."""

    def __init__(self, config: dict, address: str, env: dict | None = None, timeout_s: float = 240,
                 keep_files: bool = False):
        self.port, self.address = config["http_options"]["port"], address
        self.url = f"http://127.0.0.1:{self.port}"  # Serve's proxy (with direct ingress: on the head node only)
        self.app, self.direct_ingress = _app_name(config), direct.requested(config)
        self.direct_urls: list[str] = []  # with direct ingress: each ingress replica's own http://host:port
        self._dir, self._keep = tempfile.mkdtemp(prefix="artray-serve-"), keep_files  # config + serve.log
        path = Path(self._dir) / "serve.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        self.log = Path(self._dir) / "serve.log"
        serve_cli = Path(sys.executable).with_name("serve")
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen([str(serve_cli), "run", str(path), "--address", address],
                                     stdout=self._out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self._wait(timeout_s)

    def _wait(self, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
                    if r.status == 200 and _apps_running():
                        if self.direct_ingress:
                            self.direct_urls = direct.urls(self.app)
                        if self.direct_urls or not self.direct_ingress:
                            return
            except OSError:
                pass
            except http.client.HTTPException as exc:  # not an HTTP server: another process holds the port
                self.stop()
                raise RuntimeError(f"{self.url} answers, but not as an HTTP server ({type(exc).__name__}): another "
                                   f"process listens on port {self.port}; use another http_options.port") from exc
            time.sleep(0.5)
        tail = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
        self.stop()
        raise RuntimeError(f"the search app did not become healthy on {self.url} within {timeout_s:.0f}s; "
                           f"`serve run` said:\n{tail}")

    def stop(self) -> None:
        """Ctrl-C the `serve run` process (it shuts Serve down), wait for it, and make sure Serve is down."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        try:
            _ensure_serve_shut_down(self.address)
        finally:
            if not self._keep:
                shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
