"""The receipts stage: ingests closed spool files into the store's events/inbound, quarantining bad lines.

Two parsers, one result. Plain WhatsApp status lines (nearly all of a real spool) are parsed by
DuckDB itself (`whatsapp_webhooks.bulk_statuses_sql`: JSON functions, no Python per event); every
other line (inbound replies, other providers, old JSON-format records, anything odd or malformed)
goes through the reference parser (`parse_webhook`, Pydantic records). Both feed the same staging
and the same INSERTs, and tests/receipts/test_ingest_bulk.py checks that `bulk=False` gives identical rows.

DuckDB parses and stages each batch of files in memory (it holds no file), and the batch's receipts are
copied beside the store (pipeline/store/bulk.py), all while the batch before is written; the rows go into
the store in short write transactions of `write_rows` rows (on PostgreSQL `WRITERS` at once), so
dispatchers sharing the store are never held up for long, and a batch's `spool_files` entries are written
last: a crash mid-batch leaves those files to the next run, which adds what is missing and nothing twice.

A receipt that names no message of the outbox goes to `unmatched_events` instead of `events`, never counted;
each ingest moves those whose message has since appeared (pipeline/receipts/unmatched.py).

Idempotent twice over: finished files are skipped by name, and every receipt is keyed by a stable
hash (a unique index of the store), so replaying a file, or two collectors ingesting the same file at
once, adds nothing. Of the copies of one receipt within a batch, the first (file, line, position) is
kept; a receipt already in `events` always stays as it is.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection

from pipeline.channels import whatsapp_account_webhooks
from pipeline.channels.templates import apply_updates
from pipeline.channels.whatsapp_webhooks import BULK_CANDIDATE, bulk_statuses_sql
from pipeline.receipts import unmatched
from pipeline.receipts.event_ids import EVENT_ID_SQL
from pipeline.receipts.links import apply_watermarks, link_receipts
from pipeline.receipts.replies import link_replies, opt_out_payloads
from pipeline.receipts.spool import batches_of, closed_files, lines_table, read_spool_file
from pipeline.receipts.staging import OPT_OUT_ERROR_CODES, Staged
from pipeline.store import Store
from pipeline.store.bulk import Copied, copy_beside, for_store, insert_frame
from pipeline.store.bulk import staged as staged_beside_store

log = logging.getLogger(__name__)

DEFAULT_BATCH_BYTES = 256 * 1024 * 1024  # ~650k WhatsApp receipts; ~0.8 GB of memory while staged
# Rows per write transaction: short enough that a dispatcher's group commit waits a few tens of ms at most.
DEFAULT_WRITE_ROWS = 5_000
# PostgreSQL: chunks written by this many connections at once (disjoint receipts: they never wait on each other).
# The server's work is most of a chunk's time, and one connection keeps one of its processes busy.
WRITERS = 2

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
REPLY_SCHEMA: dict[str, Any] = {
    **_ORDER, "event_id": pl.String, "channel": pl.String, "address": pl.String, "kind": pl.String,
    "payload": pl.String, "context_id": pl.String, "opt_out": pl.Boolean, "occurred_at": _TS, "linked": pl.Boolean,
    "message_id": pl.String, "campaign_id": pl.String,
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
    replies_linked: int = 0  # replies and taps linked by this call; ones still waiting not (replies.py)
    registry_updates: int = 0  # template and number changes applied to the registry (channels/templates.py)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# neighbouring index pages instead of pages all over the index (migration 0009).
# Receipts of the batch, of copies within it the first (file, line, position): `_staged_dups` names the
# winners of the rare repeated ids (Meta's retries). Those already in the store are skipped on insert.
# In message order, the order of the store's key: written in short transactions, each touches a run of
# neighbouring index pages instead of pages all over the index (migration 0009).
_BATCH_EVENTS_SQL = f"""
SELECT {', '.join('s.' + c for c in EVENT_COLUMNS)}
FROM ({{events}}) s LEFT JOIN {{dups}} r ON r.event_id = s.event_id
WHERE r.event_id IS NULL OR (s.file_idx, s.line_no, s.pos) = r.first
ORDER BY s.message_id NULLS LAST, s.file_idx, s.line_no, s.pos
"""
_BATCH_INBOUND_SQL = """
SELECT event_id, provider, sender, text, occurred_at, raw_json FROM _py_inbound
QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY file_idx, line_no, pos) = 1
"""
_BATCH_REPLIES_SQL = """
SELECT event_id, channel, address, kind, payload, context_id, opt_out, occurred_at, linked, message_id, campaign_id
FROM _py_replies QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY file_idx, line_no, pos) = 1
"""
# Opt-outs: failed receipts with an opt-out code, and those staging.py gives (STOP replies, opt-out taps, Meta's
# user_preferences stops). A receipt without recipient_id still names our message: the address then comes from
# the outbox (`_addresses`). The earliest opt-out per address wins (ties: file order); an address already
# suppressed keeps its first reason.
_BATCH_SUPPRESSIONS_SQL = """
SELECT channel, address, arg_min(reason, (since, file_idx, line_no, reason, pos)) AS reason,
       arg_min(source, (since, file_idx, line_no, reason, pos)) AS source, min(since) AS since
