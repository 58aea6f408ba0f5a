"""Keeping credentials out of what artray writes: manifests, failure rows, job metadata.

Nothing artray records should ever hold a secret, but configs carry URLs (an endpoint with
``user:password@``, a presigned URL with a signature) and error messages quote them. So
before a manifest or a failure row is written: values under credential-named keys become
``***``, URL user-info and signature/token query parameters are masked, and the value of
every credential-named environment variable (``AWS_SECRET_ACCESS_KEY``, ``HF_TOKEN``,
``RAY_AUTH_TOKEN``, …) is masked wherever it appears.
"""

from __future__ import annotations

import os
import re

MASK = "***"
# A name that holds a credential: AWS_SECRET_ACCESS_KEY, HF_TOKEN, api_key, db_password, …
CREDENTIAL_NAME = re.compile(
    r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|ACCESS_KEY|PRIVATE_KEY|SESSION_KEY|CREDENTIALS?)(_|$)")
# Names that point at a credential rather than hold one (auth.token_env, auth.token_file).
_REFERENCE_SUFFIXES = ("_ENV", "_FILE", "_PATH", "_VAR")
_USERINFO = re.compile(r"(?<=://)[^/@\s?#]+@")
_SECRET_QUERY = re.compile(r"(?i)([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|sig|"
                           r"token|access_token|api_key|apikey|key|password)=)[^&#\s\"']+")
_MIN_SECRET_LEN = 8  # shorter env values ("1", "true") are not worth masking and would mangle text


def is_credential_name(name: str) -> bool:
    """True if a config key or environment variable of this name holds a credential."""
    upper = name.upper().replace("-", "_")
    return bool(CREDENTIAL_NAME.search(upper)) and not upper.endswith(_REFERENCE_SUFFIXES)


def _env_secrets() -> list[str]:
    values = {v for k, v in os.environ.items() if is_credential_name(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets: list[str] | None = None) -> str:
    """`text` with URL user-info, secret query parameters and known secret values masked."""
    if not text:
        return text
    text = _SECRET_QUERY.sub(rf"\1{MASK}", _USERINFO.sub(f"{MASK}@", text))
    for value in _env_secrets() if secrets is None else secrets:
        text = text.replace(value, MASK)
    return text


def redact(obj, secrets: list[str] | None = None):
    """A copy of a JSON-like `obj` (dicts, lists, strings) with every credential masked."""
    secrets = _env_secrets() if secrets is None else secrets
    if isinstance(obj, dict):
        return {k: MASK if isinstance(k, str) and is_credential_name(k) and v not in (None, "")
                else redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj
