"""The receipts stage: ingests closed spool files into DuckDB events/inbound, quarantining bad lines.

Two parsers, one result. Plain WhatsApp status lines (nearly all of a real spool) are parsed by
DuckDB itself (`whatsapp_webhooks.bulk_statuses_sql`: JSON functions, no Python per event); every
other line (inbound replies, other providers, old JSON-format records, anything odd or malformed)
goes through the reference parser (`parse_webhook`, Pydantic records). Both feed the same staging
and the same INSERTs, and tests/receipts/test_ingest_bulk.py checks that `bulk=False` gives identical rows.

One transaction per batch of files (up to `batch_bytes` of spool): a batch's rows and its
`spool_files` entries commit together or not at all, so a crash mid-ingest leaves nothing half
done and the next run redoes the whole batch. Batches are large and even (spool.batches_of): each
commit into `events` merges the batch into the primary-key index and writes the whole index out
again (~1 s per million receipts), so one INSERT and one commit per batch is the cheapest way in.

A receipt that names no message of the outbox goes to `unmatched_events` instead of `events`, never counted;
each ingest moves those whose message has since appeared (pipeline/receipts/unmatched.py).

Idempotent twice over: finished files are skipped by name, and every row is keyed by a stable
hash, so replaying a file adds nothing even without that bookkeeping. Of the copies of one receipt
within a batch, the first (file, line, position) is kept; a receipt already in `events` always
stays as it is.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from pipeline.channels import (
    alibaba_sms_webhooks,
    chatapp_webhooks,
    email_webhooks,
    messenger_webhooks,
    twilio_webhooks,
    unsubscribe_webhooks,
    viber_webhooks,
)
from pipeline.channels.whatsapp_webhooks import BULK_CANDIDATE, bulk_statuses_sql, inbound_message_id, parse_webhook
from pipeline.receipts import unmatched
from pipeline.receipts.event_ids import EVENT_ID_SQL, _hash, event_id
from pipeline.receipts.links import apply_watermarks, link_receipts
from pipeline.receipts.spool import batches_of, closed_files, decode_record, lines_table, read_spool_file
from pipeline.records import Inbound, Receipt

log = logging.getLogger(__name__)

Parser = Callable[[bytes], tuple[list[Receipt], list[Inbound]]]
# provider -> webhook body parser; a new provider adds one entry (and a route in the receiver).
# One parser per provider whose webhooks the receiver spools (pipeline/receipts/routes.py).
PARSERS: dict[str, Parser] = {
    "whatsapp": parse_webhook,
    "messenger": messenger_webhooks.parse,
    "instagram": messenger_webhooks.parse,
    "viber": viber_webhooks.parse,
    "chatapp": chatapp_webhooks.parse,
    "twilio": twilio_webhooks.parse,
    "alibaba_sms": alibaba_sms_webhooks.parse,
    "email": email_webhooks.parse,
    "unsubscribe": unsubscribe_webhooks.parse,
}
# The channel a provider's opt-outs suppress, and how it writes addresses.
SUPPRESSION_CHANNEL = {"twilio": "sms", "alibaba_sms": "sms", "unsubscribe": "email"}
_ID_CHANNELS = frozenset({"messenger", "instagram", "viber"})


def suppression_key(provider: str, sender: str | None) -> tuple[str, str | None]:
    """(channel, address) an opt-out from `sender` on `provider` suppresses: phone channels by E.164,
    e-mail by lower-cased address, Messenger/Instagram/Viber by their user id."""
    channel = SUPPRESSION_CHANNEL.get(provider, provider)
    if not sender:
        return channel, None
    if channel == "email":
        return channel, sender.strip().lower()
    if channel in _ID_CHANNELS:
        return channel, sender.strip()
    return channel, _address(sender)

STOP_KEYWORDS = frozenset({"stop", "unsubscribe", "stopall", "end", "cancel", "quit", "退订"})
OPT_OUT_ERROR_CODES = frozenset({"131050"})  # recipient stopped marketing messages from this business
DEFAULT_BATCH_BYTES = 512 * 1024 * 1024  # ~1.3M WhatsApp receipts; ~1.5 GB of memory while staged

_TS = pl.Datetime("us", "UTC")
_ORDER: dict[str, Any] = {"file_idx": pl.Int32, "line_no": pl.Int32, "pos": pl.Int64}
EVENT_COLUMNS = ["event_id", "provider", "provider_message_id", "message_id", "status", "error_code",
                 "error_title", "category", "pricing_type", "recipient", "occurred_at", "received_at", "raw_json"]
EVENT_SCHEMA: dict[str, Any] = {
    **_ORDER, **dict.fromkeys(EVENT_COLUMNS, pl.String), "occurred_at": _TS, "received_at": _TS,
}
INBOUND_SCHEMA: dict[str, Any] = {
    **_ORDER, "event_id": pl.String, "provider": pl.String, "sender": pl.String, "text": pl.String,
    "occurred_at": _TS, "raw_json": pl.String,
}
QUARANTINE_SCHEMA: dict[str, Any] = {
    "spool_file": pl.String, "line_number": pl.Int64, "reason": pl.String, "raw": pl.String,
}
STOP_SCHEMA: dict[str, Any] = {
    **_ORDER, "channel": pl.String, "address": pl.String, "reason": pl.String, "source": pl.String, "since": _TS,
}


@dataclass
class IngestResult:
    files: int = 0  # spool files ingested by this call
    events_added: int = 0
    inbound_added: int = 0
    quarantined: int = 0
    skipped_files: int = 0  # closed files already recorded in spool_files
    suppressions_added: int = 0
    derived_events: int = 0  # per-message receipts added for Messenger/Instagram watermarks
    unmatched: int = 0  # receipts naming no message of the outbox, kept apart (unmatched_events)
    promoted: int = 0  # receipts kept apart earlier whose message has appeared, moved into events

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def inbound_event_id(item: Inbound) -> str:
    return _hash("inbound", item.provider, inbound_message_id(item) or item.raw_json)


def is_stop_keyword(text: str | None) -> bool:
    return text is not None and text.strip().casefold() in STOP_KEYWORDS


def _address(digits_or_e164: str | None) -> str | None:
    # ASCII digits only, as the SQL below does (Python's \d would also keep other scripts' digits).
    digits = re.sub(r"[^0-9]", "", digits_or_e164 or "")
    return f"+{digits}" if digits else None


class _Staged:
    """Rows the reference parser gives for the lines of one batch, before they are written."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.inbound: list[dict[str, Any]] = []
        self.quarantine: list[dict[str, Any]] = []
        self.stops: list[dict[str, Any]] = []

    def add_line(self, file_idx: int, name: str, line_no: int, line: bytes) -> None:
        if not line.strip():
            return
        try:
            provider, received_at, body = decode_record(line)
            parser = PARSERS.get(provider)
            if parser is None:
                raise ValueError(f"unknown provider {provider!r}")
            receipts, inbound = parser(body)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:  # MalformedPayload is a ValueError
            self.quarantine.append({
                "spool_file": name, "line_number": line_no, "reason": f"{type(exc).__name__}: {exc}"[:500],
                "raw": line.decode("utf-8", errors="replace"),
            })
            return
        order = {"file_idx": file_idx, "line_no": line_no}
        for pos, r in enumerate(receipts):
            self.events.append({
                **order, "pos": pos, "event_id": event_id(r), "provider": r.provider,
                "provider_message_id": r.provider_message_id, "message_id": r.message_id,
                "status": r.status, "error_code": r.error_code, "error_title": r.error_title,
                "category": r.category, "pricing_type": r.pricing_type, "recipient": r.recipient,
                "occurred_at": r.occurred_at, "received_at": received_at, "raw_json": r.raw_json,
            })
        for pos, m in enumerate(inbound):
            self.inbound.append({
                **order, "pos": pos, "event_id": inbound_event_id(m), "provider": m.provider,
                "sender": m.sender, "text": m.text, "occurred_at": m.occurred_at, "raw_json": m.raw_json,
            })
            channel, address = suppression_key(provider, m.sender)
            if is_stop_keyword(m.text) and address:
                reason = "unsubscribe" if provider == "unsubscribe" else "stop_reply"
                source = (unsubscribe_webhooks.suppression_source(m) if provider == unsubscribe_webhooks.PROVIDER
                          else inbound_message_id(m))
                self.stops.append({**order, "pos": pos, "channel": channel, "address": address, "reason": reason,
                                   "source": source, "since": m.occurred_at})


