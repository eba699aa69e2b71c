"""`campaign db import OLD.duckdb`: a ledger written by the DuckDB version, copied into the store.

Every table of the old ledger is copied in ingest order, in chunks; rows whose key the store already
holds are left as they are, so an import can be repeated. The billing tables are derived data and are
rebuilt by the next report instead of being copied. The old file is opened read-only and closed at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from pipeline.store import Store, StoreError
from pipeline.store.bulk import insert_frame
from pipeline.store.schema import metadata

# In dependency-free order; billing_messages, billing_groups and billing_sync are rebuilt, not copied.
TABLES = ("campaigns", "recipients", "rejects", "outbox", "outbox_transitions", "events", "unmatched_events",
          "inbound", "quarantine", "spool_files", "suppressions", "prices", "markets", "pricing_rules", "service_fees",
          "price_tiers", "cost_estimates", "points_ledger")
CHUNK_ROWS = 50_000


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
            if table not in present:
                continue
            old_columns = {r[0] for r in old.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]).fetchall()}
            columns = [c.name for c in metadata.tables[table].columns if c.name in old_columns and c.name != "seq"]
            source_rows = old.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
            order = " ORDER BY rowid"
            reader = old.execute(f"SELECT {', '.join(_q(c) for c in columns)} FROM {table}{order}").fetch_record_batch(
                CHUNK_ROWS)
            copied = 0
            for chunk in reader:
                frame = pl.from_arrow(chunk)
                assert isinstance(frame, pl.DataFrame)
                with db.write() as conn:
                    copied += insert_frame(conn, table, frame, on_conflict="ignore")
            store_rows = db.scalar(f"SELECT count(*) FROM {table}")
            copies.append(TableCopy(table, source_rows, copied, store_rows))
    finally:
        old.close()
    return copies


def _q(column: str) -> str:
    return f'"{column}"'
