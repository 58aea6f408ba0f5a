"""Reading and checking what clients send, so that every bad request is a 4xx with a message.

A request body is read with a byte limit (Content-Length first, then while streaming),
parsed as JSON or multipart/form-data, validated by a pydantic model that forbids
unknown fields, and checked against the app's `Limits`. Images are decoded once here
(``artray.images.probe``: the pixel count is checked from the header, before decoding),
so a corrupt file or a decompression bomb never reaches an encoder replica.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request

from artray import images as imaging
from artray.serve.config import Limits, RetrievalAppConfig
from artray.serve.rerank import Method

Target = Literal["image", "text"]


class ApiError(Exception):
    """A request the app refuses: HTTP status, a short code and a message saying what to change."""

    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class SearchRequest(BaseModel):
    """POST /search: exactly one of `text`, `image` (base64) or `artwork_id`."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    image: str | None = None
    artwork_id: str | None = None
    k: int = 10
    model: str | None = None
    target: Target | None = None  # default: cross-modal (text → images, image/artwork → texts)
    rerank: Method | None = None  # laclip (any model) or itm (BLIP): re-score the top candidates

    @field_validator("k", mode="before")
    @classmethod
    def _k_is_not_a_boolean(cls, value):
        """pydantic's lax mode reads JSON true as 1; a boolean k is a client bug, not a request for one hit."""
        if isinstance(value, bool):
            raise ValueError(f"k must be an integer, not the boolean {str(value).lower()}")
        return value


class EmbedRequest(BaseModel):
    """POST /embed: texts and/or base64 images, embedded by one model."""

    model_config = ConfigDict(extra="forbid")
    texts: list[str] = []
    images: list[str] = []
    model: str | None = None


@dataclass
class SearchQuery:
    kind: Literal["text", "image", "artwork_id"]
    value: str | bytes
    k: int
    model: str
    target: Target
    rerank: Method | None = None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes without reading them all."""
    declared = request.headers.get("content-length")
    too_big = ApiError(413, "body_too_large", f"the request body is over max_body_bytes={limit}; send a smaller image")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _fields(request: Request, limits: Limits) -> dict:
    """The request's fields from JSON or multipart/form-data (uploaded files as bytes)."""
    body = await read_body(request, limits.max_body_bytes)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=4, max_fields=16,
                                                               max_part_size=limits.max_body_bytes)
        except HTTPException as exc:
            raise ApiError(400, "bad_multipart", f"malformed multipart/form-data: {exc.detail}") from exc
        fields = {}
        for key, value in form.multi_items():
            fields[key] = await value.read() if isinstance(value, UploadFile) else value
        return fields
    if ctype not in ("application/json", ""):
        raise ApiError(415, "unsupported_media_type",
                       f"content type {ctype!r} is not supported; send application/json or multipart/form-data")
    if not body.strip():
        raise ApiError(400, "empty_body", "the request body is empty; send a JSON object")
    try:
        data = json.loads(body)
    except RecursionError as exc:
        raise ApiError(400, "malformed_json", "the JSON body is nested too deeply; send a flat JSON object") from exc
    except ValueError as exc:  # not JSON, not UTF-8, or an integer over Python's digit limit
        raise ApiError(400, "malformed_json", f"the body is not valid JSON ({exc}); send a JSON object") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    return data


def _validated(model: type[BaseModel], data: dict) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
        raise ApiError(400, "invalid_request", f"{problems} (fields: {', '.join(model.model_fields)})") from exc


