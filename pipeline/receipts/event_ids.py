"""Stable ids of receipts: the same status report from a provider always gets the same id, in Python
(the reference parser) and in SQL (the bulk parser, receipts derived in the database), so replays and
copies add nothing."""

from __future__ import annotations

import hashlib
from datetime import UTC

from pipeline.records import Receipt


def _hash(*parts: str | None) -> str:
    # Unit separator between parts, so ("ab", "c") and ("a", "bc") cannot collide.
    joined = "\x1f".join("" if p is None else p for p in parts)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:32]


def event_id(receipt: Receipt) -> str:
    """Stable across replays: the same status report from the provider always hashes the same."""
    occurred = receipt.occurred_at.astimezone(UTC).isoformat()
    return _hash(receipt.provider, receipt.provider_message_id, receipt.status, occurred, receipt.error_code)


# `event_id` in SQL, for rows the bulk parser stages (isoformat drops a zero microsecond part).
# make_timestamp(epoch_us(...)) is the UTC wall time without a time-zone lookup per row.
_UTC = "make_timestamp(epoch_us(occurred_at))"
EVENT_ID_SQL = (
    f"substr(sha256(concat_ws(chr(31), provider, provider_message_id, status, strftime({_UTC}, '%Y-%m-%dT%H:%M:%S')"
    f" || CASE WHEN epoch_us(occurred_at) % 1000000 = 0 THEN '' ELSE strftime({_UTC}, '.%f') END || '+00:00',"
    " coalesce(error_code, ''))), 1, 32)"
)
