"""A real SMTP server on loopback (aiosmtpd) standing in for the mail relay: it accepts or refuses each
recipient by a seeded fate (550 5.1.1 for some), answers 421 past its throughput limit, checks the
message (multipart text + HTML, RFC 8058 headers), keeps what it received, and posts signed
delivered/bounced reports to the receiver (format in pipeline/channels/email_webhooks.py)."""

from __future__ import annotations

import asyncio
import hmac
import json
import random
import re
import secrets
from concurrent.futures import Future
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipeline.sandbox.kit import CallbackPoster, PosterSettings, Tally, Throttle, draws, pick

SIGNATURE_HEADER = "X-Email-Signature"
# Bounces after acceptance: (DSN status, SMTP code, diagnostic), weighted.
BOUNCES: tuple[tuple[tuple[str, int, str], float], ...] = (
    (("5.1.1", 550, "smtp; 550 5.1.1 The email account that you tried to reach does not exist"), 0.7),
    (("5.2.2", 552, "smtp; 552 5.2.2 The recipient's inbox is out of storage space"), 0.3),
)
_HTTP_URI = re.compile(r"<https?://[^>\s]+>")
Fate = Literal["rejected", "bounced", "delivered"]


class SmtpSandboxConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    webhook_secret: str = Field(min_length=1, description="signs the delivery reports")
    webhook_url: str | None = Field(default=None, description="where delivery reports are POSTed")
    username: str | None = Field(default=None, description="with password: AUTH required before MAIL")
    password: str | None = None
    throughput_per_s: float = Field(default=200.0, gt=0, description="messages per second, server-wide")
    reject_rate: float = Field(default=0.02, ge=0, le=1, description="recipients refused at RCPT with 550")
    bounce_rate: float = Field(default=0.03, ge=0, le=1, description="accepted, then a bounce report")
    require_one_click: bool = Field(default=True, description="refuse mail without RFC 8058 headers, multipart")
    malformed_reply: bool = Field(default=False, description="answer DATA with a line that is no SMTP reply")
    reply_delay_s: float = Field(default=0.0, ge=0, le=60, description="wait after taking a message, then reply")
    report_delivered: bool = True
    report_delay_s: tuple[float, float] = (0.05, 0.3)
    report_batch: int = Field(default=50, ge=1)
    report_retry_base_s: float = Field(default=0.2, gt=0)
    report_retry_max_s: float = Field(default=10.0, gt=0)
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0: a free port")

    def outcome(self, address: str) -> Fate:
        u = draws(self.seed, "smtp|" + address.lower())
        if u[0] < self.reject_rate:
            return "rejected"
        return "bounced" if u[1] < self.bounce_rate else "delivered"


class _Controller(Controller):
    """aiosmtpd's threaded controller, able to bind port 0 (it probes the port it was given)."""

    def _trigger_server(self) -> None:
        if self.port == 0 and self.server is not None:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def problems_of(message: EmailMessage) -> list[str]:
    """What a bulk sender's message lacks: the checks Gmail/Yahoo apply, and ours."""
    problems = [f"missing {h}" for h in ("From", "To", "Subject", "Message-ID", "Date") if not message[h]]
    if not _HTTP_URI.search(str(message.get("List-Unsubscribe", ""))):
        problems.append("List-Unsubscribe has no http(s) URI")
    if str(message.get("List-Unsubscribe-Post", "")).strip() != "List-Unsubscribe=One-Click":
        problems.append("List-Unsubscribe-Post is not List-Unsubscribe=One-Click")
    types = [part.get_content_type() for part in message.iter_parts()] if message.is_multipart() else []
    if message.get_content_type() != "multipart/alternative" or not {"text/plain", "text/html"} <= set(types):
        problems.append("not multipart/alternative with text/plain and text/html")
    return problems


