"""WhatsApp Cloud API webhooks: the X-Hub-Signature-256 check and Meta's envelope -> Receipts/Inbounds.

Pure functions over raw bytes: the receiver verifies, the receipts stage parses (much later, from the spool).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

from pipeline.records import Inbound, Receipt

PROVIDER = "whatsapp"
SIGNATURE_HEADER = "X-Hub-Signature-256"
_KNOWN_STATUSES = {"sent", "delivered", "read", "failed"}
# `played` is the first play of a voice message: the recipient has opened it, so it ranks as read.
_STATUS_ALIASES = {"played": "read"}


class MalformedPayload(ValueError):
    """The body is not a WhatsApp webhook envelope we understand; ingest quarantines it."""


def sign(raw_body: bytes, app_secret: str) -> str:
    """The header value Meta would send for `raw_body` (used by the sandbox and the tests)."""
    digest = hmac.new(app_secret.encode("utf-8"), raw_body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(raw_body: bytes, header_value: str | None, app_secret: str) -> bool:
    """True when `header_value` is `sha256=<hex HMAC-SHA256 of the raw bytes>`; compared in constant time.

    Hashes the bytes as received: re-serialised JSON would not match.
    """
    if not header_value or not app_secret:
        return False
    scheme, _, received = header_value.strip().partition("=")
    if scheme.lower() != "sha256" or not received:
        return False
    expected = hmac.new(app_secret.encode("utf-8"), raw_body, hashlib.sha256).hexdigest()
    # compare_digest on bytes: it refuses non-ASCII str, and a forged header may contain anything.
    return hmac.compare_digest(expected.encode("ascii"), received.strip().lower().encode("utf-8"))


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedPayload(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPayload(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _str(value: Any, where: str) -> str:
    if isinstance(value, str) and value:
        return value
    raise MalformedPayload(f"{where}: expected a non-empty string")


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)


def _timestamp(value: Any, where: str) -> datetime:
    """Meta sends unix seconds as a string ("1750030073")."""
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        raise MalformedPayload(f"{where}: timestamp {value!r} is not unix seconds") from None
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise MalformedPayload(f"{where}: timestamp {value!r} is out of range") from None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _receipt(status_obj: Any, where: str) -> Receipt:
    s = _obj(status_obj, where)
    raw_status = _str(s.get("status"), f"{where}.status")
    status = _STATUS_ALIASES.get(raw_status, raw_status)
    if status not in _KNOWN_STATUSES:
        raise MalformedPayload(f"{where}.status: unknown status {raw_status!r}")
    errors = _list(s.get("errors"), f"{where}.errors")
    first_error = _obj(errors[0], f"{where}.errors[0]") if errors else {}
    pricing = s.get("pricing") or {}
    pricing = _obj(pricing, f"{where}.pricing")
    callback = s.get("biz_opaque_callback_data")
    return Receipt(
        provider=PROVIDER,
        provider_message_id=_str(s.get("id"), f"{where}.id"),
        message_id=callback if isinstance(callback, str) and callback else None,
        status=status,  # type: ignore[arg-type]  # checked against _KNOWN_STATUSES above
        error_code=_opt_str(first_error.get("code")),
        error_title=_opt_str(first_error.get("title") or first_error.get("message")),
        category=_opt_str(pricing.get("category")),
        pricing_type=_opt_str(pricing.get("type")),
        recipient=_opt_str(s.get("recipient_id")),
        occurred_at=_timestamp(s.get("timestamp"), f"{where}.timestamp"),
        raw_json=_dumps(s),
    )


def _inbound_text(m: dict[str, Any]) -> str | None:
    """The words a recipient sent: a text body, a tapped quick-reply button, or an interactive reply."""
    kind = m.get("type")
    body = m.get(kind) if isinstance(kind, str) else None
    if not isinstance(body, dict):
        body = {}
    if kind == "text":
        return _opt_str(body.get("body"))
    if kind == "button":
        return _opt_str(body.get("text") or body.get("payload"))
    if kind == "interactive":
        reply = body.get("button_reply") or body.get("list_reply") or {}
        return _opt_str(reply.get("title")) if isinstance(reply, dict) else None
    return None


def _inbound(message_obj: Any, where: str) -> Inbound:
    m = _obj(message_obj, where)
    _str(m.get("id"), f"{where}.id")  # the provider message id: ingest keys and cites it
    return Inbound(
        provider=PROVIDER,
        sender=_str(m.get("from"), f"{where}.from"),
        text=_inbound_text(m),
        occurred_at=_timestamp(m.get("timestamp"), f"{where}.timestamp"),
        raw_json=_dumps(m),
    )


def parse_webhook(raw_body: bytes) -> tuple[list[Receipt], list[Inbound]]:
    """Every status and inbound message in one webhook POST body.

    Changes of other fields (template status updates, user preferences, ...) carry neither and
    yield nothing. Anything that is not Meta's envelope raises MalformedPayload.
    """
    try:
        doc = json.loads(raw_body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload(f"not JSON: {exc}") from None
    doc = _obj(doc, "body")
    if doc.get("object") != "whatsapp_business_account":
        raise MalformedPayload(f"object: expected 'whatsapp_business_account', got {doc.get('object')!r}")
    entries = doc.get("entry")
    if not isinstance(entries, list):
        raise MalformedPayload("entry: expected a list")
    receipts: list[Receipt] = []
    inbound: list[Inbound] = []
    for i, entry in enumerate(entries):
        changes = _list(_obj(entry, f"entry[{i}]").get("changes"), f"entry[{i}].changes")
        for j, change in enumerate(changes):
            where = f"entry[{i}].changes[{j}]"
            change = _obj(change, where)
            if change.get("field", "messages") != "messages":
                continue
            value = _obj(change.get("value"), f"{where}.value")
            for k, status in enumerate(_list(value.get("statuses"), f"{where}.value.statuses")):
                receipts.append(_receipt(status, f"{where}.value.statuses[{k}]"))
            for k, message in enumerate(_list(value.get("messages"), f"{where}.value.messages")):
                inbound.append(_inbound(message, f"{where}.value.messages[{k}]"))
    return receipts, inbound


def inbound_message_id(item: Inbound) -> str | None:
    """The provider's id of an inbound message (kept in its raw JSON; Inbound has no field for it)."""
    try:
        value = json.loads(item.raw_json).get("id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None
