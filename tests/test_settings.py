"""Durations from the environment (pipeline/settings.py): one rule and one message for every CAMPAIGN_*_S setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import store
from pipeline.dispatch.locks import lease_renew_s, lease_ttl_s
from pipeline.servers import ServerLimits
from pipeline.settings import seconds_setting
from pipeline.spec import SpecError
from pipeline.store import dialect

CAMPAIGN = str(Path(sys.executable).parent / "campaign")


@pytest.mark.parametrize(("raw", "expected"), [("45", 45.0), (" 0.5 ", 0.5), ("1_000", 1000.0), ("1e-3", 0.001)])
def test_a_positive_number_of_seconds_is_read(raw, expected):
    assert seconds_setting("X_S", 7.0, {"X_S": raw}) == expected


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_unset_or_blank_is_the_default(raw):
    assert seconds_setting("X_S", 7.0, {} if raw is None else {"X_S": raw}) == 7.0
    assert seconds_setting("X_S", None, {} if raw is None else {"X_S": raw}) is None


@pytest.mark.parametrize("raw", ["0", "-1", "-0.0", "nan", "inf", "-inf", "soon", "1__0", "30s"])
def test_anything_else_names_the_setting_and_its_value(raw):
    with pytest.raises(SpecError) as refused:
        seconds_setting("CAMPAIGN_X_S", 7.0, {"CAMPAIGN_X_S": raw})
    assert str(refused.value) == f"CAMPAIGN_X_S: {raw!r} is not a positive number of seconds"


def test_every_duration_setting_uses_the_same_message(monkeypatch):
    monkeypatch.setenv("CAMPAIGN_LEASE_TTL_S", "inf")
    monkeypatch.setenv("CAMPAIGN_LEASE_RENEW_S", "-2")
    monkeypatch.setenv("CAMPAIGN_KEEP_ALIVE_S", "abc")
    messages = []
    for read in (lease_ttl_s, lease_renew_s, ServerLimits.from_env):
        with pytest.raises(SpecError) as refused:
            read()
        messages.append(str(refused.value))
    assert messages == ["CAMPAIGN_LEASE_TTL_S: 'inf' is not a positive number of seconds",
                        "CAMPAIGN_LEASE_RENEW_S: '-2' is not a positive number of seconds",
                        "CAMPAIGN_KEEP_ALIVE_S: 'abc' is not a positive number of seconds"]


def test_the_store_busy_timeout_is_read_when_a_store_is_opened(tmp_path, monkeypatch):
    monkeypatch.setenv("CAMPAIGN_DB_BUSY_TIMEOUT_S", "2.5")  # after pipeline.store was imported
    with store.connect(tmp_path / "campaigns.sqlite") as db:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500
        with dialect.bounded_write(db.engine, 0.25) as conn:  # an aid's shorter wait, then the store's own again
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 250
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500


@pytest.mark.parametrize("raw", ["x", "0"])
def test_a_bad_store_busy_timeout_is_one_error_line_from_the_cli(tmp_path, raw):
    database = tmp_path / "campaigns.sqlite"
    store.connect(database).close()
    env = {**os.environ, "CAMPAIGN_DB_BUSY_TIMEOUT_S": raw}
    done = subprocess.run([CAMPAIGN, "status", "somecampaign", "--db", str(database)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: CAMPAIGN_DB_BUSY_TIMEOUT_S: {raw!r} is not a positive number of seconds"], done.stderr
