"""Where SQLite and PostgreSQL differ, in one place: connection set-up, the claim, bulk loads.

Everything else is the same SQL on both (SQLAlchemy Core text with named parameters).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
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


def claim_sql(dialect: str) -> str:
    """queued -> sending for the given seqs of a campaign, returning the seqs this transaction took.

    PostgreSQL: rows another dispatcher has locked are skipped, not waited for (it is claiming them);
    SQLite: the write transaction is the only writer, so a plain conditional UPDATE is exclusive."""
    condition = "campaign_id = :campaign_id AND seq IN :seqs AND state = 'queued'"
    if dialect == "postgresql":
        return f"""
            UPDATE outbox SET state = 'sending', attempts = attempts + 1, updated_at = :now
            WHERE message_id IN (SELECT message_id FROM outbox WHERE {condition} FOR UPDATE SKIP LOCKED)
            RETURNING seq"""
    return f"UPDATE outbox SET state = 'sending', attempts = attempts + 1, updated_at = :now WHERE {condition} " \
           "RETURNING seq"


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

