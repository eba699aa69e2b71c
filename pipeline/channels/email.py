"""E-mail over SMTP: multipart text + HTML with RFC 8058 one-click unsubscribe, one SMTP connection per
dispatcher worker, and the classification of SMTP replies (docs/providers.md §7).

The correlation id is our message id, as the local part of the Message-ID (`<message_id@from-domain>`),
which bounce reports quote back. Unsubscribe links carry an opaque per-recipient token that the
receiver's `/unsubscribe/{token}` endpoint (pipeline/receipts/unsubscribe.py) turns back into the address.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import html
import json
import re
from collections.abc import AsyncIterator
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, parseaddr
from typing import Any
from urllib.parse import urlsplit

import aiosmtplib
import httpx

from pipeline.channels.base import Outgoing, SendOutcome
from pipeline.spec import CampaignSpec, SpecError

# One line per header up to RFC 5322's 998 characters: folded List-Unsubscribe headers are known to
# break DKIM signatures (§7.1); 7bit so that non-ASCII bodies go quoted-printable or base64.
_POLICY = SMTP_POLICY.clone(max_line_length=998, cte_type="7bit")
ONE_CLICK = "List-Unsubscribe=One-Click"
AUTH_CODES = frozenset({530, 534, 535, 538})  # authentication required / failed: stop the channel
_QUEUED_AS = re.compile(r"queued as ([A-Za-z0-9._-]+)", re.IGNORECASE)
_TAG_BYTES = 16


# --------------------------------------------------------------------------- unsubscribe tokens

def _key(secret: str, purpose: bytes) -> bytes:
    return hmac.digest(secret.encode("utf-8"), b"unsubscribe-token/" + purpose, "sha256")


def _keystream(secret: str, tag: bytes, length: int) -> bytes:
    key = _key(secret, b"enc")
    blocks = (hmac.digest(key, tag + i.to_bytes(4, "big"), "sha256") for i in range(-(-length // 32)))
    return b"".join(blocks)[:length]


def unsubscribe_token(secret: str, address: str, channel: str = "email") -> str:
    """An opaque, unforgeable token that names `address`: tag + encrypted `channel|address`, base64url.

    tag = HMAC-SHA256(secret, "channel|address") truncated to 128 bits; the address is XORed with an
    HMAC keystream derived from the tag (a deterministic SIV construction). The link reveals nothing,
    nobody without the secret can make one for another address, and the endpoint needs no database.
    """
    data = f"{channel}|{address.strip().lower()}".encode()
    tag = hmac.digest(_key(secret, b"mac"), data, "sha256")[:_TAG_BYTES]
    sealed = bytes(a ^ b for a, b in zip(data, _keystream(secret, tag, len(data)), strict=True))
    return base64.urlsafe_b64encode(tag + sealed).rstrip(b"=").decode("ascii")


def verify_unsubscribe_token(secret: str, token: str, channel: str = "email") -> str | None:
    """The address a token names, or None for anything not made with `secret` (compared in constant time)."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (ValueError, TypeError):
        return None
    if len(raw) <= _TAG_BYTES or not secret:
        return None
    tag, sealed = raw[:_TAG_BYTES], raw[_TAG_BYTES:]
    data = bytes(a ^ b for a, b in zip(sealed, _keystream(secret, tag, len(sealed)), strict=True))
    if not hmac.compare_digest(hmac.digest(_key(secret, b"mac"), data, "sha256")[:_TAG_BYTES], tag):
        return None
    prefix, _, address = data.decode("utf-8", errors="replace").partition("|")
    return address if prefix == channel and address else None


# --------------------------------------------------------------------------- the message

