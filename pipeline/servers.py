"""Running an ASGI app on loopback (in a background thread for tests and the demo, or in the foreground), and
what one client may cost every server of the project: body size, header and body read time, connections.

`server_config` is the one place a server is configured: the receiver, the upload page and the sandboxes all go
through it, so each is bounded the same way (`ServerLimits`, settable through the environment).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, fields
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from pipeline.settings import seconds_setting
from pipeline.spec import SpecError, positive_setting

LOOPBACK = "127.0.0.1"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class ServerLimits:
    """The bounds every server keeps against slow or greedy clients; `from_env` reads the settings."""

    max_body_bytes: int = 1024 * 1024  # a request body, unless its route declares its own (see BodyLimit)
    header_timeout_s: float = 10.0  # from the connection (or a request's first byte) to the end of its headers
    body_timeout_s: float = 30.0  # from the end of the headers to the last byte of the body
    max_connections: int = 1000  # open at once; past it a connection gets 503 and is closed
    keep_alive_s: float = 30.0  # an idle keep-alive connection

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"server limit {f.name} must be positive, not {getattr(self, f.name)!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerLimits:
        """The defaults, overridden by CAMPAIGN_MAX_BODY_BYTES, CAMPAIGN_HEADER_TIMEOUT_S, CAMPAIGN_BODY_TIMEOUT_S,
        CAMPAIGN_MAX_CONNECTIONS and CAMPAIGN_KEEP_ALIVE_S where set; a value that is not a positive number (a
        count: a whole one) is a SpecError naming the variable, which the CLI shows as one line."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = LIMIT_ENV[f.name]
            if f.type == "int":
                values[f.name] = positive_setting(name, getattr(cls, f.name), env)
            else:
                values[f.name] = seconds_setting(name, getattr(cls, f.name), env)
        return cls(**values)


LIMIT_ENV = {
    "max_body_bytes": "CAMPAIGN_MAX_BODY_BYTES", "header_timeout_s": "CAMPAIGN_HEADER_TIMEOUT_S",
    "body_timeout_s": "CAMPAIGN_BODY_TIMEOUT_S", "max_connections": "CAMPAIGN_MAX_CONNECTIONS",
    "keep_alive_s": "CAMPAIGN_KEEP_ALIVE_S",
}


def _answer(status: int, reason: bytes) -> bytes:
    return (b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, reason, len(reason), reason))


_TOO_SLOW = _answer(408, b"Request Timeout")
_TOO_MANY = _answer(503, b"Service Unavailable")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines it lacks (its keep-alive timeout covers only idle
    connections): the headers must be complete `header_timeout_s` after the connection or the request's first
    byte, the body `body_timeout_s` after the headers, else 408 and close. A connection past `max_connections`
    is answered 503 and closed before it is read."""

    limits = ServerLimits()  # set per server by `protocol_for`

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            transport.write(_TOO_MANY)
            transport.close()
            return
        self._arm(self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on a kept-alive connection: its clock starts now
            self._arm(self.limits.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._arm(self.limits.body_timeout_s)  # disarmed at once by on_message_complete when there is no body
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(_TOO_SLOW)
        if cycle is not None and not cycle.response_complete:
            # As connection_lost would: the app's receive() returns http.disconnect and its sends are dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()


def protocol_for(limits: ServerLimits) -> type[GuardedHttpToolsProtocol]:
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


class BodyLimit:
    """ASGI middleware in front of every app: a request body larger than its bound is refused with 413 and
    `connection: close` — on its Content-Length before a byte is read, or, chunked, as soon as the bytes
    received pass the bound — so no route ever holds more than its bound.

    The bound is `max_bytes` unless the app declares its own for a path in its `body_limits` mapping (e.g. the
    upload page's file size): a key ending in "/" covers the paths under it (the longest wins), any other key
    only that path.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def bound(self, path: str) -> int:
        declared: Mapping[str, int] = getattr(self.app, "body_limits", None) or {}
        if path in declared:
            return declared[path]
        prefix = max((p for p in declared if p.endswith("/") and path.startswith(p)), key=len, default=None)
        return self.max_bytes if prefix is None else declared[prefix]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.bound(scope["path"])
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                await _refuse(send)
                return
        size = 0
        refused = started = False

        async def bounded_receive() -> Message:
            nonlocal size, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    refused = True
                    if not started:
                        await _refuse(send)
                    return {"type": "http.disconnect"}  # to the app, the client is gone
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is the answer
            started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except Exception:
            if not refused:
                raise  # a route that fails on "client gone" after a refusal is not an error


async def _refuse(send: Send) -> None:
    body = b"request body too large"
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def check_loopback(host: str) -> str:
    """`host` when it is a loopback address; else a SpecError (a ValueError), before anything is announced."""
    if not host.startswith("127.") and host not in ("localhost", "::1"):
        raise SpecError(f"--host {host}: servers bind to loopback only (127.x.x.x, localhost or ::1); a public "
                        "receiver goes behind a TLS-terminating proxy on this host")
    return host


def port_number(text: str) -> int:
    """argparse type for every server command's --port: a whole number from 1 to 65535, else argparse's one usage
    line naming the option (exit 2) before anything is announced. Not 0 (any free port): these commands announce
    the port they were given, so the server would be announced on :0; tests that want a free port bind one first
    (serve_in_thread, the sandbox module)."""
    return _port(text, lowest=1)


def port_or_zero(text: str) -> int:
    """argparse type for the --port of a server that binds before it announces, and announces the port it got (the
    sandbox module): `port_number`, or 0 for any free port."""
    return _port(text, lowest=0)


def _port(text: str, lowest: int) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not lowest <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number from {lowest} to 65535")
    return port


def server_config(app: Any, host: str, port: int, limits: ServerLimits | None = None) -> uvicorn.Config:
    """uvicorn for any server of the project: loopback only, httptools with deadlines, bodies bounded,
    connections capped, uvloop when installed, no proxy-header rewriting (nothing is trusted in front).

    A public receiver goes behind a TLS-terminating proxy, which is where Meta's certificate requirement is met.
    """
    check_loopback(host)
    limits = ServerLimits.from_env() if limits is None else limits
    # httptools, not h11: with h11 the server, not the client, becomes the bottleneck.
    return uvicorn.Config(
        BodyLimit(app, limits.max_body_bytes), host=host, port=port, http=protocol_for(limits), loop="auto",
        log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=limits.keep_alive_s,
        # uvicorn counts the asking connection itself: +1 lets max_connections be served, as the protocol does.
        limit_concurrency=limits.max_connections + 1, backlog=4096, proxy_headers=False, server_header=False,
    )


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = LOOPBACK, port: int = 0, limits: ServerLimits | None = None
                    ) -> Iterator[str]:
    """Serves `app` in a daemon thread; yields its base URL; stops it on exit.

    Port 0 binds a free port first, so parallel tests never collide.
    """
    # IPPROTO_TCP explicitly: with protocol 0 asyncio never sets TCP_NODELAY on accepted
    # connections, and each response then waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app, host, bound_port, limits))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name=f"server:{bound_port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"server on {host}:{bound_port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def serve_forever(app: Any, host: str = LOOPBACK, port: int = 8000, limits: ServerLimits | None = None) -> None:
    """Serves `app` in the foreground until interrupted (the `campaign sandbox/webhooks` commands)."""
    uvicorn.Server(server_config(app, host, port, limits)).run()
