"""Loading many rows at once: a Polars frame into a store table, in the caller's transaction.

SQLite takes them through one executemany (its C loop binds each row); PostgreSQL through COPY into a
temporary table, then one INSERT ... SELECT, which is also where repeated keys are skipped.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import polars as pl
import pyarrow as pa
from sqlalchemy import Connection, text

from pipeline.store import Store, dialect
from pipeline.store.schema import Day, Money, UtcTimestamp, metadata

_SQLITE_TS = "%Y-%m-%d %H:%M:%S%.6f"


def _for_sqlite(frame: pl.DataFrame, table: str) -> pl.DataFrame:
    """Timestamps, days and money as the text SQLite keeps them (pipeline/store/schema.py)."""
    columns = metadata.tables[table].columns
    casts = []
    for name in frame.columns:
        kind = columns[name].type
        dtype = frame.schema[name]
        if isinstance(kind, UtcTimestamp) and isinstance(dtype, pl.Datetime):
            value = pl.col(name).dt.replace_time_zone("UTC") if dtype.time_zone is None else \
                pl.col(name).dt.convert_time_zone("UTC")
            casts.append(value.dt.strftime(_SQLITE_TS))
        elif isinstance(kind, Day) and dtype == pl.Date:
            casts.append(pl.col(name).dt.strftime("%Y-%m-%d"))
        elif isinstance(kind, Money) and dtype != pl.String:
            casts.append(pl.col(name).cast(pl.String))
        elif dtype == pl.Boolean:
            casts.append(pl.col(name).cast(pl.Int8))
    return frame.with_columns(casts) if casts else frame


def insert_frame(
    conn: Connection, table: str, frame: pl.DataFrame, *, on_conflict: Literal["error", "ignore"] = "error",
) -> int:
    """Inserts `frame`'s rows (its columns name the table's); returns how many were added."""
    if frame.is_empty():
        return 0
    columns = frame.columns
    names = ", ".join(f'"{c}"' for c in columns)
    ignore = " ON CONFLICT DO NOTHING" if on_conflict == "ignore" else ""
    if conn.dialect.name == "sqlite":
        rows = _for_sqlite(frame, table).rows()
        placeholders = ", ".join("?" for _ in columns)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({placeholders}){ignore}", rows)
            # The rows this insert added: summed over the rows' statements, and, unlike the connection's
            # total_changes, without what triggers wrote (outbox marks its campaign in billing_changes).
            return cursor.rowcount
        finally:
            cursor.close()
    stage = f"_load_{secrets.token_hex(4)}"
    conn.execute(text(dialect.temp_table_sql("postgresql", stage, table, [f'"{c}"' for c in columns])))
    dialect.copy_rows(conn, stage, [f'"{c}"' for c in columns], frame.iter_rows())
    added = conn.execute(text(f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage}{ignore}")).rowcount
    conn.execute(text(f"DROP TABLE {stage}"))
    return added


class Staged:
    """Rows staged in C next to the store (see `staged`): `each_chunk` runs statements over them in short
    write transactions, `{stage}` naming the staged rows and `{chunk}` the condition selecting one chunk."""

    def __init__(self, run_chunk: Callable[[tuple[str, ...], str, int | None], list[int]], rows: int, chunk_rows: int,
                 chunk: Callable[[int, int], str], writers: int = 1) -> None:
        self._run_chunk, self.rows, self.chunk_rows = run_chunk, rows, chunk_rows
        self._chunk = chunk  # rows [start, end) as a condition on an indexed column
        self.writers = writers  # chunks in flight at once, each its own transaction on its own connection

    def each_chunk(self, *statements: str, shared: bool = False) -> list[int]:
        """Runs the statements for every chunk, each chunk in one transaction; returns the rows each changed.
        `shared`: the statements share a chunk's rows out (each row goes to one of them at most), so once they
        have changed as many rows as the chunk holds, the rest are not run (a probe of every row spared).
        Once a chunk has failed, the chunks not started yet are not run; its error is raised when those running end."""
        def one(start: int) -> list[int]:
            rows = min(self.chunk_rows, self.rows - start) if shared else None
            return self._run_chunk(statements, self._chunk(start, start + self.chunk_rows), rows)

        starts = range(0, self.rows, self.chunk_rows)
        if self.writers > 1 and len(starts) > 1:
            pool = ThreadPoolExecutor(self.writers, thread_name_prefix="store-write")
            try:
                futures = [pool.submit(one, start) for start in starts]
                wait(futures, return_when=FIRST_EXCEPTION)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
            results = [future.result() for future in futures]  # the first failed chunk's error, if any
        else:
            results = [one(start) for start in starts]
        return [sum(column) for column in zip(*results, strict=True)] if results else [0] * len(statements)


def _placed(changed: list[int], rows: int | None) -> bool:
    """Whether the statements run so far placed every row of a chunk whose rows they share out (`rows`)."""
    return rows is not None and sum(changed) >= rows


@dataclass
class Copied:
    """Rows copied beside the store by `copy_beside` and not moved yet: a scratch SQLite file (`name` its path) or
    an unlogged table (`name`). `discard` removes them; `staged` does when it ends. Calling it again does nothing."""

    db: Store
    rows: int
    name: str
    discarded: bool = False

    def discard(self) -> None:
        if self.discarded:
            return
        if self.db.dialect == "sqlite":
            shutil.rmtree(Path(self.name).parent, ignore_errors=True)
        else:
            with self.db.write() as conn:
                conn.execute(text(f"DROP TABLE IF EXISTS {self.name}"))
        self.discarded = True


def copy_beside(db: Store, table: str, rows: pa.Table, *, converted: bool = False) -> Copied:
    """The first half of `staged`: `rows` (an Arrow table whose columns name `table`'s) copied beside the store in C,
    never binding one Python value at a time. SQLite: a file of its own (ADBC's SQLite, a second copy of the library,
    never opens the store itself: two copies in one process break each other's locks); PostgreSQL: an unlogged
    table. It touches none of the store's tables, so a thread can copy the next rows while `staged` moves these.
    `converted`: `rows` went through `for_store` already."""
    rows = rows if converted else for_store(rows, table, db.dialect)
    rows = rows.append_column("_row", pa.array(range(rows.num_rows), pa.int64()))
    if db.dialect == "sqlite":
        import adbc_driver_sqlite.dbapi as adbc_sqlite

        copied = Copied(db, rows.num_rows, str(Path(tempfile.mkdtemp(prefix="campaign-load-")) / "stage.sqlite"))
        try:
            # A scratch file, gone after the load: nothing to journal or wait for the disk for.
            with adbc_sqlite.connect(copied.name, autocommit=True) as staging, staging.cursor() as cursor:
                cursor.execute("PRAGMA journal_mode = OFF")
                cursor.execute("PRAGMA synchronous = OFF")
                cursor.adbc_ingest("rows", rows, mode="create")
        except BaseException:
            copied.discard()
            raise
        return copied
    import adbc_driver_postgresql.dbapi as adbc_pg

    copied = Copied(db, rows.num_rows, f"_load_{secrets.token_hex(6)}")
    names = ", ".join(f'"{c}"' for c in rows.column_names if c != "_row")
    try:
        with db._translate(), adbc_pg.connect(dialect.adbc_uri(db.url)) as staging, staging.cursor() as cursor:
            cursor.execute(f"CREATE UNLOGGED TABLE {copied.name} AS SELECT {names} FROM {table} WITH NO DATA")
            cursor.execute(f"ALTER TABLE {copied.name} ADD COLUMN _row bigint")
            staging.commit()
            cursor.adbc_ingest(copied.name, rows, mode="append")
            cursor.execute(f"CREATE INDEX ON {copied.name} (_row)")  # each chunk a range of it, not a scan of all
            staging.commit()
    except BaseException:
        with suppress(Exception):  # a store that went away keeps the error above; the table is unlogged scratch
            copied.discard()
        raise
    return copied


@contextmanager
def staged(db: Store, table: str, rows: pa.Table | Copied, *, rows_per_transaction: int = 20_000,
           durable: bool = True, converted: bool = False, writers: int = 1) -> Iterator[Staged]:
    """Stages `rows` beside the store (`copy_beside`, unless they are `Copied` already), for the caller to move with
    `Staged.each_chunk` in transactions of at most `rows_per_transaction` rows, so other writers of the store wait
    a few tens of ms at most; the staged rows are discarded at the end.

    `durable=False` (SQLite) commits without waiting for the disk: after a power cut a suffix of the
    transactions may be missing, never a middle one; for rows whose source stays on disk (the spool) and that
    a second load adds again, that is the cheaper trade. `writers` (PostgreSQL): chunks written at once by as
    many connections, for statements whose chunks touch disjoint keys; SQLite takes one writer at a time, so
    there they go one after the other."""
    copied = rows if isinstance(rows, Copied) else copy_beside(db, table, rows, converted=converted)
    try:
        if db.dialect == "sqlite":
            with db._translate(), db.engine.connect() as conn:
                raw = conn.connection.driver_connection
                assert raw is not None
                raw.execute("ATTACH DATABASE ? AS stage", (copied.name,))
                if not durable:
                    raw.execute("PRAGMA synchronous = NORMAL")

                def run_chunk(statements: tuple[str, ...], chunk: str, rows: int | None) -> list[int]:
                    changed: list[int] = []
                    raw.execute("BEGIN IMMEDIATE")
                    try:
                        for sql in statements:
                            # rowcount: the statement's own rows (total_changes would add what triggers wrote)
                            changed.append(0 if _placed(changed, rows) else
                                           raw.execute(sql.format(stage="stage.rows", chunk=chunk)).rowcount)
                        raw.execute("COMMIT")
                    except BaseException:
                        raw.execute("ROLLBACK")
                        raise
                    return changed

                try:
                    # rowid numbers the staged rows in insertion order from 1: a chunk is a range of the table's key.
                    yield Staged(run_chunk, copied.rows, rows_per_transaction,
                                 chunk=lambda a, b: f"rowid > {a} AND rowid <= {b}")
                finally:
                    raw.execute("PRAGMA synchronous = FULL")
                    raw.execute("DETACH DATABASE stage")
        else:
            def run_chunk_pg(statements: tuple[str, ...], chunk: str, rows: int | None) -> list[int]:
                changed: list[int] = []
                with db.write() as conn:
                    for sql in statements:
                        changed.append(0 if _placed(changed, rows) else
                                       conn.execute(text(sql.format(stage=copied.name, chunk=chunk))).rowcount)
                return changed

            yield Staged(run_chunk_pg, copied.rows, rows_per_transaction,
                         chunk=lambda a, b: f"_row >= {a} AND _row < {b}", writers=writers)
    finally:
        copied.discard()


def load_arrow(
    db: Store, table: str, rows: pa.Table, *, on_conflict: Literal["error", "ignore"] = "ignore",
    rows_per_transaction: int = 20_000, durable: bool = True,
) -> int:
    """Appends many rows (an Arrow table whose columns name `table`'s), staged in C (see `staged`) and moved in
    short transactions; returns how many were added."""
    if rows.num_rows == 0:
        return 0
    names = ", ".join(f'"{c}"' for c in rows.column_names)
    ignore = " ON CONFLICT DO NOTHING" if on_conflict == "ignore" else ""
    with staged(db, table, rows, rows_per_transaction=rows_per_transaction, durable=durable) as stage:
        [added] = stage.each_chunk(f"INSERT INTO {table} ({names}) SELECT {names} FROM {{stage}} WHERE {{chunk}}"
                                   f"{ignore}")
    return added


def for_store(rows: pa.Table, table: str, dialect_name: str) -> pa.Table:
    """Columns as the store keeps them: on SQLite timestamps, days and money as text, booleans as 0/1 (DuckDB
    formats them: Arrow's strftime is ten times slower)."""
    if dialect_name != "sqlite":
        return rows
    columns = metadata.tables[table].columns
    select = []
    for name in rows.column_names:
        kind, arrow_type = columns[name].type, rows.schema.field(name).type
        quoted = f'"{name}"'
        if isinstance(kind, UtcTimestamp) and pa.types.is_timestamp(arrow_type):
            zone = "" if arrow_type.tz else " AT TIME ZONE 'UTC'"
            select.append(f"strftime(timezone('UTC', {quoted}{zone}), '%Y-%m-%d %H:%M:%S.%f') AS {quoted}")
        elif isinstance(kind, Day) and pa.types.is_date(arrow_type):
            select.append(f"strftime({quoted}, '%Y-%m-%d') AS {quoted}")
        elif (isinstance(kind, Money) and not pa.types.is_string(arrow_type)) or pa.types.is_boolean(arrow_type):
            select.append(f"CAST({quoted} AS {'VARCHAR' if isinstance(kind, Money) else 'TINYINT'}) AS {quoted}")
        else:
            select.append(quoted)
    import duckdb

    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("_rows", rows)
        return con.sql(f"SELECT {', '.join(select)} FROM _rows").to_arrow_table()
