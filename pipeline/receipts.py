"""The receipts stage: ingests closed spool files into DuckDB events/inbound, quarantining bad lines.

Idempotent twice over: a file is recorded in `spool_files` in the same transaction as its rows, and
every row is keyed by a stable hash, so replaying a file adds nothing even without that bookkeeping.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from pipeline.channels.whatsapp_webhooks import inbound_message_id, parse_webhook
from pipeline.records import Inbound, Receipt
from pipeline.spool import closed_files, decode_body

log = logging.getLogger(__name__)

Parser = Callable[[bytes], tuple[list[Receipt], list[Inbound]]]
# provider -> webhook body parser; a new provider adds one entry (and a route in the receiver).
PARSERS: dict[str, Parser] = {"whatsapp": parse_webhook}

STOP_KEYWORDS = frozenset({"stop", "unsubscribe", "stopall", "end", "cancel", "quit", "退订"})
OPT_OUT_ERROR_CODES = frozenset({"131050"})  # recipient stopped marketing messages from this business

_TS = pl.Datetime("us", "UTC")
EVENT_SCHEMA: dict[str, Any] = {
    "event_id": pl.String, "provider": pl.String, "provider_message_id": pl.String,
    "message_id": pl.String, "status": pl.String, "error_code": pl.String, "error_title": pl.String,
    "category": pl.String, "pricing_type": pl.String, "recipient": pl.String,
    "occurred_at": _TS, "received_at": _TS, "raw_json": pl.String,
}
INBOUND_SCHEMA: dict[str, Any] = {
    "event_id": pl.String, "provider": pl.String, "sender": pl.String, "text": pl.String,
    "occurred_at": _TS, "raw_json": pl.String,
}
QUARANTINE_SCHEMA: dict[str, Any] = {
    "spool_file": pl.String, "line_number": pl.Int64, "reason": pl.String, "raw": pl.String,
}
SUPPRESSION_SCHEMA: dict[str, Any] = {
    "channel": pl.String, "address": pl.String, "reason": pl.String, "source": pl.String,
    "message_id": pl.String, "since": _TS,
}


@dataclass
class IngestResult:
    files: int = 0  # spool files ingested by this call
    events_added: int = 0
    inbound_added: int = 0
    quarantined: int = 0
    skipped_files: int = 0  # closed files already recorded in spool_files
    suppressions_added: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _hash(*parts: str | None) -> str:
    # Unit separator between parts, so ("ab", "c") and ("a", "bc") cannot collide.
    joined = "\x1f".join("" if p is None else p for p in parts)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:32]


def event_id(receipt: Receipt) -> str:
    """Stable across replays: the same status report from the provider always hashes the same."""
    occurred = receipt.occurred_at.astimezone(UTC).isoformat()
    return _hash(receipt.provider, receipt.provider_message_id, receipt.status, occurred, receipt.error_code)


def inbound_event_id(item: Inbound) -> str:
    return _hash("inbound", item.provider, inbound_message_id(item) or item.raw_json)


def is_stop_keyword(text: str | None) -> bool:
    return text is not None and text.strip().casefold() in STOP_KEYWORDS


def _address(digits_or_e164: str | None) -> str | None:
    digits = re.sub(r"\D", "", digits_or_e164 or "")
    return f"+{digits}" if digits else None


class _FileBatch:
    """The rows one spool file yields, gathered before a single transaction writes them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[dict[str, Any]] = []
        self.inbound: list[dict[str, Any]] = []
        self.quarantine: list[dict[str, Any]] = []
        self.suppressions: list[dict[str, Any]] = []

    def add_line(self, line_number: int, line: bytes) -> None:
        try:
            provider, received_at, receipts, inbound = _parse_line(line)
        except (ValueError, TypeError, KeyError) as exc:  # MalformedPayload is a ValueError
            self.quarantine.append({
                "spool_file": self.name, "line_number": line_number,
                "reason": f"{type(exc).__name__}: {exc}"[:500],
                "raw": line.decode("utf-8", errors="replace"),
            })
            return
        for r in receipts:
            self.events.append({
                "event_id": event_id(r), "provider": r.provider,
                "provider_message_id": r.provider_message_id, "message_id": r.message_id,
                "status": r.status, "error_code": r.error_code, "error_title": r.error_title,
                "category": r.category, "pricing_type": r.pricing_type, "recipient": r.recipient,
                "occurred_at": r.occurred_at, "received_at": received_at, "raw_json": r.raw_json,
            })
            if r.status == "failed" and r.error_code in OPT_OUT_ERROR_CODES:
                self.suppressions.append({
                    "channel": provider, "address": _address(r.recipient), "reason": "marketing_opt_out",
                    "source": r.provider_message_id, "message_id": r.message_id, "since": r.occurred_at,
                })
        for m in inbound:
            self.inbound.append({
                "event_id": inbound_event_id(m), "provider": m.provider, "sender": m.sender,
                "text": m.text, "occurred_at": m.occurred_at, "raw_json": m.raw_json,
            })
            if is_stop_keyword(m.text) and _address(m.sender):
                self.suppressions.append({
                    "channel": provider, "address": _address(m.sender), "reason": "stop_reply",
                    "source": inbound_message_id(m), "message_id": None, "since": m.occurred_at,
                })


