"""What several command groups share: the `--db` option naming the store (and how a flow is given it), who starts a
run, a positive number."""

from __future__ import annotations

import argparse
import getpass
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

DB_HELP = ("the store: a PostgreSQL URL (postgresql://USER@HOST/DB) or a SQLite file path "
           "(default: $CAMPAIGN_DATABASE_URL, else data/campaigns.sqlite)")


def add_db_arg(parser: argparse.ArgumentParser, *, help_text: str = DB_HELP) -> None:
    parser.add_argument("--db", default=None, metavar="URL|PATH", help=help_text)


@contextmanager
def flow_database(db: str | None) -> Iterator[str | None]:
    """The `database` parameter for a flow started in this process with `--db db`. Prefect stores a flow run's
    parameters (API, UI): a URL carrying a password goes into this process's CAMPAIGN_DATABASE_URL for the block
    instead, and the flow gets None, which it resolves from there. A URL without one (a SQLite path, a password
    from PGPASSWORD or ~/.pgpass) is passed as it is. Put back afterwards, for callers of the CLI in-process."""
    from sqlalchemy.engine import make_url

    from pipeline import store

    url = store.database_url(db)  # a URL that does not parse is the StoreError the caller has already shown
    if make_url(url).password is None:
        yield db
        return
    before = os.environ.get(store.URL_ENV)
    os.environ[store.URL_ENV] = url
    try:
        yield None
    finally:
        if before is None:
            os.environ.pop(store.URL_ENV, None)
        else:
            os.environ[store.URL_ENV] = before


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


def positive_number(text: str) -> float:
    """argparse type: a finite number above 0 (argparse turns the error into its one usage line, exit 2)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value
