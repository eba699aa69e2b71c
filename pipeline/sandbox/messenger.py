"""A loopback stand-in for Meta's Send API (`POST /{version}/{PAGE_ID|IG_ID}/messages`) for Messenger or
Instagram: token and body checks, Meta's error bodies (613 throttling, 551 unavailable, 10/2018278
outside the window), a seeded fate per PSID and signed delivery/read webhooks."""

from __future__ import annotations

import hmac
import itertools
import json
import random
import re
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.audience.windows import TAG_WINDOW_H
from pipeline.channels.messenger import MESSAGE_TAGS, MESSAGING_TYPES
from pipeline.channels.whatsapp_webhooks import sign
from pipeline.sandbox.common import Ledger, delays, fate_for
from pipeline.sandbox.kit import PosterSettings, Throttle

_VERSION = re.compile(r"v\d+\.\d+")
OUTSIDE_WINDOW = (10, 2018278, "(#10) This message is sent outside of allowed window.")
UNAVAILABLE = (551, 1545041, "(#551) This person isn't available right now.")
THROTTLED = (613, None, "(#613) Calls to this api have exceeded the rate limit.")


class MessengerSandboxConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    platform: Literal["messenger", "instagram"] = "messenger"
    access_token: str = Field(min_length=1)
    app_secret: str = Field(min_length=1, description="signs webhooks (X-Hub-Signature-256)")
    webhook_url: str | None = None
    throughput_per_s: float = Field(default=300.0, gt=0, description="Send API calls per second per Page / account")
    fail_rate: float = Field(default=0.02, ge=0, le=1, description="share of PSIDs answered 551 (unavailable)")
    read_rate: float = Field(default=0.6, ge=0, le=1)
    outside_window: frozenset[str] = Field(default=frozenset(), description="PSIDs past their 24 h window")
    # Hours since each user's last message (None: never wrote), for the tags' own windows; users not
    # listed are not judged (Meta's tag reference: HUMAN_AGENT 7 days, no tag for a user who never wrote).
    last_message_age_h: dict[str, float | None] = Field(default_factory=dict)
    unavailable: frozenset[str] = frozenset()
    malformed: bool = Field(default=False, description="answer every send with an HTML page (a broken proxy)")
    webhook_delay_s: tuple[float, float] = (0.05, 0.3)
    webhook_batch: int = Field(default=50, ge=1, le=1000)
    webhook_retry_base_s: float = Field(default=0.2, gt=0)
    webhook_retry_max_s: float = Field(default=10.0, gt=0)
    seed: int = 0

    @property
    def max_text(self) -> int:
        return 1000 if self.platform == "instagram" else 2000


# Send API attachment types by platform (Meta's Send API and Instagram Messaging references).
ATTACHMENT_TYPES = {"messenger": frozenset({"image", "video", "audio", "file", "template"}),
                    "instagram": frozenset({"image", "video", "audio", "template"})}


def _quick_replies_problem(replies: Any) -> str | None:
    """Meta: at most 13 quick replies; a text one has a title (at most 20 characters) and a payload (1000)."""
    if replies is None:
        return None
    if not isinstance(replies, list) or not 1 <= len(replies) <= 13:
        return "param message[quick_replies] must hold 1 to 13 items"
    for reply in replies:
        if not isinstance(reply, dict) or reply.get("content_type") not in ("text", "user_phone_number",
                                                                             "user_email"):
            return "param message[quick_replies][content_type] is not valid"
        if reply["content_type"] == "text" and not (
                isinstance(reply.get("title"), str) and 0 < len(reply["title"]) <= 20
                and isinstance(reply.get("payload"), str) and 0 < len(reply["payload"]) <= 1000):
            return "param message[quick_replies] text items need a title (<= 20) and a payload (<= 1000)"
    return None


def _template_type(message: Any) -> str | None:
    attachment = message.get("attachment") if isinstance(message, dict) else None
    payload = attachment.get("payload") if isinstance(attachment, dict) else None
    return payload.get("template_type") if isinstance(payload, dict) else None


def graph_error(code: int, subcode: int | None, message: str) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["fbtrace_id"] = secrets.token_urlsafe(17)
    return {"error": error}


class _Refused(Exception):
    def __init__(self, status: int, code: int, subcode: int | None, message: str) -> None:
        self.status, self.code, self.body = status, code, graph_error(code, subcode, message)


