"""Where SQLite and PostgreSQL differ, in one place: connection set-up, the claim, bulk loads.

Everything else is the same SQL on both (SQLAlchemy Core text with named parameters).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.engine import Engine

BUSY_TIMEOUT_S = float(os.environ.get("CAMPAIGN_DB_BUSY_TIMEOUT_S", "30"))


def prepare_sqlite(engine: Engine) -> None:
    """WAL (readers never block the writer), FULL sync (a committed claim survives a power cut, not only
    a crash), a busy timeout instead of 'database is locked', and transactions we begin ourselves: pysqlite's
    own implicit BEGIN is deferred, and two deferred writers that both read first deadlock on the upgrade."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # autocommit at the driver: BEGIN is ours
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = OFF")
        cursor.execute("PRAGMA cache_size = -65536")  # 64 MB: index maintenance of large ingests stays in memory
        cursor.execute("PRAGMA temp_store = MEMORY")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A write transaction takes the write lock at once (waiting up to the busy timeout for it).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")


def claim(conn: Connection, campaign_id: str, seqs: Sequence[int], now: datetime) -> list[int]:
    """queued -> sending for the given seqs of a campaign; returns the seqs this transaction took.

    PostgreSQL: rows another dispatcher has locked are skipped, not waited for (it is claiming them);
    SQLite: the write transaction is the only writer, so a plain conditional UPDATE is exclusive."""
    if not seqs:
        return []
    if conn.dialect.name == "postgresql":
        sql = """
            UPDATE outbox SET state = 'sending', attempts = outbox.attempts + 1, updated_at = %s
            FROM (SELECT ctid AS row_id FROM outbox
                  WHERE campaign_id = %s AND seq = ANY(CAST(%s AS bigint[])) AND state = 'queued'
                  FOR UPDATE SKIP LOCKED) AS c
            WHERE outbox.ctid = c.row_id
            RETURNING outbox.seq"""
        return [r[0] for r in conn.exec_driver_sql(sql, (now, campaign_id, list(seqs))).all()]
    marks = ", ".join("?" for _ in seqs)
    sql = (f"UPDATE outbox SET state = 'sending', attempts = attempts + 1, updated_at = ? "
           f"WHERE campaign_id = ? AND seq IN ({marks}) AND state = 'queued' RETURNING seq")
    return [r[0] for r in conn.exec_driver_sql(sql, (_sqlite_ts(now), campaign_id, *seqs)).all()]


# Per outcome: seq, state, attempts, provider id, error code, error detail, sent_at, not_before, retryable.
_OUTCOME_SET = """state = o.state, attempts = o.attempts,
    provider_message_id = coalesce(o.pid, outbox.provider_message_id), error_code = o.code,
    error_detail = o.detail, sent_at = coalesce(o.sent_at, outbox.sent_at), not_before = o.not_before,
    retryable = o.retryable, updated_at = {now}"""
_OUTCOME_COLUMNS = "seq, state, attempts, pid, code, detail, sent_at, not_before, retryable"


def record_outcomes(conn: Connection, campaign_id: str, rows: Sequence[tuple[Any, ...]], now: datetime) -> None:
    """One UPDATE for a whole group commit's outcomes (a statement per message costs more than the rows)."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        columns = list(zip(*rows, strict=True))
        sql = f"""
            UPDATE outbox SET {_OUTCOME_SET.format(now="%s")}
            FROM unnest(CAST(%s AS bigint[]), CAST(%s AS text[]), CAST(%s AS integer[]), CAST(%s AS text[]),
                        CAST(%s AS text[]), CAST(%s AS text[]), CAST(%s AS timestamptz[]),
                        CAST(%s AS timestamptz[]), CAST(%s AS boolean[])) AS o({_OUTCOME_COLUMNS})
            WHERE outbox.campaign_id = %s AND outbox.seq = o.seq"""
        conn.exec_driver_sql(sql, (now, *[list(c) for c in columns], campaign_id))
        return
    flat: list[Any] = []
    for row in rows:
        flat += [*row[:6], _sqlite_ts(row[6]), _sqlite_ts(row[7]), row[8]]
    values = ", ".join("(?, ?, ?, ?, ?, ?, ?, ?, ?)" for _ in rows)
    sql = f"""
        WITH o({_OUTCOME_COLUMNS}) AS (VALUES {values})
        UPDATE outbox SET {_OUTCOME_SET.format(now="?")}
        FROM o WHERE outbox.campaign_id = ? AND outbox.seq = o.seq"""
    # SQLite numbers parameters in text order: the CTE's values come before the SET's timestamp.
    conn.exec_driver_sql(sql, (*flat, _sqlite_ts(now), campaign_id))


def record_transitions(conn: Connection, campaign_id: str, rows: Sequence[tuple[int, str, str | None]],
                       now: datetime) -> None:
    """Appends (seq, state, error code) transitions, all stamped `now`, in one statement."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        seqs, states, codes = (list(c) for c in zip(*rows, strict=True))
        conn.exec_driver_sql(
            "INSERT INTO outbox_transitions (campaign_id, seq, state, error_code, changed_at) "
            "SELECT %s, s, st, c, %s FROM unnest(CAST(%s AS bigint[]), CAST(%s AS text[]), CAST(%s AS text[])) "
            "AS t(s, st, c)", (campaign_id, now, seqs, states, codes))
        return
    stamp = _sqlite_ts(now)
    values = ", ".join("(?, ?, ?, ?, ?)" for _ in rows)
    conn.exec_driver_sql(
        f"INSERT INTO outbox_transitions (campaign_id, seq, state, error_code, changed_at) VALUES {values}",
        tuple(v for seq, state, code in rows for v in (campaign_id, seq, state, code, stamp)))


def _sqlite_ts(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def copy_rows(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Appends rows as fast as the database takes them: COPY on PostgreSQL, executemany on SQLite.
    No conflict handling: load into a staging table first where keys may repeat."""
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        assert raw is not None
        with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        return
    placeholders = ", ".join("?" for _ in columns)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", rows)
    finally:
        cursor.close()


def temp_table_sql(dialect: str, name: str, like: str, columns: Sequence[str]) -> str:
    """A staging table with some of `like`'s columns, dropped at commit (PostgreSQL) or by the caller."""
    if dialect == "postgresql":
        return f"CREATE TEMP TABLE {name} ON COMMIT DROP AS SELECT {', '.join(columns)} FROM {like} WITH NO DATA"
    return f"CREATE TEMP TABLE {name} AS SELECT {', '.join(columns)} FROM {like} WHERE 0"


# What `joined_keys` puts between keys: the ASCII record separator, which no address, user id or e-mail holds.
KEY_SEPARATOR = "\x1e"


def joined_keys(dialect: str, column: str) -> str:
    """The SQL aggregate joining a column's values into one text with KEY_SEPARATOR between them."""
    if dialect == "postgresql":
        return f"string_agg({column}, chr(30))"
    return f"group_concat({column}, char(30))"


def adbc_uri(url: str) -> str:
    """The store's PostgreSQL URL as libpq takes it from the ADBC driver, without JIT (see pipeline.store.connect:
    compiling a plan costs more than running the store's statements; Arrow reads are plain scans)."""
    from sqlalchemy.engine import make_url

    uri = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return uri + ("&" if "?" in uri else "?") + "options=-c%20jit%3Doff"
