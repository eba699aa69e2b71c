"""Shared fixtures: a fresh DuckDB file per test and the demo secrets in the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline import store

# As the CLI does (pipeline/cli/run.py): no telemetry write racing the test server's start-up.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture
def con(tmp_path: Path):
    connection = store.connect(tmp_path / "campaigns.duckdb")
    yield connection
    connection.close()


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", "test-token")
    monkeypatch.setenv("WHATSAPP_APP_SECRET", "test-app-secret")
    monkeypatch.setenv("WHATSAPP_VERIFY_TOKEN", "test-verify-token")
