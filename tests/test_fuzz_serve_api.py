"""The search API fuzzed: no request, however malformed, gets a 5xx.

Two generators against the real app (`serve run` of the tiny config on a real local Ray, HTTP on
127.0.0.1 only, bearer auth on, small body limits so oversize payloads are cheap):

* schemathesis, from the app's own OpenAPI spec (the document GET /openapi.json serves): valid and
  schema-violating JSON and multipart bodies for every operation;
* hypothesis, for what a schema cannot express: raw bytes, truncated or deeply nested JSON,
  integers past Python's digit limit, lone-surrogate escapes, bad base64 and data: URLs, corrupt
  and oversized images, huge/negative k, unknown models, wrong content types, methods and paths.

Every answer must be < 500 and, if an error, the app's JSON error shape. Afterwards the app must
still be healthy and answer a good query. The budget is bounded (~100 requests). Regression
examples for the bugs the fuzzers found run in-process (`make_fastapi` with a stand-in ingress)
and against the real app.
"""

from __future__ import annotations

import base64
import io
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx
import pytest
import ray
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient

from artray.runtime import free_port
from artray.scaffold.demo_indexes import demo_indexes
from artray.serve.app import make_fastapi
from artray.serve.config import RetrievalAppConfig
from artray.serve.local import ServeProcess, serve_config
from artray.serve.queries import parse_embed, parse_search

TOKEN = "fuzz-token-" + "y" * 24
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = {"max_body_bytes": 200_000, "max_image_bytes": 150_000, "max_image_pixels": 250_000,
          "max_text_chars": 300, "max_k": 20, "max_embed_items": 4}
SETTINGS = {"deadline": None, "suppress_health_check": list(HealthCheck), "database": None}


