"""Brings a store to the current schema with its Alembic migrations, once, whoever gets there first.

A store created by an older version upgrades in place; two processes starting together do not both
migrate (the write lock on SQLite, an advisory lock on PostgreSQL, then a second look at the version).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

    from pipeline.store import Store

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
HEAD = "0014"  # the newest revision in migrations/versions (tests/store checks they agree)
_ADVISORY_KEY = 0x63616D70  # "camp": PostgreSQL advisory lock id for migrations


def version(conn: Connection) -> str | None:
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(db: Store) -> None:
    with db.read() as conn:
        if _current(db, version(conn)):
            return
    with db.write() as conn:
        if db.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_KEY})
        if _current(db, version(conn)):
            return
        from alembic import command

        config = _config()
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def _current(db: Store, found: str | None) -> bool:
    """True when the store is at HEAD. A revision this code has no migration for was written by a newer
    version: refuse it, one line, before touching anything (Alembic stops on it with a traceback)."""
    if found is None or found == HEAD:
        return found == HEAD
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        ScriptDirectory.from_config(_config()).get_revision(found)
    except CommandError:  # no such revision among the migrations
        from pipeline.store import StoreError, shown

        why = "is newer than" if found > HEAD else "is unknown to"  # revisions are numbered 0001, 0002...
        raise StoreError(f"store {shown(db.url)}: its schema (revision {found}) {why} this version of the "
                         f"pipeline ({HEAD}){': upgrade the pipeline' if found > HEAD else ''}") from None
    return False


def _config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config