# Receipts new to `events`; of copies within the batch the first (file, line, position) wins:
# `_staged_dups` (computed while the previous batch was written) names the winners of the rare
# repeated ids (Meta's retries). A stored copy has the same occurred_at (it is part of the hash), so
# the existing rows are looked up only within the batch's time range ($lo, $hi): DuckDB skips the
# row groups outside it by their min/max, and the check costs what the batch costs, not what the
# whole table does.
_EVENTS_SQL = f"""
INSERT INTO events ({', '.join(EVENT_COLUMNS)})
SELECT {', '.join('s.' + c for c in EVENT_COLUMNS)}
FROM _staged_events s LEFT JOIN _staged_dups r ON r.event_id = s.event_id
WHERE (r.event_id IS NULL OR (s.file_idx, s.line_no, s.pos) = r.first)
  AND NOT EXISTS (SELECT 1 FROM events e WHERE e.occurred_at BETWEEN $lo AND $hi AND e.event_id = s.event_id)
  AND s.event_id NOT IN (SELECT event_id FROM _unmatched_ids)
"""
_INBOUND_SQL = """
INSERT INTO inbound (event_id, provider, sender, text, occurred_at, raw_json)
SELECT event_id, provider, sender, text, occurred_at, raw_json FROM _py_inbound s
WHERE NOT EXISTS (SELECT 1 FROM inbound i WHERE i.event_id = s.event_id)
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY file_idx, line_no, pos) = 1
"""
_QUARANTINE_SQL = "INSERT OR IGNORE INTO quarantine (spool_file, line_number, reason, raw) SELECT * FROM _py_quarantine"
# Opt-outs: failed receipts with an opt-out code, and STOP replies. A receipt without recipient_id
# still names our message: the address then comes from the outbox. The earliest opt-out per address
# wins (ties: file order); an address already suppressed keeps its first reason.
_SUPPRESSIONS_SQL = """
INSERT OR IGNORE INTO suppressions (channel, address, reason, source, since)
SELECT channel, address, arg_min(reason, (since, file_idx, line_no, reason, pos)),
       arg_min(source, (since, file_idx, line_no, reason, pos)), min(since)
FROM (
    SELECT s.channel, coalesce(s.address, o.recipient_key) AS address, s.reason, s.source, s.since,
           s.file_idx, s.line_no, s.pos
    FROM (
        SELECT * FROM _staged_opt_outs
        UNION ALL
        SELECT channel, address, NULL, reason, source, since, file_idx, line_no, pos FROM _py_stops
    ) s LEFT JOIN outbox o ON o.message_id = s.message_id
)
WHERE address IS NOT NULL
GROUP BY channel, address
"""
# The batch's failed receipts with an opt-out code, as _SUPPRESSIONS_SQL reads them (few rows: the
# stage keeps them, so the write does not scan the batch's receipts for them).
_OPT_OUTS_SQL = f"""
SELECT provider AS channel, '+' || nullif(regexp_replace(coalesce(recipient, ''), '[^0-9]', '', 'g'), '') AS address,
       message_id, 'marketing_opt_out' AS reason, provider_message_id AS source, occurred_at AS since,
       file_idx, line_no, pos
FROM ({{events}})
WHERE status = 'failed' AND error_code IN ({', '.join(repr(c) for c in sorted(OPT_OUT_ERROR_CODES))})
"""
# Each ingest attaches an in-memory database of its own: every connection of the instance sees it.
_STAGE_PREFIX = "_receipts_stage_"
_VIEWS = ("_py_inbound", "_py_quarantine", "_py_stops", "_new_spool_files")
_COLUMNS = "file_idx, line_no, pos, " + ", ".join(EVENT_COLUMNS)
_STAGE_TABLES = ("bulk", "bad", "py", "dups", "opt_outs")


