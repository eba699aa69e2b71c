"""A loopback stand-in for Viber's REST Bot API `POST /pa/send_message`: HTTP 200 with a `status` inside
for every answer (2 bad token, 3/4 bad or missing data, 5/6 receiver problems, 12 too many requests),
a seeded fate per receiver, and one signed callback per event (delivered, seen, failed)."""

from __future__ import annotations

import hmac
import itertools
import json
import random
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.channels.viber import MAX_SENDER_NAME, MAX_TEXT, STATUS_NAMES
from pipeline.channels.viber_webhooks import SIGNATURE_HEADER, sign
from pipeline.sandbox.common import Ledger, delays, fate_for
from pipeline.sandbox.kit import PosterSettings, Throttle

_TYPES = frozenset({"text", "picture", "video", "file", "url", "contact", "location", "sticker", "rich_media"})
FAILURE_DESCRIPTIONS = ("Unsupported device", "Message expired", "User blocked the bot")


class ViberSandboxConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    auth_token: str = Field(min_length=1, description="the bot's token; also keys the callback signature")
    webhook_url: str | None = None
    throughput_per_s: float = Field(default=500.0, gt=0, description="send_message calls per second per bot")
    fail_rate: float = Field(default=0.03, ge=0, le=1, description="share of receivers whose message fails later")
    read_rate: float = Field(default=0.6, ge=0, le=1)
    not_registered: frozenset[str] = Field(default=frozenset(), description="answered status 5")
    not_subscribed: frozenset[str] = Field(default=frozenset(), description="answered status 6")
    malformed: bool = Field(default=False, description="answer every send with an HTML page (a broken proxy)")
    webhook_delay_s: tuple[float, float] = (0.05, 0.3)
    webhook_retry_base_s: float = Field(default=0.2, gt=0)
    webhook_retry_max_s: float = Field(default=10.0, gt=0)
    seed: int = 0


def viber_status(code: int, **extra: Any) -> dict[str, Any]:
    return {"status": code, "status_message": STATUS_NAMES.get(code, "error"), **extra}


def _keyboard_ok(keyboard: Any) -> bool:
    """Viber's keyboard: `Type` keyboard and 1 to 24 buttons, each with an ActionType and an ActionBody."""
    buttons = keyboard.get("Buttons") if isinstance(keyboard, dict) else None
    return (keyboard.get("Type") == "keyboard" and isinstance(buttons, list) and 1 <= len(buttons) <= 24
            and all(isinstance(b, dict) and b.get("ActionType") in ("reply", "open-url", "none")
                    and isinstance(b.get("ActionBody"), str) and b["ActionBody"] for b in buttons))


