"""Shared fixtures: a fresh store per test (on SQLite, and on PostgreSQL where the store is the subject), the demo
secrets in the environment, the one Prefect harness every in-process flow test runs against, the Prefect server of
the UI tests, and one headless browser.

The Prefect servers come up in the background from the end of collection (tests/helpers/background.py), on the
core the tests leave idle, and are stopped at the end of the session."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import store
from pipeline.store.local_pg import LocalPostgres
from tests.helpers import background, stores
from tests.helpers.browser import Browser, Tab
from tests.helpers.prefect import SERVER_START_S, PrefectServer, prefect_server, scratch

# As the CLI does (pipeline/cli/run.py): no telemetry write racing the test server's start-up.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


_frozen_at = 0  # how many modules were loaded at the last freeze


@pytest.fixture(autouse=True)
def _long_lived_objects_out_of_the_collectors_sight() -> None:
    """The pipeline runs a full cyclic collection per batch it renders row by row after an error
    (templates.py): in a process holding Prefect that takes a third of a second, many times over in the
    suite. Whenever a test finds new modules loaded (Prefect, Dask, ...), what is alive by then, modules and
    session fixtures, lives for the session anyway: freeze it (gc.freeze), after one last collection, so
    those collections only walk what the tests themselves create."""
    global _frozen_at
    if len(sys.modules) > _frozen_at:
        gc.collect()
        gc.freeze()
        _frozen_at = len(sys.modules)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for the whole session (from the machine's binaries; `make test` installs them), with
    a migrated template database that each test's database is copied from."""
    with stores.postgres_with_template() as server:
        yield server


@pytest.fixture(params=stores.BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a fresh store, once per backend."""
    return stores.new_store_url(request.param, tmp_path, request)


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


def pytest_collection_finish(session: pytest.Session) -> None:
    # In the order the selected tests will first need them.
    background.queue(dict.fromkeys(name for item in session.items for name in getattr(item, "fixturenames", ())))


def pytest_sessionfinish(session: pytest.Session) -> None:
    background.close_all()


background.register("prefect_harness", lambda stack: stack.enter_context(
    prefect_server(scratch(stack, "prefect-harness"), api_only=True)))
background.register("prefect_ui_server", lambda stack: stack.enter_context(
    prefect_server(scratch(stack, "prefect-ui"))))


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[PrefectServer]:
    """The Prefect API every flow the tests run in this process reports to, as Prefect's test harness does it:
    a server of its own (API only, its own database) and the process's settings pointed at it. Tests that need
    Prefect's own processes (a served deployment, a worker, the UI) use a full server (tests/helpers/prefect.py)."""
    from prefect.context import _temporary_global_settings_context, get_settings_context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = background.result("prefect_harness", SERVER_START_S)
    with temporary_settings(updates={PREFECT_API_URL: server.api}), \
            _temporary_global_settings_context(get_settings_context()):
        yield server
        # What the flows logged and emitted reaches the server before it stops (as prefect_test_harness does).
        APILogWorker.drain_all()
        EventsWorker.drain_all()


@pytest.fixture(scope="session")
def prefect_ui_server() -> PrefectServer:
    """`prefect server start` (API, UI and services) for the tests that open the Prefect UI: the UI test's campaign
    and the upload page's deployments share it. Neither registers schedules, so nothing runs on it unasked."""
    return background.result("prefect_ui_server", SERVER_START_S)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """One headless Chromium for the session (the HTML report, the upload page, the Prefect UI)."""
    chromium = Browser(tmp_path_factory.mktemp("chromium"))
    yield chromium
    chromium.close()


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    """A fresh tab of the session's browser, closed after the test."""
    page = browser.tab()
    yield page
    page.close()
