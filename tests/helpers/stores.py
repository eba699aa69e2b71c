"""Fresh stores for tests: a SQLite file, or a database on the session's local PostgreSQL server copied from a
migrated template (CREATE DATABASE ... TEMPLATE: milliseconds, where migrating a new one takes a second)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline import store
from pipeline.store.local_pg import USER, LocalPostgres, local_postgres

BACKENDS = ("sqlite", "postgresql")
TEMPLATE = "campaign_template"
_numbers = itertools.count()


@contextmanager
def postgres_with_template() -> Iterator[LocalPostgres]:
    with local_postgres() as server:
        store.connect(server.create_database(TEMPLATE)).close()  # migrated once, then copied per test
        yield server


def new_store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The URL of an empty, migrated store of `backend` for one test."""
    if backend == "sqlite":
        return str(tmp_path / "campaigns.sqlite")
    server: LocalPostgres = request.getfixturevalue("postgres_server")
    import psycopg

    name = f"t{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(f"host=127.0.0.1 port={server.port} user={USER} dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}')
    return server.url(name)
