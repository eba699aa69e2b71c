"""Unsubscribe records, as the receiver's `/unsubscribe/{token}` endpoint spools them (provider "unsubscribe").

A record is our own JSON, written only after the token was verified:

    {"object": "unsubscribe", "channel": "email", "address": "a@example.com", "token": "...",
     "at": "2026-10-01T08:00:00+00:00"}

`parse` turns it into an Inbound from that address with the text "UNSUBSCRIBE", so ingest records it
like a STOP reply: a suppressions row (channel email, the address, reason 'unsubscribe', source the
link's token: `suppression_source`) that every later campaign honours. `verify` checks the token
again at ingest, with the same secret.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

from pipeline.channels.email import verify_unsubscribe_token
from pipeline.records import Inbound, Receipt

PROVIDER = "unsubscribe"
KEYWORD = "UNSUBSCRIBE"


class MalformedPayload(ValueError):
    """Not an unsubscribe record; ingest quarantines it."""


def record_body(address: str, token: str, channel: str = "email", at: datetime | None = None) -> bytes:
    """The spool body for one verified unsubscribe request."""
    record = {"object": "unsubscribe", "channel": channel, "address": address, "token": token,
              "at": (at or datetime.now(UTC)).astimezone(UTC).isoformat()}
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _record(raw_body: bytes) -> dict[str, str]:
    try:
        doc = json.loads(raw_body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("object") != "unsubscribe":
        raise MalformedPayload('body: expected an object with "object": "unsubscribe"')
    for name in ("channel", "address", "token", "at"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            raise MalformedPayload(f"{name}: expected a non-empty string")
    return doc


def verify(raw_body: bytes, headers: Mapping[str, str], secret: str, url: str | None = None) -> bool:
    """True when the record's token was made with `secret` for the record's channel and address."""
    try:
        doc = _record(raw_body)
    except MalformedPayload:
        return False
    return verify_unsubscribe_token(secret, doc["token"], doc["channel"]) == doc["address"].strip().lower()


def parse(raw_body: bytes) -> tuple[list[Receipt], list[Inbound]]:
    doc = _record(raw_body)
    try:
        at = datetime.fromisoformat(doc["at"])
    except ValueError:
        raise MalformedPayload(f"at: {doc['at']!r} is not ISO 8601") from None
    inbound = Inbound(
        provider=PROVIDER, sender=doc["address"].strip().lower(), text=KEYWORD,
        occurred_at=at if at.tzinfo else at.replace(tzinfo=UTC),
        raw_json=json.dumps(doc, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
    )
    return [], [inbound]


def suppression_source(item: Inbound) -> str | None:
    """What the suppression made from a record cites: the token of the one-click link that was used."""
    try:
        token = json.loads(item.raw_json).get("token")
    except (ValueError, AttributeError):
        return None
    return f"list-unsubscribe:{token}" if isinstance(token, str) and token else None
