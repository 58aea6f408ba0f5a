"""The retrying search client against a real HTTP server on 127.0.0.1 that fails on purpose: 503s,
dropped connections, a 400, a Retry-After. What is retried, how often, for how long, and what is not."""

from __future__ import annotations

import email.utils
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from artray.runtime import free_port
from artray.serve.client import (
    SearchClient,
    SearchClientConfig,
    SearchClientError,
    retry_after_s,
    search,
)

ANSWER = {"model": "m", "query": "text", "target": "image", "k": 1, "took_ms": 1.0,
          "results": [{"rank": 1, "score": 0.5, "id": "a1", "title": "A title"}]}


class FlakyServer:
    """Answers the first `faults` requests with `fault` ("503", "502", "504", "400" or "drop": close
    the connection without a response), then 200 with ANSWER. Records every request it sees."""

    def __init__(self, faults: int, fault: str = "503", retry_after: str | None = None):
        self.faults, self.fault, self.retry_after = faults, fault, retry_after
        self.seen: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.seen.append({"t": time.monotonic(), "path": self.path, "method": self.command,
                                    "body": body, "auth": self.headers.get("Authorization")})
                if len(server.seen) <= server.faults:
                    if server.fault == "drop":
                        self.close_connection = True
                        return
                    status = int(server.fault)
                    payload = json.dumps({"error": "x", "detail": f"fault {len(server.seen)}"}).encode()
                else:
                    status, payload = 200, json.dumps(ANSWER).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                if status != 200 and server.retry_after:
                    self.send_header("Retry-After", server.retry_after)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FlakyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("fault", ["503", "502", "504", "drop"])
def test_transient_faults_are_retried_until_an_answer(fault):
    with FlakyServer(3, fault) as server:
        client = SearchClient(server.url, token="t0ken", retries=4, backoff=0.02)
        assert client.search("a red circle", k=1) == ANSWER
    assert len(server.seen) == 4 and client.attempts_made == 4
    assert {(s["method"], s["path"], s["auth"]) for s in server.seen} == {("POST", "/search", "Bearer t0ken")}
    assert len({s["body"] for s in server.seen}) == 1  # the same request each time
    assert json.loads(server.seen[0]["body"]) == {"k": 1, "text": "a red circle"}


def test_retries_are_bounded_and_the_error_names_the_status_and_attempts():
    with FlakyServer(100) as server:
        with pytest.raises(SearchClientError, match=r"answered 503: fault 3 after 3 attempts") as err:
            SearchClient(server.url, retries=2, backoff=0.01).embed(texts=["x"])
    assert len(server.seen) == 3 and err.value.status == 503 and err.value.attempts == 3
    with FlakyServer(100) as server:
        with pytest.raises(SearchClientError, match=r"answered 503: fault 1$"):
            SearchClient(server.url, retries=0).search("x")
    assert len(server.seen) == 1


def test_client_errors_are_not_retried():
    with FlakyServer(100, "400") as server:
        with pytest.raises(SearchClientError, match="answered 400") as err:
            SearchClient(server.url, retries=5, backoff=0.01).search("x")
    assert len(server.seen) == 1 and err.value.status == 400


def test_backoff_grows_exponentially_with_jitter_and_stops_at_the_deadline():
    with FlakyServer(100) as server:
        client = SearchClient(server.url, retries=20, backoff=0.1, max_backoff=0.4, retry_deadline_s=1.5)
        started = time.monotonic()
        with pytest.raises(SearchClientError):
            client.search("x")
        elapsed = time.monotonic() - started
    gaps = [b["t"] - a["t"] for a, b in zip(server.seen, server.seen[1:])]
    bounds = [min(0.4, 0.1 * 2 ** i) for i in range(len(gaps))]
    assert all(g <= b + 0.25 for g, b in zip(gaps, bounds)), list(zip(gaps, bounds))  # jitter stays under the bound
    assert elapsed <= 1.5 + 0.5 and len(server.seen) < 21  # the deadline, not the 20 retries, ended it
    assert len(server.seen) >= 4  # ...after several retries, not the first failure


def test_retry_after_is_honoured():
    with FlakyServer(1, retry_after="0.4") as server:
        assert SearchClient(server.url, retries=1, backoff=0.0).search("x") == ANSWER
    assert server.seen[1]["t"] - server.seen[0]["t"] >= 0.38


def test_retry_after_as_an_http_date_is_honoured_and_every_wait_is_capped():
    """Retry-After is read by urllib3's Retry, as URL ingest reads it (was: a date fell back to the backoff)."""
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1 to 2 s from now
    with FlakyServer(1, retry_after=when) as server:
        assert SearchClient(server.url, retries=1, backoff=0.0).search("x") == ANSWER
    assert server.seen[1]["t"] - server.seen[0]["t"] >= 0.9
    with FlakyServer(1, retry_after="3600") as server:  # capped at max_backoff
        assert SearchClient(server.url, retries=1, backoff=0.0, max_backoff=0.3).search("x") == ANSWER
    assert server.seen[1]["t"] - server.seen[0]["t"] < 1.5
    assert (retry_after_s("7"), retry_after_s(" 0.4 "), retry_after_s("soon"), retry_after_s(None)) == (7.0, 0.4, None, None)
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait


def test_nothing_listening_is_a_connection_error_retried_then_named():
    with FlakyServer(0) as server:
        url = server.url  # a port that was just free, closed again below
    client = SearchClient(url, retries=2, backoff=0.01)
    with pytest.raises(SearchClientError, match=r"cannot reach .* after 3 attempts") as err:
        client.healthz()
    assert client.attempts_made == 3 and err.value.status is None


def test_search_function_and_cli_use_the_retry_settings(monkeypatch, capsys, tmp_path):
    from artray.cli import main

    with FlakyServer(2) as server:
        cfg = SearchClientConfig(url=server.url, text="a red circle", k=1, retries=2, backoff=0.01)
        assert search(cfg) == ANSWER
    with FlakyServer(2) as server:
        with pytest.raises(SearchClientError, match="answered 503"):
            search(SearchClientConfig(url=server.url, text="x", retries=1, backoff=0.01))
    with FlakyServer(2) as server:
        monkeypatch.setenv("ARTRAY_API_TOKEN", "secret-token")
        args = ["search", "--url", server.url, "--text", "a red circle", "--retries", "3", "--backoff", "0.01"]
        assert main(args) == 0
        assert "1  +0.5000  a1  A title" in capsys.readouterr().out
        assert server.seen[-1]["auth"] == "Bearer secret-token" and len(server.seen) == 3
    with FlakyServer(5) as server:
        assert main(["search", "--url", server.url, "--text", "x", "--retries", "0"]) == 2
        assert "answered 503" in capsys.readouterr().err and len(server.seen) == 1


def test_local_server_ports_are_drawn_below_the_ephemeral_range():
    """Ports of artray's local servers (`serve run` in tests and the demo) come from below the kernel's
    ephemeral range, where Serve replicas bind their gRPC servers on port 0 (regression: the search
    app's port was drawn from that range, and /healthz reached a replica's gRPC server on it)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert all(1024 < p < low for p in ports), ports
    assert len(set(ports)) > 40  # drawn at random, not one port for every caller
