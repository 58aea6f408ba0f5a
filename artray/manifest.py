"""The `_manifest.json` every job writes last: config, versions, counts, timing."""

from __future__ import annotations

import platform
import socket
import time
from importlib import metadata

from artray import __version__
from artray.redact import redact

_PACKAGES = ("torch", "ray", "pyarrow", "transformers", "diffusers", "open_clip_torch", "deepspeed", "Pillow")


def package_versions() -> dict[str, str]:
    versions = {"artray": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def build_manifest(
    stage: str,
    config: dict,
    counts: dict,
    started: float,
    **extra,
) -> dict:
    """A manifest dict for a finished stage; `extra` adds stage-specific sections. Credentials in the
    config (URL user-info, signed URLs, secret-named keys, secret env values) are masked."""
    finished = time.time()
    return redact({
        "stage": stage,
        "config": config,
        "counts": counts,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(finished)),
        "wall_s": round(finished - started, 3),
        "versions": package_versions(),
        "host": socket.gethostname(),
        **extra,
    })
