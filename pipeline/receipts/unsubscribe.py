"""The receiver's RFC 8058 unsubscribe endpoint: `POST /unsubscribe/{token}` with `List-Unsubscribe=One-Click`
suppresses the address (no redirect, no confirmation step); `GET` shows a one-button page posting the same.

Like every webhook, the endpoint never writes DuckDB: it verifies the token and appends a record to the
spool (provider "unsubscribe"); ingest turns it into a suppression (pipeline/channels/unsubscribe_webhooks.py).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from pipeline.channels.email import verify_unsubscribe_token
from pipeline.channels.email_webhooks import is_one_click
from pipeline.channels.unsubscribe_webhooks import PROVIDER, record_body
from pipeline.receipts.spool import Spool, SpoolClosed, encode_record

log = logging.getLogger(__name__)

PREFIX = "/unsubscribe/"
PATH = PREFIX + "{token}"
# A one-click body is 26 bytes, a multipart one a few hundred: the receiver's server refuses more (body_limits).
MAX_BODY_BYTES = 16 * 1024
Sink = Callable[[bytes], Awaitable[None]]  # appends one record body durably, or raises

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Unsubscribe</title></head>
<body><h1>Unsubscribe</h1><p>Stop e-mail to <strong>{address}</strong>?</p>
<form method="post" action="{action}"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button></form></body></html>"""
_DONE = ("<!doctype html><html><head><meta charset=\"utf-8\"><title>Unsubscribed</title></head>"
         "<body><p>You are unsubscribed. You will receive no further e-mail from these campaigns.</p></body></html>")


def _sink(target: Spool | Sink) -> Sink:
    if isinstance(target, Spool):
        spool = target

        async def append(raw: bytes) -> None:
            await spool.append(encode_record(PROVIDER, raw))

        return append
    return target


def create_unsubscribe_routes(target: Spool | Sink, secret: str, *, channel: str = "email") -> list[Route]:
    """The two routes for the receiver app. `target` is its Spool, or any async callable storing a body."""
    if not secret:
        raise ValueError("the unsubscribe secret is empty: tokens could not be verified")
    store = _sink(target)

    def _address(request: Request) -> str | None:
        return verify_unsubscribe_token(secret, request.path_params["token"], channel)

    async def page(request: Request) -> Response:
        # GET never unsubscribes: link scanners and previews fetch URLs without anyone clicking.
        address = _address(request)
        if address is None:
            return PlainTextResponse("This unsubscribe link is not valid.", status_code=404)
        action = html.escape(request.url.path, quote=True)
        return HTMLResponse(_PAGE.format(address=html.escape(address), action=action))

    async def one_click(request: Request) -> Response:
        address = _address(request)
        if address is None:
            log.warning("unsubscribe POST with an invalid token refused")
            return PlainTextResponse("This unsubscribe link is not valid.", status_code=404)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return PlainTextResponse("payload too large", status_code=413)
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return PlainTextResponse("payload too large", status_code=413)
        if not is_one_click(raw, request.headers.get("content-type")):
            return PlainTextResponse("expected List-Unsubscribe=One-Click", status_code=400)
        try:
            await store(record_body(address, request.path_params["token"], channel))
        except (OSError, SpoolClosed) as exc:
            # Not durable, so not acknowledged: the mail client (or the person) can try again.
            log.error("unsubscribe not stored: %s", type(exc).__name__)
            return PlainTextResponse("not stored, please retry", status_code=503)
        return HTMLResponse(_DONE)

    return [Route(PATH, page, methods=["GET"]), Route(PATH, one_click, methods=["POST"])]