FROM (
    SELECT s.channel, coalesce(s.address, a.recipient_key) AS address, s.reason, s.source, s.since,
           s.file_idx, s.line_no, s.pos
    FROM (
        SELECT * FROM {opt_outs}
        UNION ALL
        SELECT channel, address, NULL, reason, source, since, file_idx, line_no, pos FROM _py_stops
    ) s LEFT JOIN _addresses a ON a.message_id = s.message_id
)
WHERE address IS NOT NULL
GROUP BY channel, address
"""
# The batch's failed receipts with an opt-out code, as _BATCH_SUPPRESSIONS_SQL reads them.
_OPT_OUTS_SQL = f"""
SELECT provider AS channel, '+' || nullif(regexp_replace(coalesce(recipient, ''), '[^0-9]', '', 'g'), '') AS address,
       message_id, 'marketing_opt_out' AS reason, provider_message_id AS source, occurred_at AS since,
       file_idx, line_no, pos
FROM ({{events}})
WHERE status = 'failed' AND error_code IN ({', '.join(repr(c) for c in sorted(OPT_OUT_ERROR_CODES))})
"""
_COLUMNS = "file_idx, line_no, pos, " + ", ".join(EVENT_COLUMNS)
_STAGE_TABLES = ("bulk", "bad", "py", "dups", "opt_outs")


@dataclass
class _Batch:
    number: int
    paths: list[Path]
    sizes: list[int]
    staged: Staged  # rows the reference parser gave
    bulk: bool  # whether the stage holds bulk_<number> and bad_<number>
    per_file: dict[int, int] = field(default_factory=dict)  # receipts and inbound per file index
    copied: Copied | None = None  # the batch's receipts copied beside the store (bulk.copy_beside), in key order

    def table(self, kind: str) -> str:
        return f"{kind}_{self.number}"

    def events_sql(self) -> str:
        """Every receipt of the batch: the bulk parser's (but for lines it left) and the reference parser's."""
        # ANTI JOIN, not NOT EXISTS: DuckDB plans the latter as a mark join over every row (3x slower).
        bulk = f"""SELECT {_COLUMNS} FROM {self.table('bulk')} ANTI JOIN {self.table('bad')} USING (file_idx, line_no)
            WHERE ok UNION ALL """ if self.bulk else ""
        return f"{bulk}SELECT {_COLUMNS} FROM {self.table('py')}"

    def discard(self) -> None:
        if self.copied is not None:
            self.copied.discard()


def _read_lines(paths: list[Path], staged: Staged, bulk: bool) -> tuple[list[int], list[pa.Table]]:
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
        # Lines the bulk parser took (or skipped as carrying no status) that announce template or number changes.
        marked = " OR ".join(f"contains(line, '{m.decode()}')" for m in whatsapp_account_webhooks.MARKERS)
        announcing = cur.execute(f"""
            SELECT file_idx, line_no, body FROM _spool_lines ANTI JOIN {bad} USING (file_idx, line_no)
            WHERE {BULK_CANDIDATE} AND ({marked}) ORDER BY file_idx, line_no""").fetchall()
    finally:
        cur.unregister("_spool_lines")
    for idx, line_no, line in leftovers:
        batch.staged.add_line(idx, batch.paths[idx].name, line_no, line.encode("utf-8"))
    for idx, line_no, body in announcing:
        batch.staged.add_updates(batch.paths[idx].name, line_no, body.encode("utf-8"))


def _stage(cur: duckdb.DuckDBPyConnection, number: int, paths: list[Path], bulk: bool, db: Store,
           opt_outs: frozenset[str] = frozenset()) -> _Batch:
    """Parses one batch into DuckDB tables (bulk SQL) and a Staged (everything else), with what the
    write needs to know about it: repeated receipts, opt-outs, counts per file.

    Runs on a cursor of the in-memory DuckDB, in a worker thread while the previous batch is written; its
    receipts end copied beside the store, ready to be moved (the copy touches none of the store's tables).
    """
    staged = Staged(opt_outs)
    sizes, tables = _read_lines(paths, staged, bulk)
    batch = _Batch(number, paths, sizes, staged, bulk=bool(tables))
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
    rows = cur.execute(f"SELECT file_idx, count(*) FROM ({events}) GROUP BY ALL").fetchall()
    batch.per_file = {idx: n for idx, n in rows}
    for row in staged.inbound:
        batch.per_file[row["file_idx"]] = batch.per_file.get(row["file_idx"], 0) + 1
    # Here, not in the writer: this thread prepares batch n + 1 while batch n is written.
    ordered = cur.sql(_BATCH_EVENTS_SQL.format(events=events, dups=batch.table("dups"))).to_arrow_table()
    batch.copied = copy_beside(db, "events", for_store(_storable(ordered), "events", db.dialect), converted=True)
    return batch


def _write(db: Store, duck: duckdb.DuckDBPyConnection, batch: _Batch, result: IngestResult, write_rows: int) -> None:
    """Writes one staged batch into the store in short transactions; its spool_files rows go last."""
    staged = batch.staged
    for view, rows, schema in (("_py_inbound", staged.inbound, INBOUND_SCHEMA),
                               ("_py_stops", staged.stops, STOP_SCHEMA), ("_py_replies", staged.replies, REPLY_SCHEMA)):
        duck.register(view, pl.DataFrame(rows, schema=schema).to_arrow())
    try:
        assert batch.copied is not None
        with staged_beside_store(db, "events", batch.copied, rows_per_transaction=write_rows, durable=False,
                                 writers=WRITERS) as rows:
            added, kept_apart = rows.each_chunk(*unmatched.SPLIT_SQL, shared=True)
        result.events_added += added
        result.unmatched += kept_apart
        inbound = pl.from_arrow(_storable(duck.sql(_BATCH_INBOUND_SQL).to_arrow_table()))
        replies = pl.from_arrow(_storable(duck.sql(_BATCH_REPLIES_SQL).to_arrow_table()))
        quarantine = pl.from_arrow(_storable(pl.DataFrame(staged.quarantine, schema=QUARANTINE_SCHEMA).to_arrow()))
        opt_outs = duck.execute(f"SELECT DISTINCT message_id FROM {batch.table('opt_outs')} "
                                "WHERE address IS NULL AND message_id IS NOT NULL").fetchall()
        # An id holding NUL names no message of ours (and PostgreSQL could not even be asked about it).
        duck.register("_addresses", _addresses(db, [m for (m,) in opt_outs if _NUL not in m]).to_arrow())
        suppressions = pl.from_arrow(_storable(duck.sql(
            _BATCH_SUPPRESSIONS_SQL.format(opt_outs=batch.table("opt_outs"))).to_arrow_table()))
        spool_rows = pl.DataFrame({
            "name": [p.name for p in batch.paths], "bytes": batch.sizes,
            "events": [batch.per_file.get(i, 0) for i in range(len(batch.paths))],
            "ingested_at": [datetime.now(UTC)] * len(batch.paths),
        }, schema={"name": pl.String, "bytes": pl.Int64, "events": pl.Int64, "ingested_at": _TS})
        with db.write() as conn:
            result.inbound_added += _insert(conn, "inbound", inbound)
            _insert(conn, "replies", replies)
            result.quarantined += _insert(conn, "quarantine", quarantine)
            result.suppressions_added += _insert(conn, "suppressions", suppressions)
            result.registry_updates += apply_updates(conn, staged.updates)
            insert_frame(conn, "spool_files", spool_rows, on_conflict="ignore")
    finally:
        for view in ("_py_inbound", "_py_stops", "_py_replies", "_addresses"):
            duck.unregister(view)
        for kind in _STAGE_TABLES:
            duck.execute(f"DROP TABLE IF EXISTS {batch.table(kind)}")
    result.files += len(batch.paths)
    if staged.quarantine:
        log.warning("receipts: %d line(s) quarantined in %d file(s)", len(staged.quarantine), len(batch.paths))


_NUL = "\x00"


def _storable(rows: pa.Table) -> pa.Table:
    """Text as every store can hold it: PostgreSQL's text has no NUL character, which a signed body may still
    carry (JSON's \\u0000 in an id, a name, a reply): U+FFFD takes its place, on SQLite too, so that both stores
    hold the same. Event ids were computed before, from the values as received."""
    for i, column_field in enumerate(rows.schema):
        if pa.types.is_string(column_field.type) or pa.types.is_large_string(column_field.type):
            column = rows.column(i)
            if _may_hold_nul(column):
                rows = rows.set_column(i, column_field, pc.replace_substring(column, _NUL, "\ufffd"))
    return rows


def _may_hold_nul(column: pa.ChunkedArray) -> bool:
    """Whether a zero byte is among the column's characters: one pass over each chunk's bytes (a tenth of the
    time of a substring search of every value), which may also see bytes of values sliced away."""
    for chunk in column.chunks:
        data = chunk.buffers()[2]
        if data is not None and data.size and pc.min(pa.Array.from_buffers(pa.uint8(), data.size, [None, data])
                                                     ).as_py() == 0:
            return True
    return False


def _insert(conn: Connection, table: str, frame: pl.DataFrame) -> int:
    return insert_frame(conn, table, frame, on_conflict="ignore")


def _addresses(db: Store, message_ids: list[str]) -> pl.DataFrame:
    """The address each of these messages went to (for opt-outs whose receipt does not say)."""
    rows: list[tuple[str, str]] = []
    for start in range(0, len(message_ids), 500):
        rows += [tuple(r) for r in db.rows("SELECT message_id, recipient_key FROM outbox WHERE message_id IN :ids",
                                           ids=message_ids[start:start + 500])]
    return pl.DataFrame(rows, schema={"message_id": pl.String, "recipient_key": pl.String}, orient="row")


def ingest_spool(
    db: Store, spool_dir: Path | str, *, bulk: bool = True, batch_bytes: int = DEFAULT_BATCH_BYTES,
    write_rows: int = DEFAULT_WRITE_ROWS,
) -> IngestResult:
    """Ingests every closed spool file not yet in `spool_files`; safe beside other collectors.

    With more than one batch, the next is parsed while one is written. `bulk=False` parses every line
    with the reference parser (slow; for tests and comparisons). Receipts are linked to their messages
    and watermarks applied on every call, also when no file is new.
    """
    result = IngestResult()
    done = {row[0] for row in db.rows("SELECT name FROM spool_files")}
    pending = []
    for path in closed_files(spool_dir):
        if path.name in done:
            result.skipped_files += 1
        else:
            pending.append(path)
    batches = list(batches_of(pending, batch_bytes))
    if batches:
        opt_outs = opt_out_payloads(db)
        duck = duckdb.connect()  # in memory: parsing and staging only
        cur = duck.cursor()
        try:
            stager = ThreadPoolExecutor(max_workers=1, thread_name_prefix="receipts-stage")
            with stager as pool:
                upcoming: Future[_Batch] | None = pool.submit(_stage, cur, 0, batches[0], bulk, db, opt_outs)
                try:
                    for number in range(len(batches)):
                        assert upcoming is not None
                        batch = upcoming.result()
                        upcoming = None
                        if number + 1 < len(batches):
                            upcoming = pool.submit(_stage, cur, number + 1, batches[number + 1], bulk, db, opt_outs)
                        try:
                            _write(db, duck, batch, result, write_rows)
                        finally:
                            batch.discard()
                finally:  # a failure may leave the next batch copied beside the store
                    if upcoming is not None:
                        with suppress(Exception):
                            upcoming.result().discard()
        finally:  # also after a failure: the pool has finished any batch it was staging
            cur.close()
            duck.close()
    # Every call, not only when files came: a receipt may have arrived before the dispatcher recorded
    # the provider id (or, for a watermark, the messages) it names.
    result.promoted = unmatched.promote(db)
    link_receipts(db)
    result.derived_events = apply_watermarks(db)
    result.replies_linked = link_replies(db)
    log.info("receipts: ingested %s", result.as_dict())
    return result


def current_statuses(db: Store, campaign_id: str) -> dict[str, int]:
    """How many of a campaign's messages are currently sent / delivered / read / failed."""
    rows = db.rows("""
        SELECT ms.status, count(*) FROM message_status ms
        JOIN outbox o ON o.message_id = ms.message_id
        WHERE o.campaign_id = :c
        GROUP BY ms.status
        """, c=campaign_id)
    return {status: int(n) for status, n in rows}