@dataclass
class _Batch:
    stage: str  # the stage database's name
    number: int
    paths: list[Path]
    sizes: list[int]
    staged: _Staged  # rows the reference parser gave
    bulk: bool  # whether the stage database holds bulk_<number> and bad_<number>
    per_file: dict[int, int] = field(default_factory=dict)  # receipts and inbound per file index
    time_range: tuple[datetime | None, datetime | None] = (None, None)  # of the batch's receipts

    def table(self, kind: str) -> str:
        return f"{self.stage}.{kind}_{self.number}"

    def events_sql(self) -> str:
        """Every receipt of the batch: the bulk parser's (but for lines it left) and the reference parser's."""
        # ANTI JOIN, not NOT EXISTS: DuckDB plans the latter as a mark join over every row (3x slower).
        bulk = f"""SELECT {_COLUMNS} FROM {self.table('bulk')} ANTI JOIN {self.table('bad')} USING (file_idx, line_no)
            WHERE ok UNION ALL """ if self.bulk else ""
        return f"{bulk}SELECT {_COLUMNS} FROM {self.table('py')}"


def _read_lines(paths: list[Path], staged: _Staged, bulk: bool) -> tuple[list[int], list[pa.Table]]:
    """(file sizes, line tables of the files DuckDB parses); lines of any other file go to `staged`."""
    sizes, tables = [], []
    for idx, path in enumerate(paths):
        data = read_spool_file(path)
        sizes.append(len(data))
        table = lines_table(idx, data) if bulk else None
        if table is None:
            for line_no, line in enumerate(data[:].split(b"\n"), start=1):
                staged.add_line(idx, path.name, line_no, line)
        else:
            tables.append(table)
    return sizes, tables


