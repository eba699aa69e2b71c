"""A loopback stand-in for Twilio's Messages API (`POST /2010-04-01/Accounts/{sid}/Messages.json`):
Basic auth, form validation, Twilio's 201 and error bodies, a throughput limit answering 429/20429,
signed status callbacks to each message's StatusCallback, and STOP replies to an inbound URL."""

from __future__ import annotations

import base64
import contextlib
import hmac
import random
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipeline.channels.twilio_webhooks import CORRELATION_PARAM, sign
from pipeline.render.segments import count_segments
from pipeline.sandbox.kit import CallbackPoster, PosterSettings, Render, Tally, Throttle, draws, pick

API_VERSION = "2010-04-01"
_E164 = re.compile(r"\+[1-9]\d{6,14}")
_ALPHANUMERIC = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_SHORT_CODE = re.compile(r"\d{5,6}")

# Refusals at the API, per recipient (unsubscribed, landline, region not enabled).
API_REFUSALS: tuple[tuple[int, float], ...] = ((21610, 0.4), (21635, 0.4), (21408, 0.2))
# Failures reported later by status callback: unreachable, unknown handset, landline/unreachable carrier.
DELIVERY_FAILURES: tuple[tuple[int, float], ...] = ((30003, 0.5), (30005, 0.3), (30006, 0.2))
MESSAGES = {
    20003: "Authenticate", 20404: "The requested resource {path} was not found", 20429: "Too Many Requests",
    21211: "Invalid 'To' Phone Number: {to}", 21212: "Invalid From Number (caller ID): {from_}",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}",
    21602: "Message body is required.", 21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21606: "The From phone number {from_} is not a valid, SMS-capable inbound phone number or short code "
           "for your account.",
    21609: "Invalid StatusCallback: {callback}", 21610: "Attempt to send to unsubscribed recipient",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    21635: "'To' number cannot be a landline: {to}",
}


class TwilioSandboxConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: str = Field(min_length=1, description="Basic auth password; signs every callback")
    throughput_per_s: float = Field(default=100.0, gt=0, description="API requests per second per account")
    senders: list[str] | None = Field(default=None, description="From values the account owns; None: any")
    refuse_rate: float = Field(default=0.02, ge=0, le=1, description="recipients refused at the API")
    fail_rate: float = Field(default=0.04, ge=0, le=1, description="accepted, then undelivered/failed")
    stop_rate: float = Field(default=0.0, ge=0, le=1, description="recipients who reply STOP")
    inbound_url: str | None = Field(default=None, description="the number's incoming-message webhook")
    webhook_delay_s: tuple[float, float] = (0.05, 0.3)
    webhook_retry_base_s: float = Field(default=0.2, gt=0)
    webhook_retry_max_s: float = Field(default=10.0, gt=0)
    webhook_concurrency: int = Field(default=8, ge=1)
    seed: int = 0

    def outcome(self, to: str) -> SmsFate:
        """The fate the sandbox gives every message to `to` under this config."""
        u = draws(self.seed, "twilio|" + to)
        if u[0] < self.refuse_rate:
            return SmsFate(refusal=pick(u[1], API_REFUSALS), final="failed", error_code=None, replies_stop=False)
        if u[2] < self.fail_rate:
            code = pick(u[1], DELIVERY_FAILURES)
            return SmsFate(None, "failed" if code == 30005 else "undelivered", code, replies_stop=False)
        return SmsFate(None, "delivered", None, replies_stop=u[3] < self.stop_rate)


@dataclass(frozen=True)
class SmsFate:
    refusal: int | None  # a Twilio error code the API answers with, instead of 201
    final: Literal["delivered", "undelivered", "failed"]
    error_code: int | None  # on undelivered / failed callbacks
    replies_stop: bool


def twilio_error(code: int, status: int, **values: str) -> JSONResponse:
    message = MESSAGES.get(code, "Error").format(**{"to": "", "from_": "", "path": "", "callback": "", **values})
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}
    return JSONResponse(body, status_code=status)


