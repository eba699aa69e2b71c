"""Where SQLite and PostgreSQL differ, in one place: connection set-up, the claim, bulk loads.

Everything else is the same SQL on both (SQLAlchemy Core text with named parameters).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.engine import Engine

BUSY_TIMEOUT_ENV = "CAMPAIGN_DB_BUSY_TIMEOUT_S"
DEFAULT_BUSY_TIMEOUT_S = 30.0


def busy_timeout_s(environ: Mapping[str, str] | None = None) -> float:
    """How long a SQLite connection waits for another's lock: CAMPAIGN_DB_BUSY_TIMEOUT_S, else 30 s. Read when a
    store is opened, not at import, so a bad value is the SpecError's one line from the command that opens one."""
    from pipeline.settings import seconds_setting  # here: the store imports nothing of the pipeline (nor pydantic)

    return seconds_setting(BUSY_TIMEOUT_ENV, DEFAULT_BUSY_TIMEOUT_S, environ)


def prepare_sqlite(engine: Engine, timeout_s: float | None = None) -> None:
    """WAL (readers never block the writer), FULL sync (a committed claim survives a power cut, not only
    a crash), a busy timeout instead of 'database is locked' (`timeout_s`; by default `busy_timeout_s()`), and
    transactions we begin ourselves: pysqlite's own implicit BEGIN is deferred, and two deferred writers that both
    read first deadlock on the upgrade."""
    wait_s = busy_timeout_s() if timeout_s is None else timeout_s

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # autocommit at the driver: BEGIN is ours
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
        _enter_wal(cursor, wait_s)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = OFF")
        cursor.execute("PRAGMA cache_size = -65536")  # 64 MB: index maintenance of large ingests stays in memory
        cursor.execute("PRAGMA temp_store = MEMORY")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A write transaction takes the write lock at once (waiting up to the busy timeout for it).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")


def prepare_postgresql(engine: Engine) -> None:
    """A commit is on disk before PostgreSQL says it is (as SQLite's FULL sync): a claim said committed and then lost
    in a crash of the server would queue its message again after the restart, though its request had left. A server
    set to `synchronous_commit = off` (a common throughput tip) would do that, so our sessions raise it to `local`;
    a stronger setting (`on`, `remote_write`, `remote_apply`: waiting for standbys too) is kept as it is."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            if cursor.fetchone()[0] == "off":
                cursor.execute("SET synchronous_commit = local")
        dbapi_connection.commit()  # the SET outlives this transaction only if it commits


def durability(conn: Connection) -> tuple[str, str | None]:
    """What a committed claim survives, as the store's own sessions see it (`campaign db info`): the settings, and a
    warning where the server trades that away. A server with fsync or full-page writes off can lose or tear what it
    acknowledged when its machine crashes (power, kernel): a claim among them, its message is sent again after the
    restart. Those are server-wide, so the store can only say so; `synchronous_commit` it raises itself."""
    if conn.dialect.name == "sqlite":
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        level = {0: "off", 1: "normal", 2: "full", 3: "extra"}.get(conn.exec_driver_sql("PRAGMA synchronous").scalar())
        return f"journal_mode={mode}, synchronous={level}", None
    names = ("synchronous_commit", "fsync", "full_page_writes")
    values = {name: conn.exec_driver_sql(f"SHOW {name}").scalar() for name in names}
    off = [f"{name}=off" for name in names[1:] if values[name] == "off"]
    warning = (f"the server runs with {', '.join(off)}: a crash of its machine may lose commits it acknowledged, "
               "and a message whose claim is lost is sent again after the restart") if off else None
    return ", ".join(f"{name}={value}" for name, value in values.items()), warning


def _enter_wal(cursor: Any, wait_s: float) -> None:
    """Switch a file to WAL, retrying while another connection switches it: the switch needs the exclusive
    lock, and two processes opening a new file together each hold a read lock while asking for it, so
    SQLite refuses one at once ('database is locked') instead of calling the busy handler (it would deadlock)."""
    deadline = time.monotonic() + wait_s
    pause = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


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


# What `joined_rows` puts between a row's values: the ASCII unit separator.
FIELD_SEPARATOR = "\x1f"


def joined_rows(dialect: str, columns: Sequence[str]) -> str:
    """`joined_keys` of several columns: each row's values with FIELD_SEPARATOR between them."""
    separator = " || chr(31) || " if dialect == "postgresql" else " || char(31) || "
    return joined_keys(dialect, separator.join(columns))


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