def _parse_bulk(cur: duckdb.DuckDBPyConnection, batch: _Batch, tables: list[pa.Table]) -> None:
    """The bulk parser over the batch's lines into bulk_<n> / bad_<n>; the lines it leaves (other
    providers, inbound messages, anything odd) go through the reference parser into `batch.staged`."""
    statuses, bad = batch.table("bulk"), batch.table("bad")
    cur.register("_spool_lines", pa.concat_tables(tables))
    try:
        cur.execute(f"""CREATE TABLE {statuses} AS SELECT CASE WHEN ok THEN {EVENT_ID_SQL} END AS event_id, *
                        FROM ({bulk_statuses_sql('_spool_lines', body='body')})""")
        cur.execute(f"CREATE TABLE {bad} AS SELECT DISTINCT file_idx, line_no FROM {statuses} WHERE NOT ok")
        # Two scans, not one with `OR EXISTS`, which DuckDB plans as a mark join over every line (4x slower).
        leftovers = cur.execute(f"""
            SELECT file_idx, line_no, line FROM _spool_lines WHERE line <> '' AND NOT ({BULK_CANDIDATE})
            UNION ALL
            SELECT file_idx, line_no, line FROM _spool_lines SEMI JOIN {bad} USING (file_idx, line_no)
            ORDER BY file_idx, line_no""").fetchall()
    finally:
        cur.unregister("_spool_lines")
    for idx, line_no, line in leftovers:
        batch.staged.add_line(idx, batch.paths[idx].name, line_no, line.encode("utf-8"))


