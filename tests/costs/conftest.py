"""Store fixtures of the costs tests, each test on both backends: `db` is a fresh SQLite file or a fresh database
on one local PostgreSQL server per test session (pipeline.store.local_pg)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import store
from pipeline.store.local_pg import LocalPostgres, local_postgres

BACKENDS = ["sqlite", "postgresql"]

# One server per session even where a test module imports these fixtures (pytest then holds two definitions,
# both torn down at the session's end: the first stops the server, the second finds it stopped).
_servers: list[LocalPostgres] = []
_stack = contextlib.ExitStack()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    if not _servers:
        _servers.append(_stack.enter_context(local_postgres()))
    yield _servers[0]
    _servers.clear()
    _stack.close()


def new_store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> store.Store:
    """A fresh, migrated store of `backend`."""
    if backend == "sqlite":
        return store.connect(tmp_path / "campaigns.sqlite")
    server: LocalPostgres = request.getfixturevalue("postgres_server")
    return store.connect(server.create_database(f"test_{uuid.uuid4().hex[:16]}"))


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[store.Store]:
    database = new_store(request.param, tmp_path, request)
    yield database
    database.close()