class _Refused(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class ViberSandbox:
    def __init__(self, config: ViberSandboxConfig) -> None:
        self.config = config
        self._token = config.auth_token.encode()
        self._throttle = Throttle(config.throughput_per_s)
        self._rng = random.Random(config.seed)
        self._tokens = itertools.count(5_741_311_803_571_721_087)  # 64-bit, as Viber's message_token
        # Viber posts one event per request.
        settings = PosterSettings(batch=1, retry_base_s=config.webhook_retry_base_s,
                                  retry_max_s=config.webhook_retry_max_s)
        self.ledger = Ledger("12", config.webhook_url, self._render, settings)

    def _render(self, _url: str, events: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(events[0], separators=(",", ":")).encode()
        return body, {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, self.config.auth_token)}

    async def send_message(self, request: Request) -> Response:
        try:
            body = await self._checked(request)
            if not self._throttle.allow("bot"):
                raise _Refused(12)
            if self.config.malformed:
                return Response("<html><body>502 Bad Gateway</body></html>", media_type="text/html")
            receiver = body["receiver"]
            if receiver in self.config.not_registered:
                raise _Refused(5)
            if receiver in self.config.not_subscribed:
                raise _Refused(6)
        except _Refused as refused:
            self.ledger.rejected[str(refused.code)] += 1
            return JSONResponse(viber_status(refused.code))  # Viber answers 200 on errors
        return JSONResponse(self._accept(receiver, body.get("tracking_data")))

    async def _checked(self, request: Request) -> dict[str, Any]:
        token = request.headers.get("x-viber-auth-token", "").encode()
        if not hmac.compare_digest(token, self._token):
            raise _Refused(2)
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise _Refused(3) from None
        if not isinstance(body, dict):
            raise _Refused(3)
        sender = body.get("sender")
        if not body.get("receiver") or not body.get("type") or not isinstance(sender, dict) or not sender.get("name"):
            raise _Refused(4)
        if not isinstance(body["receiver"], str) or body["type"] not in _TYPES:
            raise _Refused(3)
        if body["type"] == "text" and not isinstance(body.get("text"), str):
            raise _Refused(4)
        if body["type"] == "picture" and (not str(body.get("media", "")).startswith(("http://", "https://"))
                                          or len(str(body.get("text") or "")) > 768):
            raise _Refused(3)  # Viber: a picture needs its URL; its text is at most 768 characters
        if "keyboard" in body and not _keyboard_ok(body["keyboard"]):
            raise _Refused(3)
        tracking = body.get("tracking_data")
        too_long = len(body.get("text") or "") > MAX_TEXT or len(str(sender["name"])) > MAX_SENDER_NAME
        if too_long or (tracking is not None and (not isinstance(tracking, str) or len(tracking) > 4096)):
            raise _Refused(3)
        if any(key.startswith("_") for key in body):
            raise _Refused(3)  # our private keys (e.g. `_label`) must never reach Viber
        return body

    def _accept(self, receiver: str, tracking_data: str | None) -> dict[str, Any]:
        token = next(self._tokens)
        fate = fate_for(self.config.seed, receiver, fail_rate=self.config.fail_rate, read_rate=self.config.read_rate)
        self.ledger.accept(str(token), receiver, tracking_data, fate.final)
        if self.ledger.poster:
            steps = ["failed"] if fate.final == "failed" else ["delivered"] + (["seen"] if fate.final == "read" else [])
            now_ms = int(time.time() * 1000)
            for step, offset in zip(steps, delays(len(steps), self.config.webhook_delay_s, self._rng), strict=True):
                event: dict[str, Any] = {"event": step, "timestamp": now_ms + int(offset * 1000),
                                         "chat_hostname": "SN-CHAT-01_", "message_token": token, "user_id": receiver}
                if step == "failed":
                    event["desc"] = FAILURE_DESCRIPTIONS[int(fate.pick * len(FAILURE_DESCRIPTIONS))]
                self.ledger.schedule(offset, event, step)
        return viber_status(0, message_token=token, chat_hostname="SN-CHAT-01_", billing_status=1)

    async def inbound(self, request: Request) -> JSONResponse:
        """`POST /_sandbox/inbound {"from", "text"}` (or `"event": "unsubscribed"`): a signed user event."""
        try:
            doc = json.loads(await request.body())
        except ValueError:
            doc = None
        if not (isinstance(doc, dict) and all(doc.get(k) for k in ("from",))):
            return JSONResponse({"error": "expected a JSON object with from"}, status_code=400)
        if not self.ledger.poster:
            return JSONResponse({"error": "no webhook_url configured"}, status_code=409)
        at, user = int(time.time() * 1000), str(doc["from"])
        event: dict[str, Any]
        if doc.get("event") == "unsubscribed":
            event = {"event": "unsubscribed", "timestamp": at, "user_id": user, "message_token": next(self._tokens)}
        else:
            event = {"event": "message", "timestamp": at, "message_token": next(self._tokens),
                     "sender": {"id": user, "name": "Sandbox user"},
                     "message": {"type": "text", "text": str(doc.get("text", ""))}}
        self.ledger.schedule(0.0, event, event["event"])
        return JSONResponse({"scheduled": 1})


def create_viber_app(config: ViberSandboxConfig) -> Starlette:
    """The sandbox as an ASGI app; `app.state.sandbox` gives tests its state (`.ledger`)."""
    sandbox = ViberSandbox(config)
    routes = [
        Route("/pa/send_message", sandbox.send_message, methods=["POST"]),
        Route("/_sandbox/inbound", sandbox.inbound, methods=["POST"]),
        *sandbox.ledger.routes(),
    ]
    app = Starlette(routes=routes, lifespan=sandbox.ledger.lifespan)
    app.state.sandbox = sandbox
    return app