def _stage(cur: duckdb.DuckDBPyConnection, stage: str, number: int, paths: list[Path], bulk: bool) -> _Batch:
    """Parses one batch into the stage database (bulk SQL) and a _Staged (everything else), with
    what the write needs to know about it: repeated receipts, opt-outs, counts per file, time range.

    Runs on a cursor (its own connection), in a worker thread while the previous batch is written.
    """
    staged = _Staged()
    sizes, tables = _read_lines(paths, staged, bulk)
    batch = _Batch(stage, number, paths, sizes, staged, bulk=bool(tables))
    if tables:
        _parse_bulk(cur, batch, tables)
    cur.register("_py_events", pl.DataFrame(staged.events, schema=EVENT_SCHEMA).to_arrow())
    try:
        cur.execute(f"CREATE TABLE {batch.table('py')} AS SELECT {_COLUMNS} FROM _py_events")
    finally:
        cur.unregister("_py_events")
    events = batch.events_sql()
    cur.execute(f"""CREATE TABLE {batch.table('dups')} AS SELECT event_id, min((file_idx, line_no, pos)) AS first
                    FROM ({events}) GROUP BY event_id HAVING count(*) > 1""")
    cur.execute(f"CREATE TABLE {batch.table('opt_outs')} AS {_OPT_OUTS_SQL.format(events=events)}")
    rows = cur.execute(f"SELECT file_idx, count(*), min(occurred_at), max(occurred_at) FROM ({events}) GROUP BY ALL"
                       ).fetchall()
    batch.per_file = {idx: n for idx, n, _, _ in rows}
    for row in staged.inbound:
        batch.per_file[row["file_idx"]] = batch.per_file.get(row["file_idx"], 0) + 1
    if rows:
        batch.time_range = (min(r[2] for r in rows), max(r[3] for r in rows))
    return batch


def _write(con: duckdb.DuckDBPyConnection, batch: _Batch, result: IngestResult) -> None:
    """Writes one staged batch and its spool_files rows in one transaction."""
    staged = batch.staged
    for view, rows, schema in (("_py_inbound", staged.inbound, INBOUND_SCHEMA),
                               ("_py_quarantine", staged.quarantine, QUARANTINE_SCHEMA),
                               ("_py_stops", staged.stops, STOP_SCHEMA)):
        con.register(view, pl.DataFrame(rows, schema=schema).to_arrow())
    con.register("_new_spool_files", pa.table({
        "name": [p.name for p in batch.paths], "bytes": batch.sizes,
        "events": [batch.per_file.get(i, 0) for i in range(len(batch.paths))],
        "ingested_at": pa.array([datetime.now(UTC)] * len(batch.paths), pa.timestamp("us", "UTC")),
    }))
    try:
        # Views, not copies: the INSERTs read them, each only the columns it needs.
        con.execute(f"CREATE OR REPLACE TEMP VIEW _staged_events AS {batch.events_sql()}")
        for kind in ("dups", "opt_outs"):
            con.execute(f"CREATE OR REPLACE TEMP VIEW _staged_{kind} AS SELECT * FROM {batch.table(kind)}")
        con.begin()
        try:
            lo, hi = batch.time_range
            con.execute(unmatched.STAGE_SQL)
            added = [int(con.execute(_EVENTS_SQL, {"lo": lo, "hi": hi}).fetchall()[0][0])]
            kept_apart = int(con.execute(unmatched.INSERT_SQL).fetchall()[0][0])
            added += [int(con.execute(sql).fetchall()[0][0]) for sql in (_INBOUND_SQL, _QUARANTINE_SQL,
                                                                          _SUPPRESSIONS_SQL)]
            con.execute("INSERT INTO spool_files (name, bytes, events, ingested_at) SELECT * FROM _new_spool_files")
            con.commit()
        except BaseException:
            con.rollback()
            raise
    finally:
        con.execute("DROP TABLE IF EXISTS _unmatched_ids")
        for view in ("_staged_events", "_staged_dups", "_staged_opt_outs"):
            con.execute(f"DROP VIEW IF EXISTS {view}")
        for view in _VIEWS:
            con.unregister(view)
        for kind in _STAGE_TABLES:
            con.execute(f"DROP TABLE IF EXISTS {batch.table(kind)}")
    result.files += len(batch.paths)
    result.events_added += added[0]
    result.inbound_added += added[1]
    result.quarantined += added[2]
    result.suppressions_added += added[3]
    result.unmatched += kept_apart
    if staged.quarantine:
        log.warning("receipts: %d line(s) quarantined in %d file(s)", len(staged.quarantine), len(batch.paths))