# --- the send history's triggers (pipeline/audience/send_history.py) -------------------------------------------------
# A send counts for the cap when it has a `sent_at` and is `sent` or `unknown`. When such a row of a closed hour
# (by the database's clock) changes, appears or goes, the trigger deletes the blob of the row's hour before and after
# the change; the next read stores it again. A send of the open hour fires nothing, so dispatching pays nothing. An
# hour is stored only HISTORY_MARGIN after it closed: a change made before the close but committed after it is seen
# then (a transaction open longer than that at an hour's end could be missed).
HISTORY_MARGIN = "10 minutes"


def history_triggers(dialect: str) -> list[str]:
    """The statements creating the outbox triggers that keep `send_history` true."""
    if dialect == "postgresql":
        def closed(row: str) -> str:
            return (f"({row}.sent_at IS NOT NULL AND {row}.state IN ('sent', 'unknown') AND {row}.sent_at < "
                    "date_trunc('hour', clock_timestamp(), 'UTC'))")

        def forget(row: str) -> str:
            return (f"DELETE FROM send_history WHERE hour = to_char({row}.sent_at AT TIME ZONE 'UTC', "
                    f"'YYYY-MM-DD HH24') AND channel = {row}.channel;")
        return [
            f"""CREATE FUNCTION outbox_history_forget() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF TG_OP <> 'INSERT' THEN {forget("OLD")} END IF;
                    IF TG_OP <> 'DELETE' THEN {forget("NEW")} END IF;
                    RETURN NULL;
                END $$""",
            f"CREATE TRIGGER outbox_history_insert AFTER INSERT ON outbox FOR EACH ROW WHEN {closed('NEW')} "
            "EXECUTE FUNCTION outbox_history_forget()",
            f"CREATE TRIGGER outbox_history_update AFTER UPDATE OF {_HISTORY_COLUMNS} ON outbox FOR EACH ROW "
            f"WHEN ({closed('OLD')} OR {closed('NEW')}) EXECUTE FUNCTION outbox_history_forget()",
            f"CREATE TRIGGER outbox_history_delete AFTER DELETE ON outbox FOR EACH ROW WHEN {closed('OLD')} "
            "EXECUTE FUNCTION outbox_history_forget()",
        ]

    def closed_sqlite(row: str) -> str:
        return (f"({row}.sent_at IS NOT NULL AND {row}.state IN ('sent', 'unknown') AND substr({row}.sent_at, 1, 13) "
                "< strftime('%Y-%m-%d %H', 'now'))")

    def forget_sqlite(row: str) -> str:
        return f"DELETE FROM send_history WHERE hour = substr({row}.sent_at, 1, 13) AND channel = {row}.channel;"
    return [
        f"CREATE TRIGGER outbox_history_insert AFTER INSERT ON outbox WHEN {closed_sqlite('NEW')} "
        f"BEGIN {forget_sqlite('NEW')} END",
        f"CREATE TRIGGER outbox_history_update AFTER UPDATE OF {_HISTORY_COLUMNS} ON outbox "
        f"WHEN {closed_sqlite('OLD')} OR {closed_sqlite('NEW')} "
        f"BEGIN {forget_sqlite('OLD')} {forget_sqlite('NEW')} END",
        f"CREATE TRIGGER outbox_history_delete AFTER DELETE ON outbox WHEN {closed_sqlite('OLD')} "
        f"BEGIN {forget_sqlite('OLD')} END",
    ]


