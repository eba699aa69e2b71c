"""Running an ASGI app on loopback: in a background thread (tests, demo) or in the foreground."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

LOOPBACK = "127.0.0.1"


def _config(app: Any, host: str, port: int) -> uvicorn.Config:
    if not host.startswith("127.") and host not in ("localhost", "::1"):
        raise ValueError(f"servers bind to loopback only, not {host!r}")
    # httptools, not h11: with h11 the server, not the client, becomes the bottleneck.
    return uvicorn.Config(
        app, host=host, port=port, http="httptools", loop="asyncio", log_level="warning",
        access_log=False, lifespan="on", timeout_keep_alive=30, backlog=4096,
    )


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = LOOPBACK, port: int = 0) -> Iterator[str]:
    """Serves `app` in a daemon thread; yields its base URL; stops it on exit.

    Port 0 binds a free port first, so parallel tests never collide.
    """
    # IPPROTO_TCP explicitly: with protocol 0 asyncio never sets TCP_NODELAY on accepted
    # connections, and each response then waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(_config(app, host, bound_port))
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


def serve_forever(app: Any, host: str = LOOPBACK, port: int = 8000) -> None:
    """Serves `app` in the foreground until interrupted (the `campaign sandbox/webhooks` commands)."""
    uvicorn.Server(_config(app, host, port)).run()
