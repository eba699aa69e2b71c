"""Loading many rows at once: a Polars frame into a store table, in the caller's transaction.

SQLite takes them through one executemany (its C loop binds each row); PostgreSQL through COPY into a
temporary table, then one INSERT ... SELECT, which is also where repeated keys are skipped.
"""

from __future__ import annotations

import secrets
from typing import Literal

import polars as pl
from sqlalchemy import Connection, text

from pipeline.store import dialect
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
            before = conn.connection.driver_connection.total_changes  # type: ignore[union-attr]
            cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({placeholders}){ignore}", rows)
            return conn.connection.driver_connection.total_changes - before  # type: ignore[union-attr]
        finally:
            cursor.close()
    stage = f"_load_{secrets.token_hex(4)}"
    conn.execute(text(dialect.temp_table_sql("postgresql", stage, table, [f'"{c}"' for c in columns])))
    dialect.copy_rows(conn, stage, [f'"{c}"' for c in columns], frame.iter_rows())
    added = conn.execute(text(f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage}{ignore}")).rowcount
    conn.execute(text(f"DROP TABLE {stage}"))
    return added