class MessengerSandbox:
    def __init__(self, config: MessengerSandboxConfig) -> None:
        self.config = config
        self.object = "instagram" if config.platform == "instagram" else "page"
        self._auth = f"Bearer {config.access_token}".encode()
        self._throttle = Throttle(config.throughput_per_s)
        self._rng = random.Random(config.seed)
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(6)
        settings = PosterSettings(batch=config.webhook_batch, retry_base_s=config.webhook_retry_base_s,
                                  retry_max_s=config.webhook_retry_max_s)
        self.ledger = Ledger(str(THROTTLED[0]), config.webhook_url, self._render, settings)

    def _render(self, _url: str, items: list[tuple[str, dict[str, Any]]]) -> tuple[bytes, dict[str, str]]:
        """One POST: Meta's envelope with one entry per Page / account, its events in order."""
        by_account: dict[str, list[dict[str, Any]]] = {}
        for account_id, event in items:
            by_account.setdefault(account_id, []).append(event)
        now_ms = int(time.time() * 1000)
        doc = {"object": self.object,
               "entry": [{"id": a, "time": now_ms, "messaging": events} for a, events in by_account.items()]}
        body = json.dumps(doc, separators=(",", ":")).encode()
        return body, {"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, self.config.app_secret)}

    async def send(self, request: Request) -> Response:
        account_id = request.path_params["account_id"]
        try:
            body = await self._checked(request)
            if not self._throttle.allow(account_id):
                raise _Refused(400, *THROTTLED)
            if self.config.malformed:
                return Response("<html><body>502 Bad Gateway</body></html>", media_type="text/html")
            psid = body["recipient"]["id"]
            if psid in self.config.outside_window and body.get("messaging_type") != "MESSAGE_TAG":
                raise _Refused(400, *OUTSIDE_WINDOW)
            if body.get("messaging_type") == "MESSAGE_TAG" and psid in self.config.last_message_age_h:
                age = self.config.last_message_age_h[psid]
                if age is None or age > TAG_WINDOW_H.get(body["tag"], float("inf")):
                    raise _Refused(400, *OUTSIDE_WINDOW)
            fate = fate_for(self.config.seed, psid, fail_rate=self.config.fail_rate, read_rate=self.config.read_rate)
            if psid in self.config.unavailable or fate.final == "failed":
                raise _Refused(400, *UNAVAILABLE)
        except _Refused as refused:
            self.ledger.rejected[str(refused.code)] += 1
            return JSONResponse(refused.body, status_code=refused.status)
        return JSONResponse(self._accept(account_id, psid, fate.final))

    async def _checked(self, request: Request) -> dict[str, Any]:
        token = request.headers.get("authorization", "")
        if not token and request.query_params.get("access_token"):
            token = f"Bearer {request.query_params['access_token']}"
        if not hmac.compare_digest(token.encode(), self._auth):
            raise _Refused(401, 190, None, "Invalid OAuth access token - Cannot parse access token")
        if not _VERSION.fullmatch(request.path_params["version"]):
            raise _Refused(400, 2500, None, f"Unknown path components: /{request.path_params['version']}")
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise _Refused(400, 100, None, "(#100) Request body is not valid JSON") from None
        problem = self._problem(body)
        if problem:
            raise _Refused(400, 100, None, f"(#100) {problem}")
        return body

    def _problem(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "The request body must be an object"
        recipient = body.get("recipient")
        if not isinstance(recipient, dict) or not isinstance(recipient.get("id"), str) or not recipient["id"]:
            return "param recipient[id] must be a non-empty string"
        kind = body.get("messaging_type")
        if kind is None and self.config.platform == "messenger":
            return "param messaging_type is required"
        if kind is not None and kind not in MESSAGING_TYPES:
            return f"param messaging_type must be one of {sorted(MESSAGING_TYPES)}"
        if kind == "MESSAGE_TAG" and body.get("tag") not in MESSAGE_TAGS:
            return "param tag must be a valid message tag when messaging_type is MESSAGE_TAG"
        if body.get("tag") == "CUSTOMER_FEEDBACK" and _template_type(body.get("message")) != "customer_feedback":
            return "the CUSTOMER_FEEDBACK tag may only be used with the Customer Feedback template"
        message = body.get("message")
        if not isinstance(message, dict):
            return "param message must be an object"
        if "attachment" in message:
            return self._attachment_problem(message)
        if not isinstance(message.get("text"), str) or not message["text"]:
            return "param message[text] must be a non-empty string"
        if len(message["text"]) > self.config.max_text:
            return f"param message[text] must be at most {self.config.max_text} characters"
        return _quick_replies_problem(message.get("quick_replies"))

    def _attachment_problem(self, message: dict[str, Any]) -> str | None:
        """Meta's attachment: a type (Instagram takes no `file`) and a payload with a URL (or a template)."""
        attachment = message["attachment"]
        kinds = ATTACHMENT_TYPES[self.config.platform]
        if "text" in message or not isinstance(attachment, dict) or attachment.get("type") not in kinds:
            return f"param message[attachment][type] must be one of {sorted(kinds)}, without message[text]"
        payload = attachment.get("payload")
        if attachment["type"] == "template":
            return None if isinstance(payload, dict) and payload.get("template_type") else \
                "param message[attachment][payload][template_type] is required"
        if not isinstance(payload, dict) or not str(payload.get("url", "")).startswith(("http://", "https://")):
            return "param message[attachment][payload][url] must be a URL"
        return _quick_replies_problem(message.get("quick_replies"))

    def _accept(self, account_id: str, psid: str, final: str) -> dict[str, Any]:
        mid = f"m_{self._prefix}{next(self._ids):012d}"
        # No correlation id on the Send API: a repeated PSID is what counts as a duplicate send.
        self.ledger.accept(mid, psid, None, final, dedupe_key=psid)
        if self.ledger.poster:
            now_ms = int(time.time() * 1000)
            read = final == "read"
            head = {"sender": {"id": psid}, "recipient": {"id": account_id}}
            if self.object == "page":
                offsets = delays(2 if read else 1, self.config.webhook_delay_s, self._rng)
                at = now_ms + int(offsets[0] * 1000)
                self.ledger.schedule(offsets[0], (account_id, {**head, "delivery": {"mids": [mid], "watermark": at}}),
                                     "delivered")
                if read:
                    # Messenger's read event carries only a watermark: "all up to here was read".
                    at = now_ms + int(offsets[1] * 1000)
                    self.ledger.schedule(offsets[1], (account_id, {**head, "timestamp": at, "read": {"watermark": at}}),
                                         "read")
            elif read:  # Instagram reports no deliveries; messaging_seen names the message
                offset = delays(1, self.config.webhook_delay_s, self._rng)[0]
                at = now_ms + int(offset * 1000)
                self.ledger.schedule(offset, (account_id, {**head, "timestamp": at, "read": {"mid": mid}}), "read")
        return {"recipient_id": psid, "message_id": mid}

    async def inbound(self, request: Request) -> JSONResponse:
        """`POST /_sandbox/inbound {"account_id", "from", "text"}`: a user's message, posted as a signed webhook."""
        try:
            doc = json.loads(await request.body())
        except ValueError:
            doc = None
        if not (isinstance(doc, dict) and all(doc.get(k) for k in ("account_id", "from"))):
            return JSONResponse({"error": "expected a JSON object with account_id and from"}, status_code=400)
        if not self.ledger.poster:
            return JSONResponse({"error": "no webhook_url configured"}, status_code=409)
        at = int(time.time() * 1000)
        event = {"sender": {"id": str(doc["from"])}, "recipient": {"id": str(doc["account_id"])}, "timestamp": at,
                 "message": {"mid": f"m_in{self._prefix}{next(self._ids):012d}", "text": str(doc.get("text", ""))}}
        self.ledger.schedule(0.0, (str(doc["account_id"]), event), "inbound")
        return JSONResponse({"scheduled": 1})


def create_messenger_app(config: MessengerSandboxConfig) -> Starlette:
    """The sandbox as an ASGI app; `app.state.sandbox` gives tests its state (`.ledger`)."""
    sandbox = MessengerSandbox(config)
    routes = [
        Route("/{version}/{account_id}/messages", sandbox.send, methods=["POST"]),
        Route("/_sandbox/inbound", sandbox.inbound, methods=["POST"]),
        *sandbox.ledger.routes(),
    ]
    app = Starlette(routes=routes, lifespan=sandbox.ledger.lifespan)
    app.state.sandbox = sandbox
    return app
