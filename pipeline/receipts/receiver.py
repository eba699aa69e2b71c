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
import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pipeline.channels.whatsapp_webhooks import SIGNATURE_HEADER, verify_signature
from pipeline.receipts import unsubscribe
from pipeline.receipts.routes import provider_routes
from pipeline.receipts.spool import Spool, SpoolClosed, encode_record
from pipeline.servers import LOOPBACK, Receive, Scope, Send, port_number, serve_forever
from pipeline.servers import server_config as server_config  # the receiver's uvicorn set-up is every server's

log = logging.getLogger(__name__)

# Keys of the `secrets` mapping, and the environment variables `main` reads them from.
APP_SECRET = "whatsapp_app_secret"
VERIFY_TOKEN = "whatsapp_verify_token"
SECRET_ENV = {APP_SECRET: "WHATSAPP_APP_SECRET", VERIFY_TOKEN: "WHATSAPP_VERIFY_TOKEN"}
WHATSAPP_PATH = "/webhooks/whatsapp"
# Bodies are bounded before any route sees them (pipeline.servers.BodyLimit: CAMPAIGN_MAX_BODY_BYTES, 1 MiB by
# default; Meta's payloads are a few KB); routes that need another bound declare it in `body_limits`.

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
    so `app.state.spool` and adding routes keep working. `body_limits` maps a path (or, ending in "/", a
    path prefix) to its own request body bound, which the server enforces (pipeline.servers.BodyLimit).
    """

    def __init__(self, inner: Starlette, spool: Spool, app_secret: str) -> None:
        self.inner = inner
        self.spool = spool
        self._app_secret = app_secret
        self.body_limits: dict[str, int] = {unsubscribe.PREFIX: unsubscribe.MAX_BODY_BYTES}

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
        chunks: list[bytes] = []
        while True:  # bounded: the server refuses a body past its bound before it reaches here
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the sender gave up (or was refused); it will retry, and nothing was stored
            chunks.append(message.get("body", b""))
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
    environ: Mapping[str, str] | None = None,
    rotate_after_s: float = 1.0,
    rotate_after_bytes: int = 64 * 1024 * 1024,
) -> ReceiverApp:
    """The receiver app; `secrets` holds `whatsapp_app_secret` and `whatsapp_verify_token`.

    Every provider's route is there (pipeline/receipts/routes.py), with its secret from `environ` (default
    os.environ); a route whose secret is not set refuses every request. `app.state.spool` is the Spool (its
    counters show how many fsyncs the appends shared), `app.state.providers` the providers configured.
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

    others, configured = provider_routes(spool, environ)
    inner = Starlette(
        routes=[
            Route(WHATSAPP_PATH, whatsapp_handshake, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            *others,
        ],
        lifespan=lifespan,
    )
    inner.state.spool = spool
    inner.state.providers = ["whatsapp", *configured]
    return ReceiverApp(inner, spool, app_secret)


def secrets_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The receiver's secrets from WHATSAPP_APP_SECRET / WHATSAPP_VERIFY_TOKEN (values never logged)."""
    env = os.environ if environ is None else environ
    return {key: env.get(var, "") for key, var in SECRET_ENV.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.receipts.receiver", description=__doc__)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=port_number, default=8802)
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
    log.info("receiver on %s:%d for %s, spooling to %s", args.host, args.port, ", ".join(app.state.providers),
             args.spool_dir)
    serve_forever(app, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
