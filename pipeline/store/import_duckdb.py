"""`campaign db import OLD.duckdb`: a ledger written by the DuckDB version, copied into the store.

Every table of the old ledger is copied in ingest order, in chunks; rows whose key the store already
holds are left as they are, so an import can be repeated. The tables without a key (rejects, transitions,
estimates) are copied a campaign at a time, each in one transaction, and only for a campaign the store holds
none of their rows of: a repeated or interrupted import neither doubles nor halves them. The store numbers
receipts itself (`events.seq`); an outbox row keeps its `seq`, its place in the campaign's order. The billing
tables are derived data and are rebuilt by the next report instead of being copied. The old file is opened
read-only and closed at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa

from pipeline.store import Store, StoreError, run
from pipeline.store.bulk import insert_frame
from pipeline.store.schema import metadata

# In dependency-free order; billing_messages, billing_groups and billing_sync are rebuilt, not copied.
TABLES = ("campaigns", "recipients", "rejects", "outbox", "outbox_transitions", "events", "unmatched_events",
          "inbound", "quarantine", "spool_files", "suppressions", "prices", "markets", "pricing_rules", "service_fees",
          "price_tiers", "cost_estimates", "points_ledger")
CHUNK_ROWS = 50_000
# Tables without a key: copied per campaign, all of a campaign's rows or none.
PER_CAMPAIGN = ("rejects", "outbox_transitions", "cost_estimates")


@dataclass(frozen=True)
class TableCopy:
    table: str
    source_rows: int
    copied: int  # rows the store did not hold yet
    store_rows: int  # rows in the store's table afterwards


def import_duckdb(db: Store, path: Path) -> list[TableCopy]:
    if not path.is_file():
        raise StoreError(f"{path}: no such DuckDB ledger")
    try:
        old = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as error:
        raise StoreError(f"{path}: not a DuckDB ledger this version can read ({str(error).splitlines()[0]})") from None
    copies = []
    try:
        present = {r[0] for r in old.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        for table in TABLES:
            if table in present:
                copies.append(_copy(db, old, table))
    finally:
        old.close()
    return copies


def _copy(db: Store, old: duckdb.DuckDBPyConnection, table: str) -> TableCopy:
    old_columns = {r[0] for r in old.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]).fetchall()}
    columns = [c.name for c in metadata.tables[table].columns
               if c.name in old_columns and not (c.primary_key and c.autoincrement is True)]
    select = f"SELECT {', '.join(_q(c) for c in columns)} FROM {table}"
    source_rows = old.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    copied = 0
    if table in PER_CAMPAIGN:
        for (campaign_id,) in old.execute(f"SELECT DISTINCT campaign_id FROM {table} ORDER BY 1").fetchall():
            with db.write() as conn:
                if run(conn, f"SELECT 1 FROM {table} WHERE campaign_id = :c LIMIT 1", c=campaign_id).first():
                    continue
                for chunk in old.sql(f"{select} WHERE campaign_id = ? ORDER BY rowid",
                                     params=[campaign_id]).to_arrow_reader(CHUNK_ROWS):
                    copied += insert_frame(conn, table, _frame(chunk))
    else:
        for chunk in old.sql(f"{select} ORDER BY rowid").to_arrow_reader(CHUNK_ROWS):
            with db.write() as conn:
                copied += insert_frame(conn, table, _frame(chunk), on_conflict="ignore")
    return TableCopy(table, source_rows, copied, db.scalar(f"SELECT count(*) FROM {table}"))


def _frame(chunk: pa.RecordBatch) -> pl.DataFrame:
    frame = pl.from_arrow(chunk)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _q(column: str) -> str:
    return f'"{column}"'
