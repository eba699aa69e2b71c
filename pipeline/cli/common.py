"""What several command groups share: the `--db` option naming the store, and who starts a run."""

from __future__ import annotations

import argparse
import getpass
import os

DB_HELP = ("the store: a PostgreSQL URL (postgresql://USER@HOST/DB) or a SQLite file path "
           "(default: $CAMPAIGN_DATABASE_URL, else data/campaigns.sqlite)")


def add_db_arg(parser: argparse.ArgumentParser, *, help_text: str = DB_HELP) -> None:
    parser.add_argument("--db", default=None, metavar="URL|PATH", help=help_text)


def add_started_by_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--started-by", default=None, metavar="NAME",
                        help="who starts this run, who may then not approve it (default: $CAMPAIGN_OPERATOR, "
                             "else your login name)")


def started_by(args: argparse.Namespace) -> str | None:
    """The person starting a run from the command line: named, else $CAMPAIGN_OPERATOR, else the login name."""
    named = getattr(args, "started_by", None) or os.environ.get("CAMPAIGN_OPERATOR")
    if named:
        return " ".join(named.split())
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name for this uid (a container's)
        return None
