"""What several command groups share: the `--db` option naming the store."""

from __future__ import annotations

import argparse

DB_HELP = ("the store: a PostgreSQL URL (postgresql://USER@HOST/DB) or a SQLite file path "
           "(default: $CAMPAIGN_DATABASE_URL, else data/campaigns.sqlite)")


def add_db_arg(parser: argparse.ArgumentParser, *, help_text: str = DB_HELP) -> None:
    parser.add_argument("--db", default=None, metavar="URL|PATH", help=help_text)
