"""The dispatcher's HTTP session (httpx's transport driven directly) against a real loopback server:
what goes on the wire, the environment's proxy, timeouts and refused connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from pipeline.channels.base import USER_AGENT, HttpChannel, HttpSession

PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, object]] = []
    silent_paths = ("/slow",)
    closing = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["content-length"]))
        self.seen.append({"line": self.requestline, "headers": dict(self.headers.items()), "body": body})
        if self.path.endswith(self.silent_paths):
            self.closing.wait(10)  # past the client's timeout: answers nobody, until the server closes
            return
        payload = json.dumps({"ok": True, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _server() -> Iterator[str]:
    _Recorder.seen = []
    _Recorder.closing = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = False  # server_close() joins the handlers: none outlives its test
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _Recorder.closing.set()
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


async def _post(url: str, timeout_s: float = 5.0, body: bytes = b'{"to":"+4470"}') -> list[httpx.Response]:
    async with HttpSession(timeout_s) as session:
        # Two requests: the second reuses the worker's one connection.
        return [await session.post(url, content=body, headers={"content-type": "application/json",
                                                                "authorization": "Bearer t"}) for _ in range(2)]


def test_posts_the_body_with_our_headers_and_reads_the_answer() -> None:
    with _server() as base:
        responses = asyncio.run(_post(f"{base}/v23.0/1065/messages"))
    assert [r.status_code for r in responses] == [200, 200]
    assert responses[0].json() == {"ok": True, "path": "/v23.0/1065/messages"}
    first = _Recorder.seen[0]
    assert first["line"] == "POST /v23.0/1065/messages HTTP/1.1"
    headers = {k.lower(): v for k, v in first["headers"].items()}  # type: ignore[union-attr]
    assert headers["user-agent"] == USER_AGENT
    assert headers["authorization"] == "Bearer t"
    assert headers["content-length"] == str(len(b'{"to":"+4470"}'))
    assert headers["host"] == base.removeprefix("http://")
    assert first["body"] == b'{"to":"+4470"}'


def test_the_environment_proxy_is_used_and_no_proxy_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    with _server() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        # The proxy (our recorder) receives the request in absolute form for the provider's host.
        responses = asyncio.run(_post("http://provider.invalid/v23.0/1065/messages"))
        assert responses[0].status_code == 200
        assert _Recorder.seen[0]["line"] == "POST http://provider.invalid/v23.0/1065/messages HTTP/1.1"
        # NO_PROXY: straight to the host, which does not resolve.
        monkeypatch.setenv("NO_PROXY", "provider.invalid")
        with pytest.raises(httpx.ConnectError):
            asyncio.run(_post("http://provider.invalid/v23.0/1065/messages"))


def test_a_silent_server_times_out_as_unknown_and_a_refused_connection_as_retry() -> None:
    with _server() as base:
        with pytest.raises(httpx.ReadTimeout) as timed_out:
            asyncio.run(_post(f"{base}/slow", timeout_s=0.3))
    assert HttpChannel().classify_exception(timed_out.value).kind == "unknown"  # it may have been accepted
    with pytest.raises(httpx.ConnectError) as refused:
        asyncio.run(_post(base + "/v23.0/1/messages"))  # the server is gone: nothing listens
    assert HttpChannel().classify_exception(refused.value).kind == "retry"


def test_a_handed_in_transport_is_used() -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(201, json={"id": len(calls)})

    transport = httpx.MockTransport(handler)
    responses = asyncio.run(_via(transport))
    assert [r.json() for r in responses] == [{"id": 1}, {"id": 2}]
    assert calls[0].headers["user-agent"] == USER_AGENT and calls[0].extensions["timeout"]["read"] == 5.0


async def _via(transport: httpx.AsyncBaseTransport) -> list[httpx.Response]:
    async with HttpSession(5.0, transport) as session:
        return [await session.post("http://x/y", content=b"{}", headers={}) for _ in range(2)]