def _parse_line(line: bytes) -> tuple[str, datetime | None, list[Receipt], list[Inbound]]:
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("spool line is not a JSON object")
    provider, body = record.get("provider"), record.get("body")
    parser = PARSERS.get(provider) if isinstance(provider, str) else None
    if parser is None:
        raise ValueError(f"unknown provider {provider!r}")
    if not isinstance(body, str):
        raise ValueError("spool line has no string 'body'")
    received_at = None
    if isinstance(record.get("received_at"), str):
        received_at = datetime.fromisoformat(record["received_at"])
        if received_at.tzinfo is None:
            received_at = received_at.replace(tzinfo=UTC)
    receipts, inbound = parser(decode_body(body))
    return provider, received_at, receipts, inbound


def _insert(con: duckdb.DuckDBPyConnection, table: str, sql: str, rows: list[dict[str, Any]],
            schema: dict[str, Any]) -> int:
    """Bulk INSERT OR IGNORE from an Arrow frame; returns the rows actually added."""
    if not rows:
        return 0
    frame = pl.DataFrame(rows, schema=schema)
    view = f"_ingest_{table}"
    con.register(view, frame.to_arrow())
    try:
        added = con.execute(sql.format(view=view)).fetchone()
    finally:
        con.unregister(view)
    return int(added[0]) if added else 0


_EVENTS_SQL = f"INSERT OR IGNORE INTO events ({', '.join(EVENT_SCHEMA)}) SELECT * FROM {{view}}"
_INBOUND_SQL = f"INSERT OR IGNORE INTO inbound ({', '.join(INBOUND_SCHEMA)}) SELECT * FROM {{view}}"
_QUARANTINE_SQL = "INSERT OR IGNORE INTO quarantine (spool_file, line_number, reason, raw) SELECT * FROM {view}"
# A receipt without recipient_id still names our message: take the address from the outbox.
# The earliest opt-out per address wins; an address already suppressed keeps its first reason.
_SUPPRESSIONS_SQL = """
INSERT OR IGNORE INTO suppressions (channel, address, reason, source, since)
SELECT channel, address, arg_min(reason, since), arg_min(source, since), min(since)
FROM (
    SELECT s.channel, coalesce(s.address, o.recipient_key) AS address, s.reason, s.source, s.since
    FROM {view} s LEFT JOIN outbox o ON o.message_id = s.message_id
)
WHERE address IS NOT NULL
GROUP BY channel, address
"""


def _ingest_file(con: duckdb.DuckDBPyConnection, path: Path, result: IngestResult) -> None:
    data = path.read_bytes()
    batch = _FileBatch(path.name)
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            batch.add_line(number, line)
    con.begin()
    try:
        events = _insert(con, "events", _EVENTS_SQL, batch.events, EVENT_SCHEMA)
        inbound = _insert(con, "inbound", _INBOUND_SQL, batch.inbound, INBOUND_SCHEMA)
        quarantined = _insert(con, "quarantine", _QUARANTINE_SQL, batch.quarantine, QUARANTINE_SCHEMA)
        suppressed = _insert(con, "suppressions", _SUPPRESSIONS_SQL, batch.suppressions, SUPPRESSION_SCHEMA)
        con.execute(
            "INSERT INTO spool_files (name, bytes, events, ingested_at) VALUES (?, ?, ?, ?)",
            [path.name, len(data), len(batch.events) + len(batch.inbound), datetime.now(UTC)],
        )
        con.commit()
    except BaseException:
        con.rollback()
        raise
    result.files += 1
    result.events_added += events
    result.inbound_added += inbound
    result.quarantined += quarantined
    result.suppressions_added += suppressed
    if batch.quarantine:
        log.warning("receipts: %d line(s) of %s quarantined", len(batch.quarantine), path.name)


def ingest_spool(con: duckdb.DuckDBPyConnection, spool_dir: Path | str) -> IngestResult:
    """Ingests every closed spool file not yet in `spool_files`, one transaction per file."""
    result = IngestResult()
    done = {row[0] for row in con.execute("SELECT name FROM spool_files").fetchall()}
    for path in closed_files(spool_dir):
        if path.name in done:
            result.skipped_files += 1
            continue
        _ingest_file(con, path, result)
    log.info("receipts: ingested %s", result.as_dict())
    return result


def current_statuses(con: duckdb.DuckDBPyConnection, campaign_id: str) -> dict[str, int]:
    """How many of a campaign's messages are currently sent / delivered / read / failed."""
    rows = con.execute(
        """
        SELECT ms.status, count(*) FROM message_status ms
        JOIN outbox o ON o.message_id = ms.message_id
        WHERE o.campaign_id = ?
        GROUP BY ms.status
        """,
        [campaign_id],
    ).fetchall()
    return {status: int(n) for status, n in rows}
