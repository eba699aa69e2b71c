"""Shared fixtures: a fresh store connection per test, the demo secrets in the environment, the one Prefect
harness every in-process flow test runs against, the Prefect server of the UI tests, and one headless browser."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import store
from tests.helpers.browser import Browser, Tab
from tests.helpers.prefect import PrefectServer, prefect_server

# As the CLI does (pipeline/cli/run.py): no telemetry write racing the test server's start-up.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


_frozen_at = 0  # how many modules were loaded at the last freeze


@pytest.fixture(autouse=True)
def _long_lived_objects_out_of_the_collectors_sight() -> None:
    """The pipeline runs a full cyclic collection per batch it prepares or renders (numbers_fast.py,
    templates.py): in a process holding Prefect that takes a third of a second, a hundred times over in the
    suite. Whenever a test finds new modules loaded (Prefect, Dask, ...), what is alive by then, modules and
    session fixtures, lives for the session anyway: freeze it (gc.freeze), after one last collection, so
    those collections only walk what the tests themselves create."""
    global _frozen_at
    if len(sys.modules) > _frozen_at:
        gc.collect()
        gc.freeze()
        _frozen_at = len(sys.modules)


@pytest.fixture
def con(tmp_path: Path):
    """A fresh store connection per test (modules that need reference data add it on top of this one)."""
    connection = store.connect(tmp_path / "campaigns.duckdb")
    yield connection
    connection.close()


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", "test-token")
    monkeypatch.setenv("WHATSAPP_APP_SECRET", "test-app-secret")
    monkeypatch.setenv("WHATSAPP_VERIFY_TOKEN", "test-verify-token")


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """Prefect's test harness (a temporary database behind a local API server), started once for the session:
    every flow the tests run in this process reports to it. Tests that need Prefect's own processes (a served
    deployment, a worker, the UI) start a real server instead (tests/helpers/prefect.py)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """`prefect server start` (API, UI and services) for the tests that open the Prefect UI: the UI test's campaign
    and the upload page's deployments share it. Neither registers schedules, so nothing runs on it unasked."""
    with prefect_server(tmp_path_factory.mktemp("prefect-ui")) as server:
        yield server


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
