"""`artray search`: query a running search API from the command line (standard library only).

    artray search --url http://127.0.0.1:8000 --text "a red circle" --k 5
    artray search --image painting.jpg --target image --model cnclip

The token, when the API has auth on, comes from an environment variable (never a flag,
so it stays out of shell history and process lists).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Literal

from pydantic import Field

from artray.config import JobConfig
from artray.errors import UserError


class SearchClientError(UserError, RuntimeError):
    """The API refused the query or could not be reached; the message is the API's."""


class SearchClientConfig(JobConfig):
    """Config of `artray search`."""

    url: str = Field("http://127.0.0.1:8000", description="base URL of the search API")
    text: str | None = Field(None, description="text query")
    image: str | None = Field(None, description="path of an image file to query with")
    artwork_id: str | None = Field(None, description="query with an artwork of the gallery")
    k: int = Field(10, ge=1)
    model: str | None = Field(None, description="model name (GET /models); default: the API's default")
    target: Literal["image", "text"] | None = Field(None, description="what to return (default: the other modality)")
    token_env: str = Field("ARTRAY_API_TOKEN", description="environment variable holding the API token, if any")
    timeout_s: float = Field(30.0, gt=0)


def search(cfg: SearchClientConfig) -> dict:
    """POST one query to ``/search`` and return the parsed answer."""
    body: dict = {"k": cfg.k}
    for key in ("text", "artwork_id", "model", "target"):
        if getattr(cfg, key) is not None:
            body[key] = getattr(cfg, key)
    if cfg.image is not None:
        body["image"] = base64.b64encode(Path(cfg.image).read_bytes()).decode("ascii")
    headers = {"Content-Type": "application/json"}
    if os.environ.get(cfg.token_env):
        headers["Authorization"] = f"Bearer {os.environ[cfg.token_env]}"
    request = urllib.request.Request(cfg.url.rstrip("/") + "/search", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout_s) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", "")
        except ValueError:
            detail = exc.reason
        raise SearchClientError(f"{cfg.url} answered {exc.code}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise SearchClientError(f"cannot reach {cfg.url} ({exc.reason}); is `serve run` up?") from exc


def format_results(answer: dict) -> str:
    """One line per hit: rank, score, id and a title or text."""
    head = (f"[search] {answer['model']}: {answer['query']} → {answer['target']}, "
            f"{len(answer['results'])} results in {answer['took_ms']:.1f} ms")
    lines = [head]
    for hit in answer["results"]:
        label = hit.get("title") or hit.get("text") or ""
        lines.append(f"{hit['rank']:>3}  {hit['score']:+.4f}  {hit['id']}  {label[:90]}")
    return "\n".join(lines)


def run_search(cfg: SearchClientConfig) -> dict:
    """`artray search`: print the API's answer to one query, a line per hit."""
    answer = search(cfg)
    print(format_results(answer))
    return answer
