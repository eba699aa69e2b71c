"""Messenger and Instagram webhooks: the X-Hub-Signature-256 check and `entry[].messaging[]` -> Receipts/Inbounds.

One parser for both: `object: "page"` gives provider "messenger", `object: "instagram"` gives "instagram".
The Send API takes no correlation id, so every receipt has `message_id=None` and names Meta's mid.

Read (and mid-less delivery) events carry only a `watermark`: "everything sent to this user before
this instant". They become one receipt whose provider id is `watermark:<psid>:<ms>` (see
`parse_watermark`); ingest resolves it to every message sent to that PSID at or before the
watermark. Instagram's `messaging_seen` names the message (`read.mid`) and maps directly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pipeline.channels.whatsapp_webhooks import verify_signature
from pipeline.records import Inbound, Receipt

PROVIDER = "messenger"
INSTAGRAM_PROVIDER = "instagram"
SIGNATURE_HEADER = "X-Hub-Signature-256"
WATERMARK_PREFIX = "watermark:"
_PROVIDERS = {"page": PROVIDER, "instagram": INSTAGRAM_PROVIDER}


class MalformedPayload(ValueError):
    """Not a Messenger/Instagram webhook envelope we understand; ingest quarantines it."""


def verify(raw_body: bytes, headers: Mapping[str, str], secret: str) -> bool:
    """Meta's scheme, as for WhatsApp: `sha256=<hex HMAC-SHA256(app secret, raw body)>`."""
    value = headers.get(SIGNATURE_HEADER)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), None)
    return verify_signature(raw_body, value, secret)


def watermark_id(psid: str, watermark_ms: int) -> str:
    return f"{WATERMARK_PREFIX}{psid}:{watermark_ms}"


def parse_watermark(provider_message_id: str) -> tuple[str, datetime] | None:
    """(PSID, instant) of a watermark receipt id; None for an ordinary mid."""
    if not provider_message_id.startswith(WATERMARK_PREFIX):
        return None
    psid, _, ms = provider_message_id[len(WATERMARK_PREFIX) :].rpartition(":")
    try:
        return psid, datetime.fromtimestamp(int(ms) / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedPayload(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _id(value: Any, where: str) -> str:
    if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
        return str(value)
    raise MalformedPayload(f"{where}: expected an id")


def _millis(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise MalformedPayload(f"{where}: {value!r} is not unix milliseconds")


def _at(ms: int, where: str) -> datetime:
    try:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise MalformedPayload(f"{where}: {ms} is out of range") from None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _receipts(provider: str, event: dict[str, Any], kind: str, where: str) -> list[Receipt]:
    """Receipts of one `delivery` or `read` event."""
    status = "delivered" if kind == "delivery" else "read"
    body = _obj(event[kind], f"{where}.{kind}")
    psid = _id(_obj(event.get("sender"), f"{where}.sender").get("id"), f"{where}.sender.id")
    mids = body.get("mids")
    if mids is None and body.get("mid") is not None:
        mids = [body["mid"]]
    watermark = body.get("watermark")
    stamp = event.get("timestamp", watermark)
    occurred = _at(_millis(stamp, f"{where}.timestamp"), f"{where}.timestamp") if stamp is not None else None
    raw = _dumps(event)
    named: list[Receipt] = []
    if mids:
        if not isinstance(mids, list):
            raise MalformedPayload(f"{where}.{kind}.mids: expected a list")
        if occurred is None:
            raise MalformedPayload(f"{where}: a {kind} event needs a timestamp or watermark")
        named = [Receipt(provider=provider, provider_message_id=_id(mid, f"{where}.{kind}.mids[{i}]"),
                         message_id=None, status=status, recipient=psid, occurred_at=occurred,  # type: ignore[arg-type]
                         raw_json=raw) for i, mid in enumerate(mids)]
        if watermark is None:
            return named
    # The watermark says "everything before this instant", the mids only some of it: Meta's delivery
    # reference tells receivers to apply the watermark as well, so earlier messages it covers count too.
    ms = _millis(watermark, f"{where}.{kind}.watermark")
    return [*named, Receipt(provider=provider, provider_message_id=watermark_id(psid, ms), message_id=None,
                            status=status, recipient=psid, occurred_at=_at(ms, where),  # type: ignore[arg-type]
                            raw_json=raw)]


def _scalar(value: Any) -> str | None:
    return str(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else None


def _inbound(provider: str, event: dict[str, Any], where: str) -> Inbound | None:
    message = event.get("message")
    postback = event.get("postback")
    if isinstance(message, dict) and message.get("is_echo"):
        return None  # our own outgoing message echoed back
    payload = context = None
    if isinstance(message, dict):
        _id(message.get("mid"), f"{where}.message.mid")
        text = message.get("text")
        # A tapped quick reply carries its payload; a reply names the message it answers (reply_to.mid).
        quick = message.get("quick_reply")
        payload = quick.get("payload") if isinstance(quick, dict) else None
        reply_to = message.get("reply_to")
        context = reply_to.get("mid") if isinstance(reply_to, dict) else None
    elif isinstance(postback, dict):
        text = postback.get("title") or postback.get("payload")
        payload = postback.get("payload")
        context = postback.get("mid")
    else:
        return None
    sender = _id(_obj(event.get("sender"), f"{where}.sender").get("id"), f"{where}.sender.id")
    stamp = _millis(event.get("timestamp"), f"{where}.timestamp")
    return Inbound(provider=provider, sender=sender, text=str(text) if text is not None else None,
                   occurred_at=_at(stamp, f"{where}.timestamp"), raw_json=_dumps(event),
                   payload=_scalar(payload), context_id=_scalar(context))


def parse(raw_body: bytes) -> tuple[list[Receipt], list[Inbound]]:
    """Delivery/read receipts and inbound messages in one POST; other events (optins, reactions,
    referrals, standby) yield nothing; anything that is not Meta's envelope raises MalformedPayload."""
    try:
        doc = json.loads(raw_body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload(f"not JSON: {exc}") from None
    doc = _obj(doc, "body")
    kind = doc.get("object")
    provider = _PROVIDERS.get(kind) if isinstance(kind, str) else None
    if provider is None:
        raise MalformedPayload(f"object: expected 'page' or 'instagram', got {doc.get('object')!r}")
    entries = doc.get("entry")
    if not isinstance(entries, list):
        raise MalformedPayload("entry: expected a list")
    receipts: list[Receipt] = []
    inbound: list[Inbound] = []
    for i, entry in enumerate(entries):
        events = _obj(entry, f"entry[{i}]").get("messaging") or []
        if not isinstance(events, list):
            raise MalformedPayload(f"entry[{i}].messaging: expected a list")
        for j, event in enumerate(events):
            where = f"entry[{i}].messaging[{j}]"
            event = _obj(event, where)
            for kind in ("delivery", "read"):
                if kind in event:
                    receipts.extend(_receipts(provider, event, kind, where))
            item = _inbound(provider, event, where)
            if item is not None:
                inbound.append(item)
    return receipts, inbound
