"""The webhook receiver: verifies provider signatures and spools raw payloads, fsynced before the 200.

It never writes DuckDB (one writer per file); the receipts stage ingests the closed spool files.
Run it with `python -m pipeline.receiver --port 8802 --spool-dir spool/`.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pipeline.channels.whatsapp_webhooks import SIGNATURE_HEADER, verify_signature
from pipeline.servers import LOOPBACK, serve_forever
from pipeline.spool import Spool, SpoolClosed, encode_record

log = logging.getLogger(__name__)

# Keys of the `secrets` mapping, and the environment variables `main` reads them from.
APP_SECRET = "whatsapp_app_secret"
VERIFY_TOKEN = "whatsapp_verify_token"
SECRET_ENV = {APP_SECRET: "WHATSAPP_APP_SECRET", VERIFY_TOKEN: "WHATSAPP_VERIFY_TOKEN"}
# Meta's payloads are a few KB; anything far larger is not a webhook and must not fill the disk.
MAX_BODY_BYTES = 1024 * 1024


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def create_receiver_app(
    spool_dir: Path | str,
    secrets: dict[str, str],
    *,
    rotate_after_s: float = 1.0,
    rotate_after_bytes: int = 64 * 1024 * 1024,
) -> Starlette:
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

    async def whatsapp_post(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return JSONResponse({"error": "payload too large"}, status_code=413)
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return JSONResponse({"error": "payload too large"}, status_code=413)
        if not verify_signature(raw, request.headers.get(SIGNATURE_HEADER), app_secret):
            log.warning("whatsapp webhook with a missing or invalid signature refused (%d bytes)", len(raw))
            return JSONResponse({"error": "invalid signature"}, status_code=401)
        try:
            await spool.append(encode_record("whatsapp", raw))
        except (OSError, SpoolClosed) as exc:
            # Not durable, so not acknowledged: Meta retries non-2xx deliveries.
            log.error("spool append failed: %s", type(exc).__name__)
            return JSONResponse({"error": "not stored, retry"}, status_code=503)
        return PlainTextResponse("ok")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "spool": spool.stats()})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        spool.start()
        try:
            yield
        finally:
            await spool.close()

    app = Starlette(
        routes=[
            Route("/webhooks/whatsapp", whatsapp_handshake, methods=["GET"]),
            Route("/webhooks/whatsapp", whatsapp_post, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.spool = spool
    return app


def secrets_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The receiver's secrets from WHATSAPP_APP_SECRET / WHATSAPP_VERIFY_TOKEN (values never logged)."""
    env = os.environ if environ is None else environ
    return {key: env.get(var, "") for key, var in SECRET_ENV.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.receiver", description=__doc__)
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
    serve_forever(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
