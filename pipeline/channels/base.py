"""What every channel provides: build its wire request, send a batch, classify the answers.

Providers never sleep and never retry; the dispatcher owns rate limits, retries and backoff.
"""

from __future__ import annotations

import urllib.request
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from functools import cache
from ssl import SSLContext
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict

from pipeline.spec import TemplateSpec

# unknown: the request may have reached the provider (a timeout after it left): never resent
# before receipts have had their chance to name it.
OutcomeKind = Literal["sent", "retry", "permanent", "stop", "unknown"]


class SendOutcome(BaseModel):
    """The classified answer to one message's send request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: OutcomeKind
    provider_message_id: str | None = None
    error_code: str | None = None
    error_detail: str | None = None
    retry_after_s: float | None = None  # from Retry-After, when the provider said so
    throttled: bool = False  # a rate-limit answer: slow the sender down, never a failure
    # With kind "stop": the account's quota at the provider is used up until then (Alibaba's daily sending limit).
    # The channel stops as for any stop, and this message is deferred to that time instead of left queued.
    not_before: datetime | None = None


class SenderRate(BaseModel):
    """What the provider allows one sender now, below what its spec may ask (a WhatsApp number's throughput level):
    the dispatcher sends that sender's lane at no more than `per_second`. A channel that can tell defines
    `async def sender_rate(session) -> SenderRate | None`, called as each lane starts (pipeline/dispatch/engine.py)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_second: float
    why: str  # for the run's log: "throughput level STANDARD: 80 messages/s (docs/providers.md §1.7)"


class SenderRateUnknown(Exception):
    """The sender's allowance could not be read (network, HTTP error, an answer we cannot read); the message says
    what was asked and what came back. The dispatcher keeps the spec's rate."""


class Outgoing(BaseModel):
    """One rendered message, as the channel needs it to build the provider's payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_id: str
    to: str  # the channel's address: E.164 phone, PSID, e-mail address, ...
    country: str | None = None
    text: str | None = None  # the rendered preview / body
    params: dict[str, list[str]] = {}
    template: TemplateSpec


class SendRequest(BaseModel):
    """One HTTP request to the provider."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    headers: dict[str, str]
    content: bytes


class Channel(Protocol):
    name: str
    max_batch: int  # messages per provider call (1 for per-message APIs)

    def build_payload(self, message: Outgoing) -> dict[str, Any]:
        """The provider's body for one message; stored in the outbox so a resend is identical."""
        ...

    def open_session(
        self, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None
    ) -> AbstractAsyncContextManager[Any]:
        """A connection for one dispatcher worker (an HTTP client, an SMTP connection, ...)."""
        ...

    async def send(self, session: Any, payloads: list[str]) -> list[SendOutcome]:
        """Sends up to `max_batch` stored payloads; one outcome per payload, in order."""
        ...


def retry_after_s(headers: Any) -> float | None:
    """The provider's Retry-After in seconds, when it sent a readable one."""
    value = headers.get("retry-after") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@cache
def tls_context() -> SSLContext:
    """httpx's own default (certifi's roots), built once: each session would otherwise load the CA bundle again
    (~15 ms), which for a lane of 32 sessions costs more than a second of sending. A dispatcher builds it before its
    senders start (~30 ms on a busy machine): built at the first send, it held that send and the ones due behind it,
    which then left together."""
    return httpx.create_ssl_context()


USER_AGENT = "campaign-pipeline (httpx)"


class HttpSession:
    """One dispatcher worker's HTTP connection: httpx's transport with a one-connection pool,
    driven directly.

    `AsyncClient.post` spends as much CPU on its layers (URL merging, cookie, auth and redirect
    handling) as on the request itself; provider sends use none of them, and one process sends
    1.3-1.6x as many messages through the transport (benchmarks/throughput.py). A shared pool
    makes httpx's waiters spin (encode/httpx#3215), hence one connection per worker. The proxy
    from the environment (HTTPS_PROXY / NO_PROXY ...) is honoured as AsyncClient would.
    """

    def __init__(self, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._timeout = httpx.Timeout(timeout_s).as_dict()
        self._transport = transport
        self._owned = transport is None  # a transport handed in (tests) belongs to the caller
        self._urls: dict[str, httpx.URL] = {}

    async def __aenter__(self) -> HttpSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._owned and self._transport is not None:
            await self._transport.aclose()

    async def post(self, url: str, *, content: bytes, headers: dict[str, str]) -> httpx.Response:
        """The provider's answer, read in full; httpx's exceptions (ConnectError, timeouts ...) as raised."""
        return await self.request("POST", url, content=content, headers=headers)

    async def get(self, url: str, *, headers: dict[str, str]) -> httpx.Response:
        """As `post`, for a read (a sender's settings before its lane sends)."""
        return await self.request("GET", url, content=None, headers=headers)

    async def request(self, method: str, url: str, *, content: bytes | None,
                      headers: dict[str, str]) -> httpx.Response:
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = self._urls[url] = httpx.URL(url)
        if self._transport is None:
            self._transport = _transport_for(parsed)
        request = httpx.Request(method, parsed, headers={"user-agent": USER_AGENT, **headers}, content=content,
                                extensions={"timeout": self._timeout})
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response


def _transport_for(url: httpx.URL) -> httpx.AsyncHTTPTransport:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    proxy = None
    if not urllib.request.proxy_bypass_environment(url.host):
        environ = urllib.request.getproxies_environment()
        proxy = environ.get(url.scheme) or environ.get("all")
    return httpx.AsyncHTTPTransport(limits=limits, verify=tls_context(), proxy=proxy)


def http_session(timeout_s: float, transport: httpx.AsyncBaseTransport | None = None) -> HttpSession:
    return HttpSession(timeout_s, transport)


class HttpChannel:
    """Base for providers with one HTTP request per message: subclasses build and classify."""

    name = "http"
    max_batch = 1

    def open_session(
        self, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None
    ) -> AbstractAsyncContextManager[HttpSession]:
        return http_session(timeout_s, transport)

    async def send(self, session: HttpSession, payloads: list[str]) -> list[SendOutcome]:
        outcomes = []
        for payload in payloads:
            request = self.request_for(payload)
            try:
                response = await session.post(request.url, content=request.content, headers=request.headers)
                outcome = self.classify_response(response.status_code, response.content, response.headers)
            except Exception as exc:  # translated at the edge into retry / permanent
                outcome = self.classify_exception(exc)
            outcomes.append(outcome)
        return outcomes

    def request_for(self, payload_json: str) -> SendRequest:
        raise NotImplementedError  # each HTTP provider defines its request

    def classify_response(self, status_code: int, body: bytes, headers: Any) -> SendOutcome:
        raise NotImplementedError  # each HTTP provider classifies its own answers

    def classify_exception(self, exc: Exception) -> SendOutcome:
        return classify_exception(exc)


def classify_exception(exc: Exception) -> SendOutcome:
    """httpx's errors as outcomes: retry only what surely never reached the provider."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        # The request never left: safe to send again.
        return SendOutcome(kind="retry", error_code="network", error_detail=type(exc).__name__)
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return SendOutcome(kind="unknown", error_code="timeout", error_detail=type(exc).__name__)
    return SendOutcome(kind="permanent", error_code="client_error", error_detail=type(exc).__name__)