def _png(size=(24, 24), color="red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()
BOMB = _png((600, 600))  # 360,000 pixels: over max_image_pixels, under the byte limits


@pytest.fixture(scope="module")
def api(ray_local, tmp_path_factory):
    """The search app as test_serve.py starts it (demo indexes of both families), with small limits."""
    root = tmp_path_factory.mktemp("fuzz-serve")
    indexes = demo_indexes(str(root), n=12, tiny_dir=str(tmp_path_factory.getbasetemp() / "tiny"))
    (root / "token").write_text(TOKEN + "\n")
    config = serve_config(indexes, free_port(), auth={"token_file": str(root / "token")}, limits=LIMITS)
    assert config["http_options"]["host"] == "127.0.0.1"
    with ServeProcess(config, ray.get_runtime_context().gcs_address) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(api):
    with httpx.Client(base_url=api.url, headers=AUTH, timeout=120) as c:
        yield c


def assert_no_server_error(response: httpx.Response | object, what: str) -> None:
    status = response.status_code
    assert status < 500, f"{what} → {status}: {response.text[:500]}"
    if status >= 400:
        body = response.json()
        assert body["error"] and len(body["detail"]) > 5, (what, body)


def _parsing_app():
    """The app's real routes and request parsing, with a stand-in ingress that stops after parsing."""
    cfg = RetrievalAppConfig.model_validate({"models": [{"name": "m", "index": "/x"}], "limits": LIMITS})

    async def search(request):
        q = await parse_search(request, cfg)
        return {"kind": q.kind, "k": q.k}

    async def embed(request):
        model, texts, images = await parse_embed(request, cfg)
        return {"model": model, "texts": len(texts), "images": len(images)}

    metric = SimpleNamespace(inc=lambda *a, **k: None, observe=lambda *a, **k: None)
    return make_fastapi(SimpleNamespace(token=None, cfg=cfg, requests=metric, latency=metric, search=search,
                                        embed=embed, models=[]))


# The spec comes from the app's own routes (`make_fastapi`), so tests can be generated at collection
# time; test_the_running_app_serves_this_spec checks the live app serves exactly this document.
# (schemathesis.pytest.from_fixture, which would load it from the live app, fails under pytest 9:
# it reads the private `Function._nodeid`.)
SPEC = _parsing_app().openapi()
schema = schemathesis.openapi.from_dict(SPEC)


def test_the_running_app_serves_this_spec(api):
    assert httpx.get(f"{api.url}/openapi.json", timeout=30).status_code == 401  # behind the token
    assert httpx.get(f"{api.url}/openapi.json", headers=AUTH, timeout=30).json() == SPEC


@schema.parametrize()
@settings(max_examples=15, **SETTINGS)
def test_openapi_generated_requests_never_get_a_5xx(case, api):
    """schemathesis: positive and negative examples of each operation in the spec."""
    response = case.call(base_url=api.url, headers=AUTH, timeout=120)
    assert_no_server_error(response, f"{case.method} {case.path} {case.media_type} {str(case.body)[:300]!r}")


# --- what a schema cannot express --------------------------------------------------------------------

b64 = st.one_of(
    st.sampled_from([PNG, BOMB, PNG[: len(PNG) // 2], b"", b"plain text, not pixels"]).map(
        lambda b: base64.b64encode(b).decode()),
    st.sampled_from(["not base64 at all!", "data:image/png;base64," + base64.b64encode(PNG).decode(),
                     "data:image/png," + "abc", "====", "\ud800", "YWJj\n", " " + base64.b64encode(PNG).decode()]),
    st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode()),
)
weird_text = st.one_of(st.text(max_size=30), st.sampled_from(["", "   ", "\ud800", "a\udfffb", "x\x00y", "\u200b",
                                                              "红色的圆形", "y" * 301, "a red circle"]))
anything = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5),
                     st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
search_fields = {
    "text": weird_text, "image": b64, "artwork_id": st.one_of(weird_text, st.sampled_from(["0", "1", "a-1"])),
    "k": st.one_of(st.integers(-5, 25), st.sampled_from([0, -1, 10**30, -(10**30), 2**63]), anything),
    "model": st.one_of(st.sampled_from(["longclip", "cnclip", "siglip", "", "\ud800"]), anything),
    "target": st.one_of(st.sampled_from(["image", "text", "video"]), anything),
    "rerank": st.one_of(st.sampled_from(["laclip", "itm", "bm25"]), anything),
    "extra": anything,
}


@st.composite
def search_body(draw) -> dict:
    names = draw(st.lists(st.sampled_from(sorted(search_fields)), min_size=1, max_size=4, unique=True))
    body = {n: draw(search_fields[n]) for n in names}
    if not {"text", "image", "artwork_id"} & set(body):  # mostly one query, so the deep paths are reached
        body["text"] = draw(weird_text)
    return body


@st.composite
def raw_request(draw) -> dict:
    """(method, path, headers, content) of one hostile request."""
    kind = draw(st.sampled_from(["search", "search", "search", "embed", "bytes", "nested", "bigint", "oversize",
                                 "multipart", "content_type", "route"]))
    path, method, headers = "/search", "POST", {"Content-Type": "application/json"}
    if kind == "search":
        content = json.dumps(draw(search_body()), ensure_ascii=True).encode()  # surrogates as \\udXXX escapes
        if draw(st.integers(0, 4)) == 4:
            content = content[: draw(st.integers(0, len(content) - 1))]  # truncated JSON
    elif kind == "embed":
        path = "/embed"
        body = {"texts": draw(st.lists(weird_text, max_size=5)), "images": draw(st.lists(b64, max_size=2)),
                **({"model": draw(search_fields["model"])} if draw(st.booleans()) else {})}
        content = json.dumps(body, ensure_ascii=True).encode()
    elif kind == "bytes":
        content = draw(st.binary(max_size=200))
    elif kind == "nested":
        depth = draw(st.sampled_from([100, 5_000, 100_000]))
        content = b'{"text": ' + b"[" * depth + b"]" * depth + b"}"
    elif kind == "bigint":
        content = b'{"text": "a red circle", "k": ' + b"7" * draw(st.sampled_from([20, 4_301, 20_000])) + b"}"
    elif kind == "oversize":
        content = json.dumps({"image": "A" * (LIMITS["max_body_bytes"] + draw(st.integers(1, 1000)))}).encode()
        if draw(st.booleans()):  # a lying, huge Content-Length (sent over a raw socket: httpx refuses)
            headers["Content-Length"] = "9" * draw(st.integers(7, 30))
            content = content[:100]
            kind = "raw_socket"
    elif kind == "multipart":
        headers = {"Content-Type": "multipart/form-data; boundary=" + draw(st.sampled_from(["xyz", "", "a b"]))}
        parts = [f'--xyz\r\nContent-Disposition: form-data; name="{draw(st.sampled_from(["image", "k", "text"]))}"'
                 f"\r\n\r\n".encode() + draw(st.sampled_from([PNG, b"many", b"3", b"\xff\xfe"]))
                 for _ in range(draw(st.integers(0, 6)))]
        content = b"\r\n".join(parts) + draw(st.sampled_from([b"\r\n--xyz--\r\n", b"", b"--xyz"]))
    elif kind == "content_type":
        headers = {"Content-Type": draw(st.sampled_from(["text/plain", "application/xml", "application/json; charset=utf-16",
                                                         "", "image/png", "application/x-www-form-urlencoded"]))}
        content = draw(st.sampled_from([b'{"text": "a red circle"}', PNG, b"text=a+red+circle"]))
    else:
        method = draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]))
        path = draw(st.sampled_from(["/search", "/embed", "/models", "/healthz", "/openapi.json", "/nope",
                                     "/search/", "//search", "/docs"]))
        content = b"{}"
    return {"method": method, "url": path, "headers": headers, "content": content, "raw_socket": kind == "raw_socket"}