class _Refused(Exception):
    def __init__(self, code: int, status: int = 400, **values: str) -> None:
        self.code, self.status, self.values = code, status, values


def _new_sid() -> str:
    return "SM" + secrets.token_hex(16)


def _form_render(auth_token: str) -> Render:
    """One callback per POST, form-encoded and signed as Twilio signs: over the URL and the params."""

    def render(url: str, items: list[Any]) -> tuple[bytes, dict[str, str]]:
        params: dict[str, str] = items[0]
        return urlencode(params).encode("ascii"), {
            "Content-Type": "application/x-www-form-urlencoded",
            "User-Agent": "TwilioProxy/1.1",
            "X-Twilio-Signature": sign(url, params, auth_token),
        }

    return render


class TwilioSandbox:
    def __init__(self, config: TwilioSandboxConfig) -> None:
        self.config = config
        basic = base64.b64encode(f"{config.account_sid}:{config.auth_token}".encode()).decode("ascii")
        self._auth = f"Basic {basic}".encode()
        self._throttle = Throttle(config.throughput_per_s)
        self._rng = random.Random(config.seed)
        self.tally = Tally(throttle_code="20429")
        self.opted_out: set[str] = set()  # numbers that replied STOP: later sends answer 21610
        # Twilio posts one callback per request, so the batch is 1.
        self.poster = CallbackPoster(_form_render(config.auth_token), PosterSettings(
            batch=1, retry_base_s=config.webhook_retry_base_s, retry_max_s=config.webhook_retry_max_s,
            concurrency=config.webhook_concurrency))

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with self.poster.running():
            yield

    async def send(self, request: Request) -> JSONResponse:
        try:
            form = await self._checked_form(request)
            fate = self.config.outcome(form["To"])
            if form["To"] in self.opted_out:
                raise _Refused(21610)
            if fate.refusal is not None:
                raise _Refused(fate.refusal, to=form["To"])
        except _Refused as refused:
            self.tally.rejected[str(refused.code)] += 1
            return twilio_error(refused.code, refused.status, **refused.values)
        return JSONResponse(self._accept(form, fate), status_code=201)

    async def _checked_form(self, request: Request) -> dict[str, str]:
        """Twilio's order: auth (401/20003), the account in the path, the rate limit, then the form."""
        if not hmac.compare_digest(request.headers.get("authorization", "").encode(), self._auth):
            raise _Refused(20003, 401)
        if request.path_params["account_sid"] != self.config.account_sid:
            raise _Refused(20404, 404, path=request.url.path)
        if not self._throttle.allow(self.config.account_sid):
            raise _Refused(20429, 429)
        try:
            form = dict(parse_qsl((await request.body()).decode("utf-8"), keep_blank_values=True))
        except (UnicodeDecodeError, ValueError):
            form = {}
        to, from_, body = form.get("To", ""), form.get("From", ""), form.get("Body", "")
        if not to:
            raise _Refused(21604)
        if not _E164.fullmatch(to):
            raise _Refused(21211, to=to)
        if not from_:
            raise _Refused(21603)
        if not (_E164.fullmatch(from_) or _ALPHANUMERIC.fullmatch(from_) or _SHORT_CODE.fullmatch(from_)):
            raise _Refused(21212, from_=from_)
        if self.config.senders is not None and from_ not in self.config.senders:
            raise _Refused(21606, from_=from_)
        if not body:
            raise _Refused(21602)
        if len(body) > 1600:
            raise _Refused(21617)
        callback = form.get("StatusCallback")
        if callback is not None and urlsplit(callback).scheme not in ("http", "https"):
            raise _Refused(21609, callback=callback)
        return form

    def _accept(self, form: dict[str, str], fate: SmsFate) -> dict[str, Any]:
        sid, now = _new_sid(), datetime.now(UTC)
        callback = form.get("StatusCallback")
        correlation = dict(parse_qsl(urlsplit(callback).query)).get(CORRELATION_PARAM) if callback else None
        segments = count_segments(form["Body"]).segments
        self.tally.accepted += 1
        self.tally.correlation(correlation)
        self.tally.messages.append({"id": sid, "to": form["To"], "from": form["From"], "correlation_id": correlation,
                                    "outcome": fate.final, "error_code": fate.error_code, "segments": segments})
        self._schedule(sid, form, fate, callback)
        date = format_datetime(now)
        return {
            "account_sid": self.config.account_sid, "api_version": API_VERSION, "body": form["Body"],
            "date_created": date, "date_sent": None, "date_updated": date, "direction": "outbound-api",
            "error_code": None, "error_message": None, "from": form["From"], "messaging_service_sid": None,
            "num_media": "0", "num_segments": str(segments), "price": None, "price_unit": "USD", "sid": sid,
            "status": "queued", "subresource_uris": {
                "media": f"/{API_VERSION}/Accounts/{self.config.account_sid}/Messages/{sid}/Media.json"},
            "to": form["To"], "uri": f"/{API_VERSION}/Accounts/{self.config.account_sid}/Messages/{sid}.json",
        }

    def _schedule(self, sid: str, form: dict[str, str], fate: SmsFate, callback: str | None) -> None:
        """sent -> delivered | undelivered, or failed alone; then maybe a STOP reply."""
        steps = ["failed"] if fate.final == "failed" else ["sent", fate.final]
        delay = 0.0
        common = {"AccountSid": self.config.account_sid, "ApiVersion": API_VERSION, "From": form["From"],
                  "To": form["To"], "MessageSid": sid, "SmsSid": sid}
        for step in steps:
            delay += self._rng.uniform(*self.config.webhook_delay_s)
            if not callback:
                continue
            params = {**common, "MessageStatus": step, "SmsStatus": step}
            if step in ("failed", "undelivered") and fate.error_code is not None:
                params["ErrorCode"] = str(fate.error_code)
            if step in ("delivered", "undelivered"):
                params["RawDlrDoneDate"] = time.strftime("%y%m%d%H%M", time.gmtime())
            self.poster.schedule(delay, callback, params, label=step)
        if fate.replies_stop and self.config.inbound_url:
            self.opted_out.add(form["To"])
            reply_sid = _new_sid()
            self.poster.schedule(delay + 0.05, self.config.inbound_url, {
                "AccountSid": self.config.account_sid, "ApiVersion": API_VERSION, "MessageSid": reply_sid,
                "SmsSid": reply_sid, "SmsMessageSid": reply_sid, "From": form["To"], "To": form["From"],
                "Body": "STOP", "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received", "OptOutType": "STOP",
            }, label="inbound")

    async def stats(self, request: Request) -> JSONResponse:
        with_messages = request.query_params.get("messages", "1").lower() not in ("0", "false", "no")
        return JSONResponse(self.tally.snapshot(self.poster, with_messages))

    async def drain(self, request: Request) -> JSONResponse:
        """Waits (up to `?timeout=` seconds, default 30) until every callback is acknowledged."""
        try:
            timeout = float(request.query_params.get("timeout", "30"))
        except ValueError:
            return JSONResponse({"code": 21000, "message": "timeout must be a number", "status": 400}, 400)
        drained = await self.poster.drain(timeout)
        return JSONResponse({"drained": drained, **self.tally.snapshot(self.poster, with_messages=False)})


def create_twilio_app(config: TwilioSandboxConfig) -> Starlette:
    """The sandbox as an ASGI app; `app.state.sandbox` gives tests direct access to its state."""
    sandbox = TwilioSandbox(config)
    routes = [
        Route(f"/{API_VERSION}/Accounts/{{account_sid}}/Messages.json", sandbox.send, methods=["POST"]),
        Route("/_sandbox/stats", sandbox.stats, methods=["GET"]),
        Route("/_sandbox/drain", sandbox.drain, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=sandbox.lifespan)
    app.state.sandbox = sandbox
    return app