class SmtpSandbox:
    """Start with `start()` (or `with SmtpSandbox(config) as sandbox:`); `url` is `smtp://127.0.0.1:<port>`."""

    def __init__(self, config: SmtpSandboxConfig) -> None:
        self.config = config
        self.tally = Tally(throttle_code="421")
        self.received: list[bytes] = []  # every accepted message, as it came in
        self._throttle = Throttle(config.throughput_per_s)
        self._rng = random.Random(config.seed)
        secret = config.webhook_secret.encode()

        def render(url: str, reports: list[Any]) -> tuple[bytes, dict[str, str]]:
            body = json.dumps({"object": "email_report", "reports": reports}, separators=(",", ":")).encode()
            signature = "sha256=" + hmac.new(secret, body, "sha256").hexdigest()
            return body, {"Content-Type": "application/json", SIGNATURE_HEADER: signature}

        self.poster = CallbackPoster(render, PosterSettings(
            batch=config.report_batch, retry_base_s=config.report_retry_base_s,
            retry_max_s=config.report_retry_max_s))
        auth = config.username is not None and config.password is not None
        # AUTH without TLS is fine on loopback; AUTH is enforced in handle_MAIL, since aiosmtpd's own
        # auth_required warns (and the test suite turns warnings into errors).
        self._controller = _Controller(
            self, hostname=config.host, port=config.port, auth_require_tls=False,
            authenticator=self._authenticate if auth else None, ready_timeout=10.0,
        )

    # ------------------------------------------------------------------ lifecycle (caller's thread)

    def start(self) -> SmtpSandbox:
        if not self.config.host.startswith("127."):
            raise ValueError(f"the SMTP sandbox binds to loopback only, not {self.config.host!r}")
        self._controller.start()
        self._run(self.poster.start()).result(timeout=10)
        return self

    def stop(self) -> None:
        self._run(self.poster.stop()).result(timeout=10)
        self._controller.stop()

    def __enter__(self) -> SmtpSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return int(self._controller.port)

    @property
    def url(self) -> str:
        return f"smtp://{self.config.host}:{self.port}"

    def _run(self, coro: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self._controller.loop)

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Waits until every report is acknowledged by the receiver (call from any other thread)."""
        return bool(self._run(self.poster.drain(timeout_s)).result(timeout=timeout_s + 5))

    def stats(self, with_messages: bool = True) -> dict[str, Any]:
        return self.tally.snapshot(self.poster, with_messages)

    def messages(self) -> list[EmailMessage]:
        parser = BytesParser(policy=default_policy)
        return [parser.parsebytes(raw) for raw in list(self.received)]  # type: ignore[misc]

    # ------------------------------------------------------------------ SMTP hooks (server loop)

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and hmac.compare_digest(
            auth_data.login, (self.config.username or "").encode()) and hmac.compare_digest(
            auth_data.password, (self.config.password or "").encode())
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 235 or 535

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.config.username is not None and not session.authenticated:
            self.tally.rejected["530"] += 1
            return "530 5.7.0 Authentication required"
        if not self._throttle.allow():
            self.tally.rejected["421"] += 1
            # 421 closes the connection (RFC 5321 §3.8); the client reconnects after backing off.
            asyncio.get_running_loop().call_soon(server.transport.close)
            return "421 4.7.0 Throughput limit reached, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.config.outcome(address) == "rejected":
            self.tally.rejected["550"] += 1
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        message: EmailMessage = BytesParser(policy=default_policy).parsebytes(raw)  # type: ignore[assignment]
        problems = problems_of(message)
        if problems and self.config.require_one_click:
            self.tally.rejected["550"] += 1
            return "550 5.7.1 Message rejected: " + "; ".join(problems)
        queue_id = secrets.token_hex(6).upper()
        self.received.append(raw)
        header_id = str(message.get("Message-ID", ""))
        correlation = header_id.strip().strip("<>").split("@")[0] or None
        for rcpt in envelope.rcpt_tos:
            self.tally.accepted += 1
            self.tally.correlation(correlation)
            fate = self.config.outcome(rcpt)
            bounce = pick(draws(self.config.seed, "bounce|" + rcpt.lower())[0], BOUNCES) if fate == "bounced" else None
            self.tally.messages.append({"id": queue_id, "to": rcpt, "correlation_id": correlation, "outcome": fate,
                                        "error_code": bounce[0] if bounce else None})
            self._report(queue_id, header_id, rcpt, bounce)
        if self.config.reply_delay_s:
            await asyncio.sleep(self.config.reply_delay_s)  # taken, but the client may time out first
        if self.config.malformed_reply:
            return "Message accepted for delivery"  # no reply code: not SMTP
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _report(self, queue_id: str, header_id: str, rcpt: str, bounce: tuple[str, int, str] | None) -> None:
        if not self.config.webhook_url or (bounce is None and not self.config.report_delivered):
            return
        report = {"event": "bounced" if bounce else "delivered", "message_id": header_id, "queue_id": queue_id,
                  "recipient": rcpt, "smtp_code": bounce[1] if bounce else 250,
                  "status": bounce[0] if bounce else "2.0.0",
                  "diagnostic": bounce[2] if bounce else "smtp; 250 2.0.0 OK",
                  "timestamp": datetime.now(UTC).isoformat()}
        delay = self._rng.uniform(*self.config.report_delay_s)
        self.poster.schedule(delay, self.config.webhook_url, report, label=report["event"])


def create_smtp_stats_app(sandbox: SmtpSandbox) -> Starlette:
    """`/_sandbox/stats` and `/_sandbox/drain` over HTTP, like the other sandboxes (the SMTP server runs apart)."""

    async def stats(request: Request) -> JSONResponse:
        with_messages = request.query_params.get("messages", "1").lower() not in ("0", "false", "no")
        return JSONResponse(sandbox.stats(with_messages))

    async def drain(request: Request) -> JSONResponse:
        try:
            timeout = float(request.query_params.get("timeout", "30"))
        except ValueError:
            return JSONResponse({"error": "timeout must be a number"}, 400)
        drained = await asyncio.wrap_future(sandbox._run(sandbox.poster.drain(timeout)))
        return JSONResponse({"drained": drained, **sandbox.stats(with_messages=False)})

    app = Starlette(routes=[Route("/_sandbox/stats", stats, methods=["GET"]),
                            Route("/_sandbox/drain", drain, methods=["POST"])])
    app.state.sandbox = sandbox
    return app