def render_html(text: str, unsubscribe_url: str) -> str:
    """The HTML part: the text escaped, paragraphs kept, and a visible unsubscribe link."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p]
    body = "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in paragraphs)
    link = html.escape(unsubscribe_url, quote=True)
    return (f'<!doctype html><html><body>{body}<p style="font-size:12px;color:#666">'
            f'<a href="{link}">Unsubscribe</a></p></body></html>')


def mime_bytes(payload: dict[str, Any]) -> bytes:
    """The RFC 5322 message for one stored payload (multipart/alternative: text, then HTML)."""
    message = EmailMessage(policy=_POLICY)
    message["From"] = payload["from"]
    message["To"] = payload["to"]
    message["Subject"] = payload["subject"]
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = payload["message_id"]
    if payload.get("reply_to"):
        message["Reply-To"] = payload["reply_to"]
    message["List-Unsubscribe"] = payload["list_unsubscribe"]
    message["List-Unsubscribe-Post"] = ONE_CLICK
    message.set_content(payload["text"])
    message.add_alternative(payload["html"], subtype="html")
    return message.as_bytes()


def correlation_id(message_id_header: str | None) -> str | None:
    """Our message id from a Message-ID we set (`<message_id@domain>`)."""
    match = re.fullmatch(r"\s*<?([^@<>\s]+)@[^<>\s]+>?\s*", message_id_header or "")
    return match.group(1) if match else None


def classify_reply(code: int, message: str) -> SendOutcome:
    """One SMTP reply: 2xx sent; 421 throttled; other 4xx retried; auth failures stop; other 5xx permanent."""
    detail = message.strip()[:500]
    if 200 <= code < 300:
        return SendOutcome(kind="sent")
    if code == 421:  # the server is closing the connection: slow down, reconnect, try again
        return SendOutcome(kind="retry", error_code="421", error_detail=detail, throttled=True)
    if 400 <= code < 500:
        return SendOutcome(kind="retry", error_code=str(code), error_detail=detail)
    if code in AUTH_CODES:
        return SendOutcome(kind="stop", error_code=str(code), error_detail=detail)
    if 500 <= code < 600:
        return SendOutcome(kind="permanent", error_code=str(code), error_detail=detail)
    # Not an SMTP reply at all (aiosmtplib reports -1): the server may have taken the message.
    return SendOutcome(kind="permanent", error_code=f"smtp_{code}",
                       error_detail=f"malformed provider response: {detail}")


class SmtpSession:
    """One dispatcher worker's SMTP connection: opened on first use, reopened after any failure."""

    def __init__(self, channel: EmailChannel, timeout_s: float) -> None:
        self._channel, self._timeout_s = channel, timeout_s
        self.client: aiosmtplib.SMTP | None = None
        self.connects = 0

    async def connected(self) -> aiosmtplib.SMTP:
        if self.client is None or not self.client.is_connected:
            c = self._channel
            client = aiosmtplib.SMTP(hostname=c.host, port=c.port, use_tls=c.use_tls, start_tls=c.start_tls,
                                     username=c.username, password=c.password, timeout=self._timeout_s)
            self.connects += 1
            await client.connect()  # logs in too when a username is set
            self.client = client
        return self.client

    def reset(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    async def aclose(self) -> None:
        if self.client is not None and self.client.is_connected:
            try:
                await self.client.quit()
            except (aiosmtplib.SMTPException, OSError):
                self.client.close()
        self.client = None


class EmailChannel:
    name = "email"
    provider = "smtp"
    max_batch = 1
    pricing_unit = "message"
    credentials = {"smtp_username": "SMTP_USERNAME", "smtp_password": "SMTP_PASSWORD",
                   "unsubscribe_secret": "EMAIL_UNSUBSCRIBE_SECRET", "webhook_secret": "EMAIL_WEBHOOK_SECRET"}

    def __init__(
        self, *, host: str, port: int, from_address: str, subject: str, unsubscribe_url: str,
        unsubscribe_secret: str, unsubscribe_mailto: str | None = None, reply_to: str | None = None,
        use_tls: bool = False, start_tls: bool | None = None, username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.host, self.port, self.use_tls, self.start_tls = host, port, use_tls, start_tls
        self.username, self.password = username, password
        self.from_address, self.subject, self.reply_to = from_address, subject, reply_to
        self.envelope_from = parseaddr(from_address)[1]
        self.domain = self.envelope_from.rpartition("@")[2]
        if not self.domain:
            raise SpecError(f"provider.options.from_address: {from_address!r} has no domain")
        self.unsubscribe_url = unsubscribe_url.rstrip("/")
        self.unsubscribe_mailto = unsubscribe_mailto
        self._unsubscribe_secret = unsubscribe_secret

    def build_payload(self, message: Outgoing) -> dict[str, Any]:
        link = f"{self.unsubscribe_url}/{unsubscribe_token(self._unsubscribe_secret, message.to)}"
        header = f"<{link}>"
        if self.unsubscribe_mailto:
            header += f", <mailto:{self.unsubscribe_mailto}?subject=unsubscribe>"
        text = message.text if message.text is not None else message.template.text
        payload = {
            "from": self.from_address, "to": message.to, "subject": self.subject,
            "message_id": f"<{message.message_id}@{self.domain}>",
            "text": f"{text.rstrip()}\n\n--\nUnsubscribe: {link}\n", "html": render_html(text, link),
            "list_unsubscribe": header,
        }
        if self.reply_to:
            payload["reply_to"] = self.reply_to
        return payload

    def open_session(
        self, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None
    ) -> contextlib.AbstractAsyncContextManager[SmtpSession]:
        return self._session(timeout_s)  # `transport` is for HTTP channels; SMTP has none

    @contextlib.asynccontextmanager
    async def _session(self, timeout_s: float) -> AsyncIterator[SmtpSession]:
        session = SmtpSession(self, timeout_s)
        try:
            yield session
        finally:
            await session.aclose()

    async def send(self, session: SmtpSession, payloads: list[str]) -> list[SendOutcome]:
        return [await self._send_one(session, json.loads(p)) for p in payloads]

    async def _send_one(self, session: SmtpSession, payload: dict[str, Any]) -> SendOutcome:
        # The transaction step by step, not aiosmtplib's sendmail, to know how far it got: a failure
        # before DATA left nothing at the server (safe to retry); one during DATA may have delivered.
        in_data = False
        try:
            data = mime_bytes(payload)
            client = await session.connected()
            try:
                await client.mail(self.envelope_from)
                await client.rcpt(payload["to"])
            except aiosmtplib.SMTPResponseException as exc:
                if client.is_connected and exc.code != 421:
                    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                        await client.rset()  # a clean envelope for this worker's next message
                raise
            in_data = True
            reply = (await client.data(data)).message
        except aiosmtplib.SMTPResponseException as exc:
            outcome = classify_reply(exc.code, exc.message)
            if exc.code == 421 or exc.code < 200 or outcome.kind == "stop":
                session.reset()  # closed by the server, or in an unknown state
            # A refused greeting, HELO or sender concerns every message of this channel, not this one.
            if outcome.kind == "permanent" and exc.code >= 500 and isinstance(
                    exc, aiosmtplib.SMTPConnectResponseError | aiosmtplib.SMTPHeloError | aiosmtplib.SMTPSenderRefused):
                return outcome.model_copy(update={"kind": "stop"})
            return outcome
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError,
                OSError) as exc:
            session.reset()
            if in_data:  # the message may have been taken: receipts decide, never a blind resend
                return SendOutcome(kind="unknown", error_code="timeout", error_detail=type(exc).__name__)
            return SendOutcome(kind="retry", error_code="network", error_detail=type(exc).__name__)
        except aiosmtplib.SMTPException as exc:  # e.g. SMTPUTF8 needed but not offered
            return SendOutcome(kind="permanent", error_code="client_error", error_detail=str(exc)[:500])
        except (ValueError, UnicodeError) as exc:  # an address that cannot go on an SMTP command line
            return SendOutcome(kind="permanent", error_code="invalid_address", error_detail=str(exc)[:500])
        queued = _QUEUED_AS.search(reply)
        return SendOutcome(kind="sent", provider_message_id=queued.group(1) if queued else payload["message_id"])


def _smtp_target(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise SpecError(f"provider.base_url: expected smtp://host:port or smtps://host:port, got {url!r}")
    use_tls = parts.scheme == "smtps"
    return parts.hostname, parts.port or (465 if use_tls else 25), use_tls


def _optional_secret(spec: CampaignSpec, role: str, default_env: str) -> str | None:
    try:
        return spec.secret(role, default_env)
    except SpecError:
        if role in spec.credentials:  # named explicitly in the spec: it must be there
            raise
        return None


def from_spec(spec: CampaignSpec, base_url: str | None = None, sender: str | None = None) -> EmailChannel:
    """`base_url` is smtp://host:port (or smtps://); `sender`, when an address, is the From if none is set."""
    env, options = EmailChannel.credentials, spec.provider.options
    host, port, use_tls = _smtp_target(base_url or spec.provider.base_url or "smtp://127.0.0.1:25")
    unsubscribe_url = options.get("unsubscribe_url")
    if not isinstance(unsubscribe_url, str) or urlsplit(unsubscribe_url).scheme not in ("http", "https"):
        raise SpecError("provider.options.unsubscribe_url: the receiver's unsubscribe base URL is required")
    loopback = (urlsplit(unsubscribe_url).hostname or "") in ("127.0.0.1", "localhost", "::1")
    if urlsplit(unsubscribe_url).scheme != "https" and not loopback:
        # RFC 8058: mail clients ignore List-Unsubscribe-Post without an https URI.
        raise SpecError("provider.options.unsubscribe_url: must be https (RFC 8058)")
    sender = sender or spec.sender
    from_address = options.get("from_address") or (sender if "@" in sender else None)
    if not isinstance(from_address, str):
        raise SpecError("provider.options.from_address: required (or an e-mail address as sender)")
    starttls = options.get("starttls")
    return EmailChannel(
        host=host, port=port, use_tls=use_tls, start_tls=starttls if isinstance(starttls, bool) else None,
        from_address=from_address, subject=str(options.get("subject") or spec.template.name),
        unsubscribe_url=unsubscribe_url, unsubscribe_mailto=options.get("unsubscribe_mailto"),
        reply_to=options.get("reply_to"),
        unsubscribe_secret=spec.secret("unsubscribe_secret", env["unsubscribe_secret"]),
        username=_optional_secret(spec, "smtp_username", env["smtp_username"]),
        password=_optional_secret(spec, "smtp_password", env["smtp_password"]),
    )