_HISTORY_COLUMNS = "state, sent_at, channel, category, recipient_key, campaign_id"


def drop_history_triggers(dialect: str) -> list[str]:
    names = ["outbox_history_insert", "outbox_history_update", "outbox_history_delete"]
    if dialect == "postgresql":
        return [*(f"DROP TRIGGER {n} ON outbox" for n in names), "DROP FUNCTION outbox_history_forget()"]
    return [f"DROP TRIGGER {n}" for n in names]


def storable_before_sql(dialect: str) -> str:
    """The hour ('YYYY-MM-DD HH', UTC) before which hours may be stored: that of the database's clock less
    HISTORY_MARGIN (one clock for every process)."""
    if dialect == "postgresql":
        return (f"SELECT to_char((clock_timestamp() - interval '{HISTORY_MARGIN}') AT TIME ZONE 'UTC', "
                "'YYYY-MM-DD HH24')")
    return f"SELECT strftime('%Y-%m-%d %H', 'now', '-{HISTORY_MARGIN}')"


@contextmanager
def bounded_write(engine: Engine, wait_s: float, *, lock: str | None = None) -> Iterator[Connection]:
    """A write transaction that waits at most `wait_s` for the store's writers (SQLite's busy timeout, PostgreSQL's
    lock timeout) instead of the store's usual busy timeout; on PostgreSQL it first takes table `lock` in SHARE ROW
    EXCLUSIVE mode, if given. For aids (the send history, the cap's kept counts): a caller that holds a write
    transaction of its own, or a preparation waiting on the cap, must not stall behind them."""
    with engine.connect().execution_options(write=True) as conn:
        if conn.dialect.name == "postgresql":
            with conn.begin():
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(wait_s * 1000)}ms'")
                if lock:
                    conn.exec_driver_sql(f"LOCK TABLE {lock} IN SHARE ROW EXCLUSIVE MODE")
                yield conn
            return
        raw = conn.connection.driver_connection
        usual_ms = raw.execute("PRAGMA busy_timeout").fetchone()[0]  # as prepare_sqlite set it for this store
        raw.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
        try:
            with conn.begin():
                yield conn
        finally:
            raw.execute(f"PRAGMA busy_timeout = {int(usual_ms)}")


def history_write(engine: Engine, wait_s: float) -> AbstractContextManager[Connection]:
    """A write transaction that stores hours of the send history: it holds back every trigger's delete until it
    ends, so an hour read and stored in it cannot miss a change committed meanwhile (SQLite: the write transaction
    is the only writer; PostgreSQL: a lock on send_history that the triggers' deletes wait for). It waits at most
    `wait_s` for that: the history is an aid, and a caller holding a write transaction itself must not stall."""
    return bounded_write(engine, wait_s, lock="send_history")


def history_blobs(conn: Connection, channels: Sequence[str], low: str, high: str,
                  data: bool = True) -> list[tuple[str, str, str | None, bytes | None]]:
    """(hour, channel, version, data) of the send history's blobs of `channels` from hour `low` to `high` (data None
    when not asked for). PostgreSQL sends them in binary: in text a bytea travels as hex, and 30 MB took 0.13-0.17 s
    to read against 0.04 s."""
    column = "data" if data else "NULL"
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        with raw.cursor(binary=True) as cur:
            cur.execute(f"SELECT hour, channel, version, {column} FROM send_history WHERE channel = ANY(%s) "
                        "AND hour >= %s AND hour <= %s", (list(channels), low, high))
            return [tuple(r) for r in cur.fetchall()]
    marks = ", ".join("?" for _ in channels)
    return [tuple(r) for r in conn.exec_driver_sql(
        f"SELECT hour, channel, version, {column} FROM send_history WHERE channel IN ({marks}) AND hour >= ? "
        "AND hour <= ?", (*channels, low, high)).all()]