def send_raw(url: str, method: str, path: str, headers: dict, content: bytes) -> int:
    """Send one request byte for byte (headers as given, even a false Content-Length); the status code."""
    host, port = url.removeprefix("http://").split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, **AUTH, "Host": host, "Connection": "close"}.items())
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode() + content)  # no half-close: the
        answer = b""  # proxy takes it for a client that went away and cancels the request
        while b"\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 "), f"no HTTP answer: {answer[:200]!r}"
    return int(answer.split(b" ", 2)[1])


@given(raw_request())
@settings(max_examples=45, **SETTINGS)
def test_hostile_raw_requests_never_get_a_5xx(api, client, request_kwargs):
    what = f"{request_kwargs['method']} {request_kwargs['url']} {request_kwargs['content'][:200]!r}"
    if request_kwargs.pop("raw_socket"):
        status = send_raw(api.url, **{k: request_kwargs[k] for k in ("method", "headers", "content")},
                          path=request_kwargs["url"])
        assert status < 500, f"{what} → {status}"
        return
    assert_no_server_error(client.request(**request_kwargs), what)


def test_after_the_fuzzing_the_app_is_healthy_and_answers(api, client):
    """Runs after the fuzz tests (file order): nothing they sent took a replica down."""
    assert client.post("/search", json={"text": "a red circle", "k": 2}).status_code == 200
    status = ray.serve.status().applications["retrieval"]
    assert status.status == "RUNNING" and all(d.status == "HEALTHY" for d in status.deployments.values())


# --- regressions: bugs the fuzzers found ---------------------------------------------------------------


@pytest.mark.parametrize("content, code", [
    (b'{"text": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", "malformed_json"),  # was 500: RecursionError
    (b'{"text": "a", "k": ' + b"7" * 5_000 + b"}", "malformed_json"),  # was 500: int over the 4300-digit limit
    (b'{"text": "a \\ud800 red circle"}', "bad_text"),  # was 500 (and failed its batch): tokenizers refuse it
])
def test_bodies_that_crashed_the_parser_are_400s(content, code):
    with TestClient(_parsing_app(), raise_server_exceptions=False) as c:
        response = c.post("/search", content=content, headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()["error"]) == (400, code), response.text
    with TestClient(_parsing_app()) as c:
        assert c.post("/search", json={"text": "a red circle", "k": 3}).json() == {"kind": "text", "k": 3}


def test_the_openapi_spec_documents_the_request_bodies():
    with TestClient(_parsing_app()) as c:
        spec = c.get("/openapi.json").json()
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert set(body["application/json"]["schema"]["properties"]) >= {"text", "image", "artwork_id", "k", "model"}
    assert body["multipart/form-data"]["schema"]["properties"]["image"]["format"] == "binary"
    assert "texts" in spec["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]


def test_a_lone_surrogate_query_is_a_400_and_does_not_fail_its_batch(client):
    """Chinese-CLIP's tokenizer raised on lone surrogates: the query got a 500 and so did every query
    batched with it (one forward pass)."""
    def ask(text):
        return client.post("/search", content=json.dumps({"text": text, "model": "cnclip", "k": 2}),
                           headers={"Content-Type": "application/json"})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, ["\ud800 红色", "红色的圆形", "a\udfffb", "蓝色方形"] * 2))
    assert [(a.status_code, a.json().get("error")) for a in answers] == \
        [(400, "bad_text"), (200, None), (400, "bad_text"), (200, None)] * 2
    embed = client.post("/embed", content=json.dumps({"model": "cnclip", "texts": ["ok", "\ud800"]}),
                        headers={"Content-Type": "application/json"})
    assert embed.status_code == 400 and "texts[1]" in embed.json()["detail"]


def test_a_boolean_k_is_refused_and_a_form_k_still_read():
    """Was: pydantic's lax mode read `"k": true` as k=1."""
    with TestClient(_parsing_app()) as c:
        for k in (True, False):
            response = c.post("/search", json={"text": "a red circle", "k": k})
            assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
            assert "not the boolean" in response.json()["detail"]
        assert c.post("/search", json={"text": "a", "k": 4}).json() == {"kind": "text", "k": 4}
        form = {"text": (None, "a"), "k": (None, "5")}  # multipart/form-data fields are strings
        assert c.post("/search", files=form).json() == {"kind": "text", "k": 5}


def test_an_image_over_the_pixel_limit_is_a_413_citing_the_configured_limit():
    """Was: over Pillow's own hard limit the message cited Pillow's 178956970 pixels, not max_image_pixels."""
    import struct
    import zlib

    png = bytearray(_png_bytes())
    png[16:24] = struct.pack(">II", 100_000, 100_000)  # the header claims 10^10 pixels
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    with TestClient(_parsing_app()) as c:
        response = c.post("/search", json={"image": base64.b64encode(bytes(png)).decode()})
    assert (response.status_code, response.json()["error"]) == (413, "image_too_large")
    assert f"limit of {LIMITS['max_image_pixels']}" in response.json()["detail"]
    assert "178956970" not in response.json()["detail"]


def _png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    return buf.getvalue()
