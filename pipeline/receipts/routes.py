"""The receiver's routes for every provider besides WhatsApp (whose route is the receiver's fast path).

Each route verifies its provider's signature on the raw body, spools the payload (fsynced before
the answer) and answers what that provider expects. Every route is there wherever the receiver runs;
one whose secret is not configured refuses every request (503, so the provider retries once it is
set) without reading the body: a receiver never accepts what it cannot verify. Bodies are bounded
by the server before a route reads them (pipeline.servers.BodyLimit).
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from pipeline.channels import (
    alibaba_sms_webhooks,
    chatapp_webhooks,
    email_webhooks,
    messenger_webhooks,
    twilio_webhooks,
    viber_webhooks,
)
from pipeline.receipts.spool import Spool, encode_record
from pipeline.receipts.unsubscribe import PATH as UNSUBSCRIBE_PATH
from pipeline.receipts.unsubscribe import create_unsubscribe_routes

log = logging.getLogger(__name__)

UNSUBSCRIBE_ENV = "EMAIL_UNSUBSCRIBE_SECRET"


@dataclass(frozen=True)
class Hook:
    provider: str
    module: ModuleType
    secret_env: str
    verify_env: str | None = None  # Meta's GET hub.challenge handshake token
    signs_url: bool = False  # Twilio signs the URL it called, not only the body
    shared_key_env: str | None = None  # Twilio's Webhooks Setting SharedKey (HMAC-SHA256), when one is used
    ok_body: bytes = b""
    ok_type: str = "text/plain"

    @property
    def path(self) -> str:
        return f"/webhooks/{self.provider}"


HOOKS = (
    Hook("messenger", messenger_webhooks, "MESSENGER_APP_SECRET", verify_env="MESSENGER_VERIFY_TOKEN"),
    Hook("instagram", messenger_webhooks, "INSTAGRAM_APP_SECRET", verify_env="INSTAGRAM_VERIFY_TOKEN"),
    Hook("viber", viber_webhooks, "VIBER_AUTH_TOKEN"),
    Hook("chatapp", chatapp_webhooks, "CHATAPP_CALLBACK_TOKEN"),
    # An empty TwiML answer: Twilio posts inbound messages here too and would otherwise reply.
    Hook("twilio", twilio_webhooks, "TWILIO_AUTH_TOKEN", signs_url=True, ok_body=b"<Response/>",
         ok_type="application/xml", shared_key_env="TWILIO_WEBHOOK_SHARED_KEY"),
    # Alibaba only counts a push as received when the body says code 0.
    Hook("alibaba_sms", alibaba_sms_webhooks, "ALIBABA_SMS_REPORT_TOKEN", ok_body=alibaba_sms_webhooks.ACK_BODY,
         ok_type="application/json"),
    Hook("email", email_webhooks, "EMAIL_WEBHOOK_SECRET"),
)


def _post(hook: Hook, spool: Spool, secret: str, shared_key: str | None = None):  # noqa: ANN202
    async def receive(request: Request) -> Response:
        raw = await request.body()
        url = str(request.url)
        extra: dict[str, str | None] = {"url": url} if hook.signs_url else {}
        if hook.shared_key_env:
            extra["shared_key"] = shared_key
        if not hook.module.verify(raw, request.headers, secret, **extra):
            return PlainTextResponse("invalid signature", status_code=401)
        body = hook.module.spool_body(raw, url) if hook.signs_url else raw
        try:
            await spool.append(encode_record(hook.provider, body))
        except Exception:  # the provider retries on a 5xx: nothing is lost
            log.exception("spooling a %s webhook failed", hook.provider)
            return PlainTextResponse("spool unavailable", status_code=503)
        return Response(hook.ok_body, media_type=hook.ok_type)

    return receive


def _handshake(token: str):  # noqa: ANN202
    async def challenge(request: Request) -> Response:
        params = request.query_params
        if params.get("hub.mode") == "subscribe" and hmac.compare_digest(
            params.get("hub.verify_token", "").encode(), token.encode()
        ):
            return PlainTextResponse(params.get("hub.challenge", ""))
        return PlainTextResponse("forbidden", status_code=403)

    return challenge


def _not_configured(what: str):  # noqa: ANN202
    async def refuse(request: Request) -> Response:
        # Never read: nothing can be verified here. Closing saves reading whatever the client still sends.
        return PlainTextResponse(f"{what} is not configured on this receiver", status_code=503,
                                 headers={"connection": "close"})

    return refuse


def provider_routes(spool: Spool, environ: Mapping[str, str] | None = None) -> tuple[list[Route], list[str]]:
    """Every provider's routes and the unsubscribe endpoint; those whose secret `environ` (default os.environ)
    does not set refuse every request. Returns the routes and the providers configured."""
    env = os.environ if environ is None else environ
    routes: list[Route] = []
    installed: list[str] = []
    for hook in HOOKS:
        secret = env.get(hook.secret_env)
        if not secret:
            routes.append(Route(hook.path, _not_configured(f"{hook.provider} webhooks"), methods=["GET", "POST"]))
            continue
        shared_key = env.get(hook.shared_key_env) if hook.shared_key_env else None
        routes.append(Route(hook.path, _post(hook, spool, secret, shared_key), methods=["POST"]))
        if hook.verify_env and env.get(hook.verify_env):
            routes.append(Route(hook.path, _handshake(env[hook.verify_env]), methods=["GET"]))
        installed.append(hook.provider)
    if env.get(UNSUBSCRIBE_ENV):
        routes += create_unsubscribe_routes(spool, env[UNSUBSCRIBE_ENV])
        installed.append("unsubscribe")
    else:
        routes.append(Route(UNSUBSCRIBE_PATH, _not_configured("unsubscribe"), methods=["GET", "POST"]))
    return routes, installed


_PATHS = {hook.path for hook in HOOKS} | {UNSUBSCRIBE_PATH}


def add_provider_routes(app: object, environ: Mapping[str, str] | None = None) -> list[str]:
    """Installs the provider routes on a receiver app (`create_receiver_app`) anew, with the secrets of
    `environ`, in place of those it has; returns the providers configured."""
    spool = app.state.spool  # type: ignore[attr-defined]
    routes, installed = provider_routes(spool, environ)
    kept = [r for r in app.router.routes if getattr(r, "path", None) not in _PATHS]  # type: ignore[attr-defined]
    app.router.routes[:] = [*kept, *routes]  # type: ignore[attr-defined]
    app.state.providers = ["whatsapp", *installed]  # type: ignore[attr-defined]
    return installed