# Unless compact=True, rows are stored without DICT_FSST (DuckDB's default string compression, whose
# analysis of long unique strings costs ~2 CPU-s per million events on the single-threaded keyed
# insert), and with ZSTD for strings of 256+ bytes on average, i.e. raw_json, instead of only 4 KB+.
# Measured on 1M events: storage work 4.8 -> 2.7 CPU-s, events data 271 -> 312 MB (532 uncompressed),
# the whole ingest 12 -> 7 s; the database file grows ~10 %.
_FAST_STORAGE = {"disabled_compression_methods": "dict_fsst", "zstd_min_string_length": "256"}


@contextmanager
def _storage(con: duckdb.DuckDBPyConnection, compact: bool) -> Iterator[None]:
    """Applies _FAST_STORAGE for the ingest unless compact; the settings are global to the database
    instance, hence restored afterwards."""
    if compact:
        yield
        return
    prior = {name: con.execute("SELECT current_setting(?)", [name]).fetchall()[0][0] for name in _FAST_STORAGE}
    for name, value in _FAST_STORAGE.items():
        con.execute(f"SET {name} = '{value}'")
    try:
        yield
    finally:
        for name, value in prior.items():
            con.execute(f"SET {name} = '{value}'" if str(value) else f"RESET {name}")


def ingest_spool(
    con: duckdb.DuckDBPyConnection, spool_dir: Path | str, *, bulk: bool = True,
    batch_bytes: int = DEFAULT_BATCH_BYTES, compact: bool = False,
) -> IngestResult:
    """Ingests every closed spool file not yet in `spool_files`, one transaction per batch of files.

    With more than one batch, the next is parsed on another connection while one is written.
    `bulk=False` parses every line with the reference parser (slow; for tests and comparisons);
    `compact=True` keeps DuckDB's default string compression: a ~10 % smaller file, a ~70 % slower
    ingest (see _FAST_STORAGE). Receipts are linked to their messages and watermarks applied on every
    call, also when no file is new.
    """
    # One ingest at a time in this process (DuckDB keeps other processes out of the file): two at
    # once could each find an event missing and both add it, since `events` has no key index.
    with _ONE_AT_A_TIME:
        return _ingest(con, spool_dir, bulk=bulk, batch_bytes=batch_bytes, compact=compact)


_ONE_AT_A_TIME = threading.Lock()


def _ingest(
    con: duckdb.DuckDBPyConnection, spool_dir: Path | str, *, bulk: bool, batch_bytes: int, compact: bool
) -> IngestResult:
    result = IngestResult()
    done = {row[0] for row in con.execute("SELECT name FROM spool_files").fetchall()}
    pending = []
    for path in closed_files(spool_dir):
        if path.name in done:
            result.skipped_files += 1
        else:
            pending.append(path)
    batches = list(batches_of(pending, batch_bytes))
    if batches:
        stage = _STAGE_PREFIX + secrets.token_hex(4)
        con.execute(f"ATTACH ':memory:' AS {stage}")
        cur = con.cursor()
        try:
            stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="receipts-stage")
            with _storage(con, compact), stager as pool:
                upcoming: Future[_Batch] | None = pool.submit(_stage, cur, stage, 0, batches[0], bulk)
                for number in range(len(batches)):
                    assert upcoming is not None
                    batch = upcoming.result()
                    upcoming = None
                    if number + 1 < len(batches):
                        upcoming = pool.submit(_stage, cur, stage, number + 1, batches[number + 1], bulk)
                    _write(con, batch, result)
        finally:  # also after a failure: the pool has finished any batch it was staging
            cur.close()
            con.execute(f"DETACH DATABASE IF EXISTS {stage}")
    # Every call, not only when files came: a receipt may have arrived before the dispatcher recorded
    # the provider id (or, for a watermark, the messages) it names.
    result.promoted = unmatched.promote(con)
    link_receipts(con)
    result.derived_events = apply_watermarks(con)
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
