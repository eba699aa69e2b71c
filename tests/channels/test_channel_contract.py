"""What every channel with an HTTP sandbox does alike (Messenger, Viber, ChatApp), through the real dispatcher
against its sandbox on loopback: a throughput answer slows down and is no failure, refused credentials stop the
channel with nothing sent, and an answer we cannot read is never counted as sent."""

from __future__ import annotations

import pytest

from pipeline.store import Store
from tests.helpers.channels import dispatch, states
from tests.helpers.providers import CHATAPP, MESSENGER, VIBER, Sandboxed, set_env

PROVIDERS = {"messenger": MESSENGER, "viber": VIBER, "chatapp": CHATAPP}


@pytest.fixture(params=sorted(PROVIDERS))
def provider(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Sandboxed:
    chosen = PROVIDERS[request.param]
    set_env(monkeypatch, chosen.env)
    return chosen


def test_rate_limit_answer_is_throttling_not_failure(sqlite_db: Store, provider: Sandboxed) -> None:
    with provider.running(provider.config(throughput_per_s=20)) as (url, sandbox):
        channel = provider.channel(url)
        provider.queue(sqlite_db, channel, 30)
        result = dispatch(sqlite_db, channel, rate=300)
    assert result.sent == 30 and result.failed == 0 and result.throttled > 0
    stats = sandbox.ledger.snapshot()
    assert stats["throttled"] > 0 and stats["accepted"] == 30 and stats["duplicate_callback_data"] == 0


def test_refused_credentials_stop_the_channel_with_everything_queued(sqlite_db: Store, provider: Sandboxed) -> None:
    with provider.running(provider.config(**provider.refused)) as (url, sandbox):
        channel = provider.channel(url)
        provider.queue(sqlite_db, channel, 5)
        result = dispatch(sqlite_db, channel, concurrency=1)
    assert result.stopped_reason and result.stopped_reason.startswith(provider.stop_code)
    assert states(sqlite_db) == {"queued": 5} and sandbox.ledger.accepted == 0


def test_malformed_provider_response_is_not_counted_as_sent(sqlite_db: Store, provider: Sandboxed) -> None:
    with provider.running(provider.config(malformed=True)) as (url, _):
        channel = provider.channel(url)
        provider.queue(sqlite_db, channel, 3)
        result = dispatch(sqlite_db, channel)
    assert result.sent == 0 and result.failed == 3
    assert [tuple(r) for r in sqlite_db.rows("SELECT DISTINCT error_code FROM outbox")] == [("http_200",)]
