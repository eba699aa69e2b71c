"""Durations from the environment (pipeline/settings.py): one rule and one message for every CAMPAIGN_*_S setting."""

from __future__ import annotations

import pytest

from pipeline.dispatch.locks import lease_renew_s, lease_ttl_s
from pipeline.servers import ServerLimits
from pipeline.settings import seconds_setting
from pipeline.spec import SpecError


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
