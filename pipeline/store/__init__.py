"""The operational store: one transactional database that every process shares, named by one URL.

SQLite in WAL mode is the embedded default (`data/campaigns.sqlite`, nothing to start); PostgreSQL
(`postgresql://user@host/db`) serves fleets. `CAMPAIGN_DATABASE_URL` or `--db URL|PATH` chooses; a
plain path means SQLite. The schema (pipeline/store/schema.py) is versioned with Alembic and brought
up to date on first use. DuckDB never holds this store: it computes reports over what is read from it
(pipeline/store/arrow.py).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, create_engine, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.sql.elements import TextClause

from pipeline.store import dialect as _dialect

URL_ENV = "CAMPAIGN_DATABASE_URL"
DEFAULT_PATH = Path("data/campaigns.sqlite")


class StoreError(RuntimeError):
    """The store cannot be reached or used: one line naming the store (password masked) and why."""


def database_url(value: str | os.PathLike[str] | None = None) -> str:
    """The store's SQLAlchemy URL from `--db` (a URL or a path), else CAMPAIGN_DATABASE_URL, else the default."""
    raw = os.fspath(value) if value is not None else os.environ.get(URL_ENV) or os.fspath(DEFAULT_PATH)
    if "://" not in raw:
        return f"sqlite:///{Path(raw).expanduser()}"
    try:
        url = make_url(raw)
    except (ValueError, exc.ArgumentError) as error:  # e.g. a port that is not a number
        masked = re.sub(r"(://[^/@:]*:)[^/]*@", r"\1***@", raw)  # it did not parse: hide the password by hand
        raise StoreError(f"store {masked}: not a valid URL: use a path, sqlite:///PATH or "
                         "postgresql://USER@HOST[:PORT]/DB") from error
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    elif url.drivername not in ("postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
        raise StoreError(f"unsupported store URL {url.render_as_string(hide_password=True)}: "
                         "use a path, sqlite:///PATH or postgresql://USER@HOST/DB")
    return url.render_as_string(hide_password=False)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, or None for a server database."""
    parsed = make_url(url)
    return Path(parsed.database) if parsed.get_backend_name() == "sqlite" and parsed.database else None


def shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _sql(statement: str | TextClause, params: Mapping[str, Any]) -> TextClause:
    clause = text(statement) if isinstance(statement, str) else statement
    expanding = [k for k, v in params.items() if isinstance(v, list | tuple | set | frozenset)]
    return clause.bindparams(*(bindparam(k, expanding=True) for k in expanding)) if expanding else clause


class Store:
    """A connection pool to the store, safe to share between threads of one process."""

    def __init__(self, url: str, engine: Engine) -> None:
        self.url = url
        self.engine = engine
        self.dialect: str = engine.dialect.name  # "sqlite" | "postgresql"

    def __repr__(self) -> str:
        return f"Store({shown(self.url)})"

    @property
    def path(self) -> Path | None:
        """The SQLite file, or None for a server database."""
        return sqlite_path(self.url)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: one consistent snapshot."""
        with self._translate(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (on SQLite it holds the write lock from its first statement)."""
        with self._translate(), self.engine.connect().execution_options(write=True) as conn, conn.begin():
            yield conn

    def rows(self, statement: str, **params: Any) -> list[Any]:
        with self.read() as conn:
            return list(conn.execute(_sql(statement, params), bind(self.dialect, params)).all())

    def scalar(self, statement: str, **params: Any) -> Any:
        with self.read() as conn:
            return conn.execute(_sql(statement, params), bind(self.dialect, params)).scalar()

    def execute(self, statement: str, **params: Any) -> int:
        """Runs one write statement in its own transaction; returns the rows it changed."""
        with self.write() as conn:
            return conn.execute(_sql(statement, params), bind(self.dialect, params)).rowcount

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except exc.DBAPIError as error:
            why = _operator_cause(error, self.path)
            if why is None:
                raise
            raise StoreError(f"store {shown(self.url)}: {why}") from error
        except Exception as error:  # a raw cursor's own error (dialect.history_blobs, bulk loads): the same rules
            wrapped = _driver_error(error)
            why = _operator_cause(wrapped, self.path) if wrapped is not None else None
            if why is None:
                raise
            raise StoreError(f"store {shown(self.url)}: {why}") from error


def run(conn: Connection, statement: str, **params: Any) -> Any:
    """Executes `statement` on a connection of a transaction the caller holds (named parameters; lists
    expand for IN; datetimes, days and Decimals are converted for the dialect)."""
    return conn.execute(_sql(statement, params), bind(conn.dialect.name, params))


def run_many(conn: Connection, statement: str, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(text(statement), [bind(conn.dialect.name, r) for r in rows])


def bind(dialect: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _value(dialect, v) for k, v in params.items()}


def _value(dialect: str, value: Any) -> Any:
    if dialect != "sqlite":
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps UTC instants")
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [_value(dialect, v) for v in value]
    return value


def utc(value: Any) -> datetime | None:
    """A timestamp read back through plain SQL (text on SQLite) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _operator_cause(error: exc.DBAPIError, path: Path | None) -> str | None:
    """Why the store cannot be used, when an operator caused it and can fix it (server down, no rights,
    read-only, not a database); None for the rest (constraint violations, bad SQL): bugs keep their traceback."""
    orig = error.orig
    if getattr(orig, "sqlite_errorname", None) == "SQLITE_NOTADB":
        if path is not None and _is_duckdb(path):
            return (f"a DuckDB ledger (the older version's), not a SQLite database: use another store and copy "
                    f"the ledger into it with `campaign db import {path}`")
        return "not a SQLite database"
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate == "25006":  # read_only_sql_transaction: default_transaction_read_only, or a standby
        return "the store is read-only"
    if isinstance(error, exc.OperationalError) or sqlstate == "42501":  # 42501: insufficient_privilege
        return _reason(error)
    return None


def _driver_error(error: Exception) -> exc.DBAPIError | None:
    """A DB-API driver's own error (psycopg's, sqlite3's, ADBC's: from a raw cursor or an Arrow read, which SQLAlchemy
    does not wrap) as
    SQLAlchemy wraps it (OperationalError for an OperationalError, ...); None for any other exception."""
    for module in ("psycopg", "sqlite3", "adbc_driver_manager"):
        base = getattr(sys.modules.get(module), "Error", None)
        if isinstance(base, type) and isinstance(error, base):
            return exc.DBAPIError.instance(None, None, error, base)
    return None


def _is_duckdb(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(12)[8:12] == b"DUCK"  # DuckDB's magic, after an 8-byte checksum
    except OSError:
        return False


def _reason(error: BaseException) -> str:
    message = str(getattr(error, "orig", None) or error).strip().splitlines()
    return message[0] if message else type(error).__name__


def connect(value: str | os.PathLike[str] | None = None, *, migrate: bool = True) -> Store:
    """The store named by `value` (URL or path; default: CAMPAIGN_DATABASE_URL, else data/campaigns.sqlite),
    created and migrated to the current schema on first use. Raises StoreError, one line, when it cannot."""
    url = database_url(value)
    kind = make_url(url).get_backend_name()
    if kind == "sqlite":
        timeout_s = _dialect.busy_timeout_s()  # a bad setting is refused before a folder or file is made
        path = Path(make_url(url).database or "")
        if not path.name:
            raise StoreError("an in-memory SQLite store is not shared between processes: give a file path")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"store {shown(url)}: cannot create its folder: {error.strerror}") from error
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": timeout_s})
        _dialect.prepare_sqlite(engine, timeout_s)
    else:
        # No server-side prepared statements: psycopg prepares a query after 5 runs, and PostgreSQL's generic
        # plan for a claim (`seq = ANY(...)` of one campaign) scans the campaign instead of its index (10x slower).
        # No JIT: the store runs short statements (reports are DuckDB's), and a statement whose estimate passes
        # jit_above_cost spent ~0.75 s compiling for a 5,000-row ingest chunk that runs in 0.1 s.
        engine = create_engine(url, pool_pre_ping=True, connect_args={
            "connect_timeout": 10, "prepare_threshold": None, "options": "-c jit=off"})
        _dialect.prepare_postgresql(engine)
    db = Store(url, engine)
    if migrate:
        from pipeline.store.migrate import upgrade

        try:
            with db._translate():
                upgrade(db)
        except BaseException:
            db.close()  # the caller never gets the store to close
            raise
    return db


def scalar(db: Store, statement: str, **params: Any) -> Any:
    return db.scalar(statement, **params)


def suppressed_addresses(db: Store, channel: str) -> set[str]:
    return {r[0] for r in db.rows("SELECT address FROM suppressions WHERE channel = :channel", channel=channel)}


def suppression_reasons(db: Store, channel: str) -> dict[str, str]:
    """Each suppressed address of `channel` with why (stop_reply, opt_out_button, unsubscribe...): rejects say it."""
    return dict(db.rows("SELECT address, reason FROM suppressions WHERE channel = :channel", channel=channel))
