"""Shared fixtures: a fresh store per test (SQLite and PostgreSQL), and the demo secrets in the environment."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import store
from pipeline.store.local_pg import LocalPostgres, local_postgres

# As the CLI does (pipeline/cli/run.py): no telemetry write racing the test server's start-up.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

BACKENDS = ("sqlite", "postgresql")
_TEMPLATE = "campaign_template"
_numbers = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for the whole session (from the machine's binaries; `make test` installs them),
    with a migrated template database that each test's database is copied from."""
    with local_postgres() as server:
        url = server.create_database(_TEMPLATE)
        store.connect(url).close()  # migrated once; CREATE DATABASE ... TEMPLATE copies it in milliseconds
        yield server


def new_store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A URL of an empty, migrated store of `backend` for one test."""
    if backend == "sqlite":
        return str(tmp_path / "campaigns.sqlite")
    server: LocalPostgres = request.getfixturevalue("postgres_server")
    import psycopg

    name = f"t{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(f"host=127.0.0.1 port={server.port} user=campaign dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}" TEMPLATE {_TEMPLATE}')
    return server.url(name)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh store, once per backend."""
    return new_store_url(request.param, tmp_path, request)


@pytest.fixture
def db(db_url: str) -> Iterator[store.Store]:
    """A fresh store per test, once on SQLite and once on PostgreSQL."""
    shared = store.connect(db_url)
    yield shared
    shared.close()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[store.Store]:
    """A fresh SQLite store, for tests whose subject is not the store (flows, pages, channels)."""
    shared = store.connect(tmp_path / "campaigns.sqlite")
    yield shared
    shared.close()


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", "test-token")
    monkeypatch.setenv("WHATSAPP_APP_SECRET", "test-app-secret")
    monkeypatch.setenv("WHATSAPP_VERIFY_TOKEN", "test-verify-token")
