"""Dispatch policy: timeouts reconciled from receipts, deferrals, several senders, budget, messaging
limit, send windows and operator pause — through the real dispatcher and the WhatsApp sandbox in process.
On SQLite and on PostgreSQL (the `db` fixture)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
import polars as pl

from pipeline.dispatch import operations
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.outbox import enqueue_messages, register_campaign
from pipeline.dispatch.policy import Guards
from pipeline.spec import RateSpec, RetrySpec, SendWindow, parse_spec
from pipeline.store import Store, run_many, utc
from tests.helpers.channels import states
from tests.helpers.whatsapp import SPEC, CloudApi, channel, error, queue


def run(db: Store, api: CloudApi | None = None, **kwargs):
    channels = kwargs.pop("channels", channel())
    retry = kwargs.pop("retry", RetrySpec(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, reconcile_grace_s=0.5))
    return asyncio.run(dispatch_campaign(db, "t", channels, rate=RateSpec(max_per_second=1000, concurrency=4),
                                         retry=retry, transport=api or CloudApi(), **kwargs))


def receipts_for(db: Store, api: CloudApi):
    """A reconcile function that ingests 'receipts' for the messages the sandbox accepted."""
    def reconcile():
        with db.write() as conn:
            known = {r[0] for r in conn.exec_driver_sql("SELECT event_id FROM events")}
            now = datetime.now(UTC)
            run_many(conn, "INSERT INTO events (event_id, provider, provider_message_id, message_id, status, "
                           "occurred_at) VALUES (:mid, 'whatsapp', :pid, :mid, 'sent', :at)",
                     [{"mid": m, "pid": f"wamid.{m}", "at": now}
                      for m in api.sandbox.accepted_callback_data() if m not in known])
    return reconcile


def _answer_lost(request: httpx.Request) -> None:
    raise httpx.ReadTimeout("answer lost", request=request)


def test_a_timeout_after_the_provider_accepted_is_reconciled_not_resent(db: Store):
    queue(db, 6)
    # The sandbox accepts every message; the answers to the first two are lost on the way back.
    api = CloudApi(after=lambda request, body, response: _answer_lost(request) if len(api.calls) <= 2 else None)
    result = run(db, api, reconcile=receipts_for(db, api))
    assert len(api.calls) == 6 and api.sandbox.duplicate_callback_data == 0  # nobody was sent twice
    assert states(db) == {"sent": 6} and result.reconciled_sent == 2 and result.resent_after_timeout == 0


def test_a_timeout_that_never_reached_the_provider_is_resent_after_the_grace(db: Store):
    queue(db, 3)
    # The very first request times out before it reaches the sandbox: no receipt will come for it.
    api = CloudApi(before=lambda request, body: _answer_lost(request) if len(api.calls) == 1 else None)
    result = run(db, api, reconcile=receipts_for(db, api))
    assert states(db) == {"sent": 3} and result.resent_after_timeout == 1
    assert len(api.calls) == 4 and api.sandbox.accepted == 3 and api.sandbox.duplicate_callback_data == 0


def test_without_receipts_a_timeout_ends_unknown(db: Store):
    queue(db, 2)
    result = run(db, CloudApi(before=lambda request, body: _answer_lost(request)))
    assert states(db) == {"unknown": 2} and result.unknown == 2


def test_131049_is_deferred_for_a_day_not_retried(db: Store):
    queue(db, 3)
    api = CloudApi(before=lambda request, body: error(131049) if body["to"].endswith("0") else None)
    result = run(db, api)
    assert len(api.calls) == 3 and result.deferred == 1
    day_ahead = datetime.now(UTC) + timedelta(hours=23)
    rows = [(state, bool(retryable), utc(not_before) > day_ahead)
            for state, retryable, not_before in db.rows("SELECT state, retryable, not_before FROM outbox "
                                                        "WHERE state = 'deferred'")]
    assert rows == [("deferred", True, True)]


def test_several_senders_share_the_work(db: Store):
    queue(db, 40, senders=["111", "222"])
    api = CloudApi()
    result = run(db, api, channels={"111": channel("111"), "222": channel("222")})
    senders = [path.split("/")[2] for _, path, _ in api.calls]
    assert result.sent == 40 and {s: senders.count(s) for s in set(senders)} == {"111": 20, "222": 20}


def test_budget_stops_before_it_would_be_passed(db: Store):
    queue(db, 10, cost=0.1)
    result = run(db, guards=Guards(budget_usd=0.45))
    assert result.sent == 4 and "budget" in (result.stopped_reason or "")
    assert states(db) == {"sent": 4, "queued": 6}
    # The spend is remembered: a second run with the same budget sends nothing more.
    assert run(db, guards=Guards(budget_usd=0.45)).sent == 0


def test_messaging_limit_keeps_the_rest_queued_and_says_when(db: Store):
    queue(db, 10)
    result = run(db, guards=Guards(messaging_limit=250 - 244))  # 6 unique recipients allowed
    assert result.sent == 6 and states(db) == {"sent": 6, "queued": 4}
    assert "messaging limit" in result.stopped_reason and "continue from" in result.stopped_reason


def test_recipients_outside_their_send_window_wait(db: Store):
    queue(db, 5, tz="Pacific/Kiritimati")
    now_there = datetime.now(UTC).astimezone(__import__("zoneinfo").ZoneInfo("Pacific/Kiritimati"))
    closed = SendWindow(start=f"{(now_there.hour + 2) % 24:02d}:00", end=f"{(now_there.hour + 3) % 24:02d}:00")
    result = run(db, guards=Guards(send_window=closed))
    assert result.sent == 0 and states(db) == {"queued": 5}
    opened = SendWindow(start=f"{now_there.hour:02d}:00", end=f"{(now_there.hour + 1) % 24:02d}:59")
    assert run(db, guards=Guards(send_window=opened)).sent == 5


def test_an_operator_pause_stops_and_keeps_the_rest_queued(db: Store):
    queue(db, 400)
    # The operator's pause is a flag in the store (campaign_control), as `campaign pause` sets it from anywhere.
    api = CloudApi(before=lambda request, body: operations.request_pause(db, "t") if len(api.calls) == 20 else None)
    result = asyncio.run(dispatch_campaign(
        db, "t", channel(), rate=RateSpec(max_per_second=200, concurrency=2),
        guards=Guards(pause_check=lambda: operations.is_paused(db, "t")), transport=api))
    assert "paused" in result.stopped_reason and operations.is_paused(db, "t")
    st = states(db)
    assert st["sent"] == result.sent == api.sandbox.accepted and st["queued"] == 400 - result.sent
    assert st.get("sending", 0) == 0


def test_a_campaign_paused_before_its_run_sends_nothing_and_resume_sends_it(db: Store):
    queue(db, 60)
    operations.request_pause(db, "t")  # `campaign pause t` before the run (a continuation of a paused campaign too)
    api = CloudApi()
    guards = Guards(pause_check=lambda: operations.is_paused(db, "t"))
    # Once, lanes started before the flag's first read (the ticker's, half a second in) and sent at the full rate.
    result = run(db, api, guards=guards)
    assert len(api.calls) == 0 and result.sent == 0 and states(db) == {"queued": 60}
    assert "paused by the operator" in result.stopped_reason and result.continue_at is None
    assert operations.is_paused(db, "t")
    operations.clear_pause(db, "t")  # what `campaign resume` does, once it holds the campaign
    result = run(db, api, guards=Guards(pause_check=lambda: operations.is_paused(db, "t")))
    assert result.sent == 60 and states(db) == {"sent": 60} and result.stopped_reason is None


def test_batch_channels_get_batches_and_retry_only_what_failed(db: Store):
    from pipeline.testing import FakeChannel

    fake = FakeChannel(max_batch=25, transient_rate=0.2, fail_rate=0.05, seed=4)
    spec = parse_spec(SPEC)
    register_campaign(db, spec, "t")
    n = 300
    frame = pl.DataFrame({
        "row_number": list(range(2, n + 2)), "phone_e164": [f"+4477009{i:05d}" for i in range(n)],
        "region": ["GB"] * n, "number_type": ["mobile"] * n, "text": ["Hi"] * n, "params_json": ["{}"] * n,
    })
    enqueue_messages(db, spec, "t", fake, frame)
    result = asyncio.run(dispatch_campaign(
        db, "t", fake, rate=RateSpec(max_per_second=1000, concurrency=2),
        retry=RetrySpec(max_attempts=8, base_delay_s=0.01, max_delay_s=0.02)))
    assert max(len(c) for c in fake.calls) > 1 and max(len(c) for c in fake.calls) <= 25
    assert len(fake.accepted) == len(set(fake.accepted)) == result.sent
    assert result.sent + result.failed == n and states(db) == {"sent": result.sent, "failed": result.failed}
    assert result.retries > 0


class _NoRelease:
    def next_release(self, now: datetime) -> None:
        return None


def test_a_stop_continues_only_when_it_came_with_the_time_its_quota_frees():
    frees = datetime(2026, 12, 8, 16, 0, tzinfo=UTC)
    guards = Guards(send_window=SendWindow(start="09:00", end="21:00"))
    guards.next_window_at = frees - timedelta(hours=3)  # a window opening earlier does not bring the run back sooner
    assert guards.continue_at(_NoRelease(), "190: token expired") is None  # a person decides
    guards.stop_frees_at = frees
    assert guards.continue_at(_NoRelease(), "isv.DAY_LIMIT_CONTROL: daily limit") == frees
