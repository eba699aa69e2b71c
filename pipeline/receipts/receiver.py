"""The webhook receiver: verifies provider signatures and spools raw payloads, fsynced before the 200.

It never writes DuckDB (one writer per file); the receipts stage ingests the closed spool files.
Run it with `python -m pipeline.receipts.receiver --port 8802 --spool-dir spool/`.

The webhook POST is the hot path (Meta asks for 3x the send rate in status webhooks, median
≤ 250 ms): it is served by a few lines of plain ASGI in front of Starlette, because Starlette's
routing, middleware stack and Request/Response objects cost more CPU than the HMAC, the spool
record and the (shared) fsync together. Everything else (the GET handshake, /healthz, lifespan,
routes added later) is ordinary Starlette.
"""

from __future__ import annotations

import argparse
import hmac
import importlib.util
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pipeline.channels.whatsapp_webhooks import SIGNATURE_HEADER, verify_signature
from pipeline.receipts.spool import Spool, SpoolClosed, encode_record
from pipeline.servers import LOOPBACK

log = logging.getLogger(__name__)

# Keys of the `secrets` mapping, and the environment variables `main` reads them from.
APP_SECRET = "whatsapp_app_secret"
VERIFY_TOKEN = "whatsapp_verify_token"
SECRET_ENV = {APP_SECRET: "WHATSAPP_APP_SECRET", VERIFY_TOKEN: "WHATSAPP_VERIFY_TOKEN"}
WHATSAPP_PATH = "/webhooks/whatsapp"
# Meta's payloads are a few KB; anything far larger is not a webhook and must not fill the disk.
MAX_BODY_BYTES = 1024 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_SIGNATURE_KEY = SIGNATURE_HEADER.lower().encode("latin-1")  # ASGI header names are lower-case bytes
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
_JSON = [(b"content-type", b"application/json")]


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode("ascii"))]})
    await send({"type": "http.response.body", "body": body})


class ReceiverApp:
    """The ASGI app `create_receiver_app` returns: the WhatsApp POST fast path, then Starlette.

    Attributes it does not define (`state`, `routes`, `add_route`, ...) are the Starlette app's,
    so `app.state.spool` and adding routes keep working.
    """

    def __init__(self, inner: Starlette, spool: Spool, app_secret: str) -> None:
        self.inner = inner
        self.spool = spool
        self._app_secret = app_secret

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == WHATSAPP_PATH:
            await self._whatsapp_post(scope, receive, send)
        else:
            await self.inner(scope, receive, send)

    async def _whatsapp_post(self, scope: Scope, receive: Receive, send: Send) -> None:
        signature: bytes | None = None
        for name, value in scope["headers"]:
            if name == _SIGNATURE_KEY:
                signature = value
            elif name == b"content-length" and value.isdigit() and int(value) > MAX_BODY_BYTES:
                await _respond(send, 413, b'{"error":"payload too large"}', _JSON)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the sender gave up; it will retry, and nothing was stored
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await _respond(send, 413, b'{"error":"payload too large"}', _JSON)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        header = signature.decode("latin-1") if signature is not None else None
        if not verify_signature(raw, header, self._app_secret):
            log.warning("whatsapp webhook with a missing or invalid signature refused (%d bytes)", len(raw))
            await _respond(send, 401, b'{"error":"invalid signature"}', _JSON)
            return
        try:
            await self.spool.append(encode_record("whatsapp", raw))
        except (OSError, SpoolClosed) as exc:
            # Not durable, so not acknowledged: Meta retries non-2xx deliveries.
            log.error("spool append failed: %s", type(exc).__name__)
            await _respond(send, 503, b'{"error":"not stored, retry"}', _JSON)
            return
        await _respond(send, 200, b"ok", _TEXT)


def create_receiver_app(
    spool_dir: Path | str,
    secrets: dict[str, str],
    *,
    rotate_after_s: float = 1.0,
    rotate_after_bytes: int = 64 * 1024 * 1024,
) -> ReceiverApp:
    """The receiver app; `secrets` holds `whatsapp_app_secret` and `whatsapp_verify_token`.

    `app.state.spool` is the Spool (its counters show how many fsyncs the appends shared).
    """
    app_secret = secrets.get(APP_SECRET) or ""
    verify_token = secrets.get(VERIFY_TOKEN) or ""
    if not app_secret:
        # Without a secret every POST would be refused; say so at start, not per request.
        raise ValueError(f"secrets[{APP_SECRET!r}] is required")
    spool = Spool(spool_dir, rotate_after_s=rotate_after_s, rotate_after_bytes=rotate_after_bytes)

    async def whatsapp_handshake(request: Request) -> Response:
        params = request.query_params
        mode, token = params.get("hub.mode"), params.get("hub.verify_token")
        challenge = params.get("hub.challenge")
        if mode == "subscribe" and token and verify_token and _same(token, verify_token) and challenge:
            return PlainTextResponse(challenge)
        log.warning("whatsapp webhook handshake refused (mode=%r)", mode)
        return PlainTextResponse("forbidden", status_code=403)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "spool": spool.stats()})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        spool.start()
        try:
            yield
        finally:
            await spool.close()

    inner = Starlette(
        routes=[
            Route(WHATSAPP_PATH, whatsapp_handshake, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    inner.state.spool = spool
    return ReceiverApp(inner, spool, app_secret)


def secrets_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The receiver's secrets from WHATSAPP_APP_SECRET / WHATSAPP_VERIFY_TOKEN (values never logged)."""
    env = os.environ if environ is None else environ
    return {key: env.get(var, "") for key, var in SECRET_ENV.items()}


def server_config(app: Any, host: str, port: int) -> uvicorn.Config:
    """uvicorn tuned for the receiver: httptools, uvloop when installed, no proxy-header rewriting.

    Loopback only, like every server of the project (pipeline.servers); a public endpoint goes
    behind a TLS-terminating proxy, which is where Meta's certificate requirement is met.
    """
    if not host.startswith("127.") and host not in ("localhost", "::1"):
        raise ValueError(f"the receiver binds to loopback only, not {host!r}")
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return uvicorn.Config(
        app, host=host, port=port, http="httptools", loop=loop, log_level="warning", access_log=False,
        lifespan="on", timeout_keep_alive=30, backlog=4096, proxy_headers=False, server_header=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.receipts.receiver", description=__doc__)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=8802)
    parser.add_argument("--spool-dir", type=Path, default=Path("spool"))
    parser.add_argument("--rotate-after-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    secrets = secrets_from_env()
    missing = [SECRET_ENV[k] for k, v in secrets.items() if not v]
    if missing:
        print(f"receiver: set {', '.join(missing)} in the environment", file=sys.stderr)
        return 2
    app = create_receiver_app(args.spool_dir, secrets, rotate_after_s=args.rotate_after_s)
    log.info("receiver on %s:%d, spooling to %s", args.host, args.port, args.spool_dir)
    uvicorn.Server(server_config(app, args.host, args.port)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
