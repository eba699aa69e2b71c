"""Viber bot callbacks: the X-Viber-Content-Signature check and one event per POST -> Receipts/Inbounds.

delivered / seen / failed (with `desc`) become receipts keyed by `message_token`, the id `send_message`
returned. Viber does not echo `tracking_data` in these callbacks, so `message_id` is None and
ingest joins them to the outbox by provider message id. `unsubscribed` becomes an Inbound whose
text is "UNSUBSCRIBE" (a stop keyword, so the user is suppressed), `subscribed` one with
"SUBSCRIBE"; `message` is an ordinary inbound reply. `webhook` and `conversation_started` yield nothing.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pipeline.records import Inbound, Receipt

PROVIDER = "viber"
SIGNATURE_HEADER = "X-Viber-Content-Signature"
_RECEIPT_EVENTS = {"delivered": "delivered", "seen": "read", "failed": "failed"}
_IGNORED_EVENTS = frozenset({"webhook", "conversation_started", "client_status"})


class MalformedPayload(ValueError):
    """Not a Viber callback we understand; ingest quarantines it."""


def sign(raw_body: bytes, auth_token: str) -> str:
    """The header value Viber sends: hex HMAC-SHA256 of the raw body keyed with the auth token, no prefix."""
    return hmac.digest(auth_token.encode("utf-8"), raw_body, "sha256").hex()


def verify(raw_body: bytes, headers: Mapping[str, str], secret: str) -> bool:
    value = headers.get(SIGNATURE_HEADER)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), None)
    if not value or not secret:
        return False
    return hmac.compare_digest(sign(raw_body, secret).encode("ascii"), value.strip().lower().encode("utf-8"))


def _id(value: Any, where: str) -> str:
    # message_token is a 64-bit integer in Viber's JSON; json.loads keeps it exact.
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        return str(value)
    raise MalformedPayload(f"{where}: expected an id")


def _at(value: Any) -> datetime:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedPayload(f"timestamp: {value!r} is not unix milliseconds")
    try:
        return datetime.fromtimestamp(value / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise MalformedPayload(f"timestamp: {value} is out of range") from None


def _user(event: dict[str, Any], *keys: str) -> str:
    for key in keys:
        value = event.get(key)
        if isinstance(value, dict):
            value = value.get("id")
        if isinstance(value, str) and value:
            return value
    raise MalformedPayload(f"{keys[0]}: expected the user's id")


def parse(raw_body: bytes) -> tuple[list[Receipt], list[Inbound]]:
    """The receipt or inbound item in one callback; unknown events raise MalformedPayload."""
    try:
        event = json.loads(raw_body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload(f"not JSON: {exc}") from None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        raise MalformedPayload("body: expected an object with an 'event'")
    kind = event["event"]
    if kind in _IGNORED_EVENTS:
        return [], []
    occurred = _at(event.get("timestamp"))
    raw = json.dumps(event, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    if kind in _RECEIPT_EVENTS:
        failed = kind == "failed"
        desc = event.get("desc")
        return [Receipt(
            provider=PROVIDER, provider_message_id=_id(event.get("message_token"), "message_token"),
            message_id=None, status=_RECEIPT_EVENTS[kind],  # type: ignore[arg-type]
            error_title=str(desc) if failed and desc else None,
            recipient=_user(event, "user_id"), occurred_at=occurred, raw_json=raw,
        )], []
    if kind in ("subscribed", "unsubscribed"):
        text = "SUBSCRIBE" if kind == "subscribed" else "UNSUBSCRIBE"
        user = _user(event, "user", "user_id")
        return [], [Inbound(provider=PROVIDER, sender=user, text=text, occurred_at=occurred, raw_json=raw)]
    if kind == "message":
        message = event.get("message")
        if not isinstance(message, dict):
            raise MalformedPayload("message: expected an object")
        text = message.get("text")
        # Viber passes our tracking_data (our message id) back with the user's reply, a keyboard tap (text = the
        # button's ActionBody) included: the message it answers.
        tracking = message.get("tracking_data")
        return [], [Inbound(provider=PROVIDER, sender=_user(event, "sender"),
                            text=str(text) if text is not None else None, occurred_at=occurred, raw_json=raw,
                            context_id=tracking if isinstance(tracking, str) and tracking else None)]
    raise MalformedPayload(f"event: unknown event {kind!r}")
