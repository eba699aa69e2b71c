"""Brings a store to the current schema with its Alembic migrations, once, whoever gets there first.

A store created by an older version upgrades in place; two processes starting together do not both
migrate (the write lock on SQLite, an advisory lock on PostgreSQL, then a second look at the version).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

if TYPE_CHECKING:
    from pipeline.store import Store

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HEAD = "0012"  # the newest revision in migrations/versions (tests/store checks they agree)
_ADVISORY_KEY = 0x63616D70  # "camp": PostgreSQL advisory lock id for migrations


def version(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(db: Store) -> None:
    with db.read() as conn:
        if version(conn) == HEAD:
            return
    with db.write() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_KEY})
        if version(conn) == HEAD:
            return
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
