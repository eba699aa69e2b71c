"""The store read as Arrow, for DuckDB to compute over: no process keeps a DuckDB file open.

PostgreSQL is read with its ADBC driver (columnar end to end). SQLite is read through the same SQLite
library as every write (Python's sqlite3): ADBC's SQLite driver links its own copy of SQLite, and two
copies in one process break each other's file locks (sqlite.org/howtocorrupt.html §2.2.1).
Columns come back typed as the schema says (timestamps UTC, money exact decimals, days as dates),
whichever database they came from. `reader(db)` makes several reads over one connection.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import BigInteger, Boolean, Integer, SmallInteger

from pipeline.store import Store, bind, dialect
from pipeline.store.schema import Day, Money, UtcTimestamp, metadata

TIMESTAMP = pa.timestamp("us", tz="UTC")
MONEY = pa.decimal128(18, 6)
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def column_types(table: str) -> dict[str, pa.DataType]:
    """The Arrow type of each column of a store table."""
    types: dict[str, pa.DataType] = {}
    for column in metadata.tables[table].columns:
        kind = column.type
        if isinstance(kind, UtcTimestamp):
            types[column.name] = TIMESTAMP
        elif isinstance(kind, Money):
            types[column.name] = MONEY
        elif isinstance(kind, Day):
            types[column.name] = pa.date32()
        elif isinstance(kind, Boolean):
            types[column.name] = pa.bool_()
        elif isinstance(kind, BigInteger | Integer | SmallInteger):
            types[column.name] = pa.int64()
        else:
            types[column.name] = pa.string()
    return types


def read_arrow(db: Store, statement: str, types: Mapping[str, pa.DataType] | None = None, **params: Any) -> pa.Table:
    """Runs a query and returns its rows as an Arrow table, columns cast to `types` where given. A list (tuple,
    set) parameter expands for `IN :name`, as in Store.rows."""
    with reader(db) as read:
        return read.arrow(statement, types, **params)


def read_table(db: Store, table: str, where: str = "", **params: Any) -> pa.Table:
    """A whole store table (or the rows `where` selects) with the schema's column types."""
    with reader(db) as read:
        return read.table(table, where, **params)


class Reader:
    """Several reads over one connection (see `reader`); the same methods as read_arrow and read_table."""

    def __init__(self, dialect: str, connection: Any) -> None:
        self._dialect = dialect
        self._connection = connection  # an ADBC connection (PostgreSQL) or the DBAPI one of a read transaction

    def arrow(self, statement: str, types: Mapping[str, pa.DataType] | None = None, **params: Any) -> pa.Table:
        statement, flat = _expand_lists(statement, params)
        read = _read_postgres if self._dialect == "postgresql" else _read_sqlite
        return _cast(read(self._connection, statement, flat), types or {})

    def table(self, table: str, where: str = "", **params: Any) -> pa.Table:
        types = column_types(table)
        sql = f"SELECT {', '.join(_quoted(c) for c in types)} FROM {table} {where}"
        return self.arrow(sql, types, **params)


@contextmanager
def reader(db: Store) -> Iterator[Reader]:
    """Several reads through one connection: on PostgreSQL one ADBC connection (opening one costs tens of
    milliseconds, more than reading a small table), on SQLite one read transaction (one snapshot)."""
    if db.dialect == "postgresql":
        import adbc_driver_postgresql.dbapi as adbc

        with db._translate(), adbc.connect(dialect.adbc_uri(db.url)) as conn:  # a lost server: one line
            yield Reader("postgresql", conn)
    else:
        with db.read() as conn:
            yield Reader("sqlite", conn.connection.driver_connection)


def _expand_lists(statement: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """`IN :ids` with ids=[a, b] -> `IN (:ids__0, :ids__1)` (an empty list matches nothing: `IN (NULL)`)."""
    flat: dict[str, Any] = {}
    for name, value in params.items():
        if not isinstance(value, list | tuple | set | frozenset):
            flat[name] = value
            continue
        items = list(value)
        names = [f"{name}__{i}" for i in range(len(items))]
        listed = "(" + ", ".join(f":{n}" for n in names) + ")" if items else "(NULL)"
        statement = re.sub(rf"(?<![:\w]):{name}(?!\w)", lambda _m, listed=listed: listed, statement)
        flat.update(zip(names, items, strict=True))
    return statement, flat


def _quoted(name: str) -> str:
    return f'"{name}"' if name in ("read",) else name


def _read_sqlite(connection: Any, statement: str, params: Mapping[str, Any]) -> pa.Table:
    cursor = connection.cursor()
    try:
        names: list[str] = []
        values = bind("sqlite", params)
        sql = _PARAM.sub(lambda m: f":{m.group(1)}", statement)
        cursor.execute(sql, values)
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
    finally:
        cursor.close()
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
    return pa.table({name: pa.array(list(col)) if col else pa.array([], pa.null()) for name, col in
                     zip(names, columns, strict=True)})


def _read_postgres(connection: Any, statement: str, params: Mapping[str, Any]) -> pa.Table:
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    sql = _PARAM.sub(number, statement)
    with connection.cursor() as cursor:
        if order:
            cursor.execute(sql, [params[name] for name in order])
        else:
            cursor.execute(sql)
        return cursor.fetch_arrow_table()


def _cast(table: pa.Table, types: Mapping[str, pa.DataType]) -> pa.Table:
    for name, kind in types.items():
        if name not in table.column_names:
            continue
        index = table.column_names.index(name)
        column = table.column(index)
        if column.type == kind:
            continue
        table = table.set_column(index, name, _convert(column, kind))
    return table


def _convert(column: pa.ChunkedArray, kind: pa.DataType) -> pa.ChunkedArray:
    if pa.types.is_null(column.type):
        return pa.chunked_array([pa.nulls(len(column), kind)])
    if kind == TIMESTAMP and pa.types.is_string(column.type):
        # SQLite keeps 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC: read as a plain timestamp, then marked UTC.
        return pa.chunked_array([pc.assume_timezone(pc.cast(c, pa.timestamp("us")), "UTC") for c in column.chunks],
                                type=TIMESTAMP)
    if pa.types.is_decimal(kind) and pa.types.is_floating(column.type):
        return pc.cast(pc.cast(column, pa.string()), kind)
    if kind == pa.date32() and pa.types.is_string(column.type):
        return pc.cast(pc.cast(column, pa.timestamp("s")), pa.date32())
    return pc.cast(column, kind)


def duck(tables: Mapping[str, pa.Table]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with each Arrow table as a table of that name (copied in: queries run on DuckDB's
    own storage, and the connection holds no file)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name, table in tables.items():
        con.register(f"_arrow_{name}", table)
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM _arrow_{name}')
        con.unregister(f"_arrow_{name}")
    return con
