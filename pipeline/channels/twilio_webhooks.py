"""Twilio Messaging webhooks: the X-Twilio-Signature check, status callbacks -> Receipts, inbound SMS -> Inbound.

Twilio's callbacks are form posts that carry neither our message id nor a time: the channel puts our id
in the StatusCallback URL (`?mid=<message_id>`), so the receiver must keep the URL with the body. It
spools `spool_body(raw, url, received_at)`, which appends `_callback_url` and `_received_at` to the
form; `parse` reads them back (names Twilio never uses, so nothing of Twilio's is overwritten).
"""

from __future__ import annotations

import base64
import hmac
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

from pipeline.records import Inbound, Receipt

PROVIDER = "twilio"
SIGNATURE_HEADER = "X-Twilio-Signature"
# Present when a Webhooks Rule matched the URL: Twilio signed with that Setting's SharedKey and the algorithm
# it names (`key=<sid>,algorithm=HMAC_SHA256`), over the same string (docs/providers.md §6.2).
SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
_ALGORITHMS = {"HMAC_SHA1": "sha1", "HMAC_SHA256": "sha256"}
CORRELATION_PARAM = "mid"  # our message id, in the StatusCallback URL's query
URL_FIELD, RECEIVED_FIELD = "_callback_url", "_received_at"

# Twilio's statuses -> ours; the in-progress ones (queued, sending, accepted, scheduled) are not receipts.
_STATUSES = {"sent": "sent", "delivered": "delivered", "read": "read", "undelivered": "failed",
             "failed": "failed", "canceled": "failed", "partially_delivered": "delivered"}
_IN_PROGRESS = frozenset({"queued", "sending", "accepted", "scheduled", "receiving"})


class MalformedPayload(ValueError):
    """Not a Twilio webhook we understand; ingest quarantines it."""


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, case-insensitively, from any mapping (Starlette's Headers or a plain dict)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def sign(url: str, params: Iterable[tuple[str, str]] | Mapping[str, str], auth_token: str,
         digest: str = "sha1") -> str:
    """Base64(HMAC-<digest>(key, url + every POST parameter sorted by name as name+value)); the key is the
    AuthToken, or a Webhooks Setting's SharedKey with HMAC-SHA256."""
    pairs = params.items() if isinstance(params, Mapping) else params
    data = url + "".join(k + v for k, v in sorted(pairs))
    return base64.b64encode(hmac.digest(auth_token.encode("utf-8"), data.encode("utf-8"), digest)).decode("ascii")


def settings_algorithm(value: str) -> str | None:
    """The hashlib name of the algorithm a settings header names; None for one we do not know."""
    fields = dict(part.strip().partition("=")[::2] for part in value.split(","))
    return _ALGORITHMS.get(fields.get("algorithm", "").strip().upper())


def _form(raw_body: bytes) -> list[tuple[str, str]]:
    try:
        text = raw_body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPayload(f"not UTF-8: {exc}") from None
    try:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError as exc:
        raise MalformedPayload(f"not a form body: {exc}") from None


def verify(raw_body: bytes, headers: Mapping[str, str], secret: str, url: str | None = None,
           shared_key: str | None = None) -> bool:
    """True when X-Twilio-Signature matches the full URL Twilio called (query included) and the form.

    `secret` is the AuthToken (HMAC-SHA1). When the request carries X-Twilio-Webhooks-Signature-Settings,
    the key is `shared_key` (the Setting's SharedKey) and the hash the one it names: without a shared key,
    or with an algorithm we do not know, it is refused. Without the URL nothing can be verified.
    """
    received = header(headers, SIGNATURE_HEADER)
    settings = header(headers, SETTINGS_HEADER)
    digest = "sha1"
    if settings is not None:
        digest, secret = settings_algorithm(settings) or "", shared_key or ""
    if not received or not secret or not url or not digest:
        return False
    try:
        expected = sign(url, _form(raw_body), secret, digest)
    except MalformedPayload:
        return False
    return hmac.compare_digest(expected.encode("ascii"), received.strip().encode("utf-8"))


def spool_body(raw_body: bytes, url: str, received_at: datetime | None = None) -> bytes:
    """What the receiver spools for a verified Twilio POST: the body plus the URL and arrival time."""
    at = (received_at or datetime.now(UTC)).astimezone(UTC).isoformat()
    extra = urlencode({URL_FIELD: url, RECEIVED_FIELD: at})
    return raw_body + b"&" + extra.encode("ascii") if raw_body else extra.encode("ascii")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _time(params: dict[str, str]) -> datetime:
    """When it happened: the carrier's RawDlrDoneDate (YYMMDDhhmm, UTC) when given, else arrival.

    Twilio sends no timestamp otherwise; without `_received_at` (a body not spooled through
    `spool_body`) the parse time is used, so a replay of that line could add a second event.
    """
    raw = params.get("RawDlrDoneDate", "")
    if len(raw) == 10 and raw.isdigit():
        try:
            return datetime.strptime(raw, "%y%m%d%H%M").replace(tzinfo=UTC)
        except ValueError:
            pass
    at = params.get(RECEIVED_FIELD)
    if at:
        try:
            parsed = datetime.fromisoformat(at)
        except ValueError:
            raise MalformedPayload(f"{RECEIVED_FIELD}: {at!r} is not ISO 8601") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return datetime.now(UTC)


def message_id_from_url(url: str | None) -> str | None:
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get(CORRELATION_PARAM)
    return values[0] if values and values[0] else None


def _required(params: dict[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise MalformedPayload(f"{name}: missing")
    return value


def parse(raw_body: bytes, url: str | None = None) -> tuple[list[Receipt], list[Inbound]]:
    """One status callback -> one Receipt (none for in-progress statuses); one inbound SMS -> one Inbound.

    `url` is the URL Twilio called, when the body was not spooled with `spool_body`.
    """
    params = dict(_form(raw_body))
    if not params:
        raise MalformedPayload("empty body")
    url = url or params.get(URL_FIELD)
    raw_json = _dumps({k: v for k, v in params.items() if k not in (URL_FIELD, RECEIVED_FIELD)})
    status = params.get("MessageStatus")
    if status is not None:
        sid = _required(params, "MessageSid")
        if status in _IN_PROGRESS:
            return [], []
        if status not in _STATUSES:
            raise MalformedPayload(f"MessageStatus: unknown status {status!r}")
        ours = _STATUSES[status]
        error_code = params.get("ErrorCode") or None
        if ours == "failed" and error_code is None:
            error_code = status  # `canceled` and a failure without a code still say why
        receipt = Receipt(
            provider=PROVIDER, provider_message_id=sid, message_id=message_id_from_url(url),
            status=ours,  # type: ignore[arg-type]  # a value of _STATUSES
            error_code=error_code if ours == "failed" else None,
            error_title=params.get("ErrorMessage") or None, recipient=params.get("To") or None,
            occurred_at=_time(params), raw_json=raw_json,
        )
        return [receipt], []
    if params.get("SmsStatus") == "received" or "Body" in params:
        sid = _required(params, "MessageSid")
        inbound = Inbound(
            provider=PROVIDER, sender=_required(params, "From"), text=params.get("Body"),
            occurred_at=_time(params),
            # "id" is where the shared helpers (receipts.inbound_message_id) look for the provider's id.
            raw_json=_dumps({**json.loads(raw_json), "id": sid}),
        )
        return [], [inbound]
    raise MalformedPayload("neither a status callback (MessageStatus) nor an inbound message (Body)")
