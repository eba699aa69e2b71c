"""Dispatch policy: timeouts reconciled from receipts, deferrals, several senders, budget, messaging
limit, send windows and operator pause — through the real dispatcher and a Cloud-API-like handler."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
import polars as pl

from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.outbox import enqueue_messages, register_campaign
from pipeline.dispatch.policy import Guards
from pipeline.spec import RateSpec, RetrySpec, SendWindow, parse_spec

SPEC = {
    "name": "t", "audience": "x.csv", "channel": "whatsapp", "sender": "111", "senders": ["222"],
    "template": {"name": "hello", "language": "en_US", "category": "marketing", "text": "Hi", "body": ["x"]},
}


def channel(sender: str = "111") -> WhatsAppChannel:
    return WhatsAppChannel(base_url="http://sandbox.test", api_version="v23.0", phone_number_id=sender,
                           access_token="tok")


def queue(con, n: int, *, senders: list[str] | None = None, cost: float | None = None, tz: str | None = None):
    spec = parse_spec(SPEC)
    register_campaign(con, spec, "t")
    frame = pl.DataFrame({
        "row_number": list(range(2, n + 2)), "phone_e164": [f"+4477009{i:05d}" for i in range(n)],
        "region": ["GB"] * n, "number_type": ["mobile"] * n, "text": ["Hi"] * n,
        "params_json": [json.dumps({"body": ["x"]})] * n,
    })
    enqueue_messages(con, spec, "t", channel(), frame, senders=senders)
    if cost is not None:
        con.execute("UPDATE outbox SET est_cost_usd = ?", [cost])
    if tz is not None:
        con.execute("UPDATE outbox SET timezone = ?", [tz])


def ok(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    return httpx.Response(200, json={"messaging_product": "whatsapp", "contacts": [{"input": body["to"]}],
                                     "messages": [{"id": f"wamid.{body['to']}"}]})


def run(con, handler, **kwargs):
    channels = kwargs.pop("channels", channel())
    retry = kwargs.pop("retry", RetrySpec(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, reconcile_grace_s=0.5))
    return asyncio.run(dispatch_campaign(con, "t", channels, rate=RateSpec(max_per_second=1000, concurrency=4),
                                         retry=retry, transport=httpx.MockTransport(handler), **kwargs))


def states(con) -> dict[str, int]:
    return dict(con.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())


def receipts_for(con, accepted: set[str]):
    """A reconcile function that ingests 'receipts' for the messages the provider accepted."""
    def reconcile():
        for message_id in list(accepted):
            con.execute("INSERT INTO events (event_id, provider, provider_message_id, message_id, status, "
                        "occurred_at) SELECT ?, 'whatsapp', ?, ?, 'sent', ? "
                        "WHERE NOT EXISTS (SELECT 1 FROM events WHERE event_id = ?)",
                        [message_id, f"wamid.{message_id}", message_id, datetime.now(UTC), message_id])
    return reconcile


def test_a_timeout_after_the_provider_accepted_is_reconciled_not_resent(con):
    queue(con, 6)
    accepted: set[str] = set()
    posts: list[str] = []

    def handler(request):
        mid = json.loads(request.content)["biz_opaque_callback_data"]
        posts.append(mid)
        accepted.add(mid)
        if len(posts) <= 2:
            raise httpx.ReadTimeout("answer lost", request=request)
        return ok(request)

    result = run(con, handler, reconcile=receipts_for(con, accepted))
    assert len(posts) == 6  # nobody was sent twice
    assert states(con) == {"sent": 6} and result.reconciled_sent == 2 and result.resent_after_timeout == 0


def test_a_timeout_that_never_reached_the_provider_is_resent_after_the_grace(con):
    queue(con, 3)
    accepted: set[str] = set()
    posts: list[str] = []

    def handler(request):
        mid = json.loads(request.content)["biz_opaque_callback_data"]
        posts.append(mid)
        if posts.count(mid) == 1 and len(set(posts)) == 1:
            raise httpx.ReadTimeout("dropped", request=request)  # not accepted: no receipt will come
        accepted.add(mid)
        return ok(request)

    result = run(con, handler, reconcile=receipts_for(con, accepted))
    assert states(con) == {"sent": 3} and result.resent_after_timeout == 1
    assert len(posts) == 4 and len(set(posts)) == 3


def test_without_receipts_a_timeout_ends_unknown(con):
    queue(con, 2)
    result = run(con, lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("x", request=r)))
    assert states(con) == {"unknown": 2} and result.unknown == 2


def test_131049_is_deferred_for_a_day_not_retried(con):
    queue(con, 3)
    calls = {"n": 0}

    def handler(request):
        calls["n"] += 1
        if json.loads(request.content)["to"].endswith("0"):
            error = {"code": 131049, "message": "(#131049)", "type": "OAuthException"}
            return httpx.Response(400, json={"error": error})
        return ok(request)

    result = run(con, handler)
    assert calls["n"] == 3 and result.deferred == 1
    row = con.execute("SELECT state, retryable, not_before > now() + INTERVAL 23 HOUR FROM outbox "
                      "WHERE state = 'deferred'").fetchall()
    assert row == [("deferred", True, True)]


def test_several_senders_share_the_work(con):
    queue(con, 40, senders=["111", "222"])
    seen: dict[str, int] = {}

    def handler(request):
        sender = request.url.path.split("/")[2]
        seen[sender] = seen.get(sender, 0) + 1
        return ok(request)

    result = run(con, handler, channels={"111": channel("111"), "222": channel("222")})
    assert result.sent == 40 and seen == {"111": 20, "222": 20}


def test_budget_stops_before_it_would_be_passed(con):
    queue(con, 10, cost=0.1)
    result = run(con, ok, guards=Guards(budget_usd=0.45))
    assert result.sent == 4 and "budget" in (result.stopped_reason or "")
    assert states(con) == {"sent": 4, "queued": 6}
    # The spend is remembered: a second run with the same budget sends nothing more.
    assert run(con, ok, guards=Guards(budget_usd=0.45)).sent == 0


def test_messaging_limit_keeps_the_rest_queued_and_says_when(con):
    queue(con, 10)
    result = run(con, ok, guards=Guards(messaging_limit=250 - 244))  # 6 unique recipients allowed
    assert result.sent == 6 and states(con) == {"sent": 6, "queued": 4}
    assert "messaging limit" in result.stopped_reason and "continue from" in result.stopped_reason


def test_recipients_outside_their_send_window_wait(con):
    queue(con, 5, tz="Pacific/Kiritimati")
    now_there = datetime.now(UTC).astimezone(__import__("zoneinfo").ZoneInfo("Pacific/Kiritimati"))
    closed = SendWindow(start=f"{(now_there.hour + 2) % 24:02d}:00", end=f"{(now_there.hour + 3) % 24:02d}:00")
    result = run(con, ok, guards=Guards(send_window=closed))
    assert result.sent == 0 and states(con) == {"queued": 5}
    opened = SendWindow(start=f"{now_there.hour:02d}:00", end=f"{(now_there.hour + 1) % 24:02d}:59")
    assert run(con, ok, guards=Guards(send_window=opened)).sent == 5


def test_an_operator_pause_stops_and_keeps_the_rest_queued(con, tmp_path):
    queue(con, 400)
    pause = tmp_path / "t.pause"
    calls = {"n": 0}

    def handler(request):
        calls["n"] += 1
        if calls["n"] == 20:
            pause.touch()
        return ok(request)

    result = asyncio.run(dispatch_campaign(
        con, "t", channel(), rate=RateSpec(max_per_second=200, concurrency=2), guards=Guards(pause_file=pause),
        transport=httpx.MockTransport(handler)))
    assert "paused" in result.stopped_reason
    st = states(con)
    assert st["sent"] == result.sent and st["queued"] == 400 - result.sent and st.get("sending", 0) == 0


def test_batch_channels_get_batches_and_retry_only_what_failed(con):
    from pipeline.testing import FakeChannel

    fake = FakeChannel(max_batch=25, transient_rate=0.2, fail_rate=0.05, seed=4)
    spec = parse_spec(SPEC)
    register_campaign(con, spec, "t")
    n = 300
    frame = pl.DataFrame({
        "row_number": list(range(2, n + 2)), "phone_e164": [f"+4477009{i:05d}" for i in range(n)],
        "region": ["GB"] * n, "number_type": ["mobile"] * n, "text": ["Hi"] * n, "params_json": ["{}"] * n,
    })
    enqueue_messages(con, spec, "t", fake, frame)
    result = asyncio.run(dispatch_campaign(
        con, "t", fake, rate=RateSpec(max_per_second=1000, concurrency=2),
        retry=RetrySpec(max_attempts=8, base_delay_s=0.01, max_delay_s=0.02)))
    assert max(len(c) for c in fake.calls) > 1 and max(len(c) for c in fake.calls) <= 25
    assert len(fake.accepted) == len(set(fake.accepted)) == result.sent
    assert result.sent + result.failed == n and states(con) == {"sent": result.sent, "failed": result.failed}
    assert result.retries > 0
