"""`campaign db`: the store itself — where it is, its schema version, importing a DuckDB ledger."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.cli.common import add_db_arg


def cmd_db_import(args: argparse.Namespace) -> int:
    from pipeline import store
    from pipeline.store.import_duckdb import import_duckdb

    with store.connect(args.db) as db:
        copies = import_duckdb(db, args.ledger)
        print(f"{args.ledger} -> {store.shown(db.url)}")
        print(f"  {'table':<20}{'in ledger':>12}{'copied':>12}{'in store':>12}")
        short = []
        for c in copies:
            print(f"  {c.table:<20}{c.source_rows:>12,}{c.copied:>12,}{c.store_rows:>12,}")
            if c.store_rows < c.source_rows:
                short.append(c.table)
    if short:
        print(f"error: the store holds fewer rows than the ledger in: {', '.join(short)}")
        return 1
    return 0


def cmd_db_info(args: argparse.Namespace) -> int:
    from pipeline import store
    from pipeline.store.dialect import durability
    from pipeline.store.migrate import version

    with store.connect(args.db) as db, db.read() as conn:
        settings, warning = durability(conn)
        print(f"store: {store.shown(db.url)}\nschema version: {version(conn)}\ndurability: {settings}")
    if warning:
        print(f"warning: {warning}")
    return 0


def add_db_commands(sub: Any) -> None:
    p = sub.add_parser("db", help="the store: where it is, its schema version, importing an old DuckDB ledger")
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="DB_COMMAND")
    q = dbsub.add_parser("info", help="the store's URL (password hidden), schema version and durability settings")
    add_db_arg(q)
    q.set_defaults(func=cmd_db_info)
    q = dbsub.add_parser("import", help="copy a ledger written by the DuckDB version into the store")
    q.add_argument("ledger", type=Path, help="the old campaigns.duckdb")
    add_db_arg(q)
    q.set_defaults(func=cmd_db_import)