def decode_image(value: str | bytes, limits: Limits, what: str = "image") -> bytes:
    """Encoded image bytes from an upload or a base64 string (plain or a data: URL), checked."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("data:"):
            header, _, text = text.partition(",")
            if ";base64" not in header:
                raise ApiError(400, "bad_base64", f"{what}: a data: URL must be base64-encoded")
        if len(text) * 3 // 4 > limits.max_image_bytes + 3:
            raise ApiError(413, "image_too_large", f"{what} is over max_image_bytes={limits.max_image_bytes}")
        try:
            value = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(400, "bad_base64", f"{what} is not valid base64 ({exc}); encode the file's bytes") from exc
    if len(value) > limits.max_image_bytes:
        raise ApiError(413, "image_too_large", f"{what} is {len(value)} bytes, over max_image_bytes={limits.max_image_bytes}")
    try:
        imaging.probe(value, limits.max_image_pixels)
    except imaging.ImageError as exc:
        if exc.reason == "decompression_bomb":
            raise ApiError(413, "image_too_large", f"{what}: {exc.detail}") from exc
        raise ApiError(415, "not_an_image", f"{what} is not a readable image (PNG, JPEG, WebP, ...): {exc.detail}") from exc
    return value


def check_text(text: str, limits: Limits, what: str = "text") -> str:
    text = text.strip()
    if not text:
        raise ApiError(400, "empty_text", f"{what} is empty; send a non-empty query")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate escape ("\\ud800"): tokenizers raise on it
        raise ApiError(400, "bad_text", f"{what} holds invalid Unicode at character {exc.start} (a lone surrogate "
                       "escape); send valid UTF-8 text") from exc
    if len(text) > limits.max_text_chars:
        raise ApiError(400, "text_too_long", f"{what} has {len(text)} characters, over max_text_chars={limits.max_text_chars}")
    return text


def check_model(name: str | None, cfg: RetrievalAppConfig) -> str:
    name = name or cfg.default_model
    known = [m.name for m in cfg.models]
    if name not in known:
        raise ApiError(400, "unknown_model", f"unknown model {name!r}; use one of {known} (GET /models)")
    return name


async def parse_search(request: Request, cfg: RetrievalAppConfig) -> SearchQuery:
    """A checked search query from a JSON or multipart request."""
    data = await _fields(request, cfg.limits)
    upload = data.get("image") if isinstance(data.get("image"), bytes) else None
    if upload is not None:
        data["image"] = ""  # validated as present; the bytes are checked below
    req = _validated(SearchRequest, data)
    given = [name for name in ("text", "image", "artwork_id") if getattr(req, name) is not None]
    if len(given) != 1:
        raise ApiError(400, "one_query", f"give exactly one of text, image or artwork_id (got {given or 'none'})")
    if not 1 <= req.k <= cfg.limits.max_k:
        raise ApiError(400, "bad_k", f"k must be between 1 and max_k={cfg.limits.max_k}, got {req.k}")
    model = check_model(req.model, cfg)
    kind = "text" if req.text is not None else "image" if req.image is not None else "artwork_id"
    target = req.target or ("image" if kind == "text" else "text")
    if req.rerank and (kind == "text") == (target == "text"):
        raise ApiError(400, "bad_rerank", f"rerank re-scores text→image and image→text searches, not {kind}→{target}; "
                       "drop `rerank` or change `target`")
    if kind == "text":
        return SearchQuery(kind, check_text(req.text, cfg.limits), req.k, model, target, req.rerank)
    if kind == "image":
        return SearchQuery(kind, decode_image(upload if upload is not None else req.image, cfg.limits),
                           req.k, model, target, req.rerank)
    if not req.artwork_id.strip():
        raise ApiError(400, "empty_artwork_id", "artwork_id is empty")
    return SearchQuery(kind, req.artwork_id, req.k, model, target, req.rerank)


async def parse_embed(request: Request, cfg: RetrievalAppConfig) -> tuple[str, list[str], list[bytes]]:
    """(model, texts, images) of a checked /embed request."""
    req = _validated(EmbedRequest, await _fields(request, cfg.limits))
    n = len(req.texts) + len(req.images)
    if not 1 <= n <= cfg.limits.max_embed_items:
        raise ApiError(400, "bad_items", f"send 1 to max_embed_items={cfg.limits.max_embed_items} texts + images, got {n}")
    texts = [check_text(t, cfg.limits, f"texts[{i}]") for i, t in enumerate(req.texts)]
    images = [decode_image(im, cfg.limits, f"images[{i}]") for i, im in enumerate(req.images)]
    return check_model(req.model, cfg), texts, images


def openapi_body(model: type[BaseModel], upload: str | None = None) -> dict:
    """`openapi_extra` documenting a route's request body (the routes read it themselves, to bound its size):
    the JSON schema of `model`, and a multipart form with `upload` as a file field if given."""
    schema = model.model_json_schema()
    content = {"application/json": {"schema": schema}}
    if upload:
        props = {name: {"type": "integer"} if name == "k" else {"type": "string"} for name in schema["properties"]}
        props[upload] = {"type": "string", "format": "binary"}
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": props}}
    return {"requestBody": {"required": True, "content": content}}
