"""The dispatcher against an httpx.MockTransport that answers like the Cloud API."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
import polars as pl
import pytest

from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.dispatch import engine as dispatch_module
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.outbox import enqueue_messages, register_campaign
from pipeline.spec import RateSpec, RetrySpec, parse_spec
from tests.helpers.waiting import wait_for_async

SPEC = {
    "name": "t",
    "audience": "x.csv",
    "channel": "whatsapp",
    "sender": "123",
    "template": {"name": "hello", "language": "en_US", "category": "marketing", "text": "Hi {{ n }}",
                 "body": ["{{ n }}"]},
    "variables": {"n": "first_name"},
}
FAST_RETRY = RetrySpec(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, deadline_s=30)


def _queue(con, n: int) -> list[str]:
    spec = parse_spec(SPEC)
    channel = WhatsAppChannel(base_url="http://sandbox.test", api_version="v23.0", phone_number_id="123",
                              access_token="tok")
    phones = [f"+4477009{i:05d}" for i in range(n)]
    accepted = pl.DataFrame({
        "row_number": list(range(2, n + 2)), "phone_e164": phones, "region": ["GB"] * n,
        "number_type": ["mobile"] * n, "text": ["Hi"] * n,
        "params_json": [json.dumps({"body": [f"n{i}"]}) for i in range(n)],
    })
    register_campaign(con, spec, "t")
    enqueue_messages(con, spec, "t", channel, accepted)
    return phones


def _ok(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    return httpx.Response(200, json={"messaging_product": "whatsapp",
                                     "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                                     "messages": [{"id": f"wamid.{body['to']}", "message_status": "accepted"}]})


def _error(code: int, status: int = 400) -> httpx.Response:
    return httpx.Response(status, json={"error": {"message": f"(#{code}) error", "type": "OAuthException",
                                                  "code": code, "error_data": {"details": "d"},
                                                  "fbtrace_id": "x"}})


def _run(con, handler, rate: float = 1000, concurrency: int = 4):
    channel = WhatsAppChannel(base_url="http://sandbox.test", api_version="v23.0", phone_number_id="123",
                              access_token="tok")
    return asyncio.run(dispatch_campaign(
        con, "t", channel, rate=RateSpec(max_per_second=rate, concurrency=concurrency), retry=FAST_RETRY,
        transport=httpx.MockTransport(handler)))


def _states(con) -> dict[str, int]:
    return dict(con.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())


def test_happy_path_sends_each_message_once_with_our_id(con):
    _queue(con, 50)
    seen: list[dict] = []

    def handler(request):
        assert request.headers["authorization"] == "Bearer tok"
        assert request.url.path == "/v23.0/123/messages"
        seen.append(json.loads(request.content))
        return _ok(request)

    result = _run(con, handler)
    assert result.sent == 50 and result.failed == 0
    assert _states(con) == {"sent": 50}
    ids = con.execute("SELECT message_id FROM outbox").fetchall()
    assert sorted(p["biz_opaque_callback_data"] for p in seen) == sorted(r[0] for r in ids)
    assert con.execute("SELECT count(*) FROM outbox WHERE provider_message_id LIKE 'wamid.%'").fetchone()[0] == 50
    # Nothing left to send: a second run sends nothing.
    assert _run(con, handler).sent == 0 and len(seen) == 50


def test_throttling_slows_down_and_is_not_a_failure(con):
    _queue(con, 20)
    calls = {"n": 0}

    def handler(request):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            return _error(130429, 429)
        return _ok(request)

    result = _run(con, handler)
    assert result.sent == 20 and result.failed == 0 and result.throttled > 0


def test_permanent_error_is_recorded_with_code(con):
    phones = _queue(con, 10)
    bad = phones[3].lstrip("+")

    def handler(request):
        if json.loads(request.content)["to"] == bad:
            return _error(131026)
        return _ok(request)

    result = _run(con, handler)
    assert result.sent == 9 and result.failed == 1
    row = con.execute("SELECT state, error_code, attempts FROM outbox WHERE recipient_key = ?", [phones[3]]).fetchone()
    assert row == ("failed", "131026", 1)


def test_retryable_error_is_retried_then_sent(con):
    _queue(con, 5)
    failures: dict[str, int] = {}

    def handler(request):
        to = json.loads(request.content)["to"]
        failures[to] = failures.get(to, 0) + 1
        if failures[to] < 3:
            return _error(131000, 500)
        return _ok(request)

    result = _run(con, handler)
    assert result.sent == 5 and result.retries == 10
    assert con.execute("SELECT min(attempts), max(attempts) FROM outbox").fetchone() == (3, 3)


def test_malformed_response_is_not_counted_as_sent(con):
    _queue(con, 3)
    result = _run(con, lambda request: httpx.Response(200, content=b"<html>oops</html>"))
    assert result.sent == 0 and result.failed == 3
    assert _states(con) == {"failed": 3}


def test_stop_error_stops_the_channel_and_keeps_the_rest_queued(con):
    _queue(con, 200)
    calls = {"n": 0}

    def handler(request):
        calls["n"] += 1
        return _error(132015) if calls["n"] > 10 else _ok(request)

    result = _run(con, handler, concurrency=2)
    assert result.stopped_reason and result.stopped_reason.startswith("132015")
    states = _states(con)
    assert states.get("sending", 0) == 0 and states.get("failed", 0) == 0
    assert states["sent"] == 10 and states["queued"] == 190


def test_in_flight_messages_are_reconciled_from_receipts_not_resent(con):
    _queue(con, 4)
    ids = [r[0] for r in con.execute("SELECT message_id FROM outbox ORDER BY seq").fetchall()]
    # A crash left two messages "sending"; a receipt names one of them.
    con.execute("UPDATE outbox SET state = 'sending', attempts = 1 WHERE message_id IN (?, ?)", ids[:2])
    con.execute(
        "INSERT INTO events (event_id, provider, provider_message_id, message_id, status, occurred_at) "
        "VALUES ('e1', 'whatsapp', 'wamid.X', ?, 'delivered', ?)", [ids[0], datetime.now(UTC)])
    seen: list[str] = []

    def handler(request):
        seen.append(json.loads(request.content)["biz_opaque_callback_data"])
        return _ok(request)

    result = _run(con, handler)
    assert result.reconciled_sent == 1 and result.unknown == 1 and result.sent == 2
    assert sorted(seen) == sorted(ids[2:])
    assert con.execute("SELECT state FROM outbox WHERE message_id = ?", [ids[1]]).fetchone()[0] == "unknown"
    pid = con.execute("SELECT provider_message_id FROM outbox WHERE message_id = ?", [ids[0]]).fetchone()[0]
    assert pid == "wamid.X"


@pytest.mark.parametrize("rate", [200.0])
def test_rate_limit_is_held(con, rate):
    _queue(con, 60)
    stamps: list[float] = []
    loop_time = __import__("time").monotonic

    def handler(request):
        stamps.append(loop_time())
        return _ok(request)

    _run(con, handler, rate=rate, concurrency=8)
    # 60 sends at 200/s cannot take less than 59 slot intervals.
    assert stamps[-1] - stamps[0] >= 59 / rate * 0.95


def test_the_ledger_keeps_every_transition(con):
    _queue(con, 3)
    calls = {"n": 0}

    def handler(request):
        calls["n"] += 1
        return _error(131000, 500) if calls["n"] == 1 else _ok(request)

    _run(con, handler, concurrency=1)
    rows = con.execute("SELECT seq, state FROM outbox_transitions ORDER BY changed_at, seq, state").fetchall()
    by_seq: dict[int, list[str]] = {}
    for seq, state in rows:
        by_seq.setdefault(seq, []).append(state)
    assert by_seq == {0: ["sending", "sent"], 1: ["sending", "sent"], 2: ["sending", "sent"]}


@pytest.mark.timeout(30)  # before the fix this waited forever
def test_a_bug_in_a_worker_fails_the_run_instead_of_hanging_it(con, monkeypatch):
    _queue(con, 5)

    def broken(self, lane, item, outcome, attempts):
        raise KeyError("a bookkeeping bug")

    monkeypatch.setattr(dispatch_module._Dispatch, "_finish", broken)
    with pytest.raises(KeyError, match="a bookkeeping bug"):
        _run(con, _ok)


def test_outcomes_taken_by_a_commit_survive_the_writer_being_cancelled() -> None:
    """The run ends by cancelling the writer; a commit it had started but the ledger thread had not
    yet run must still land before the final flush (it once vanished: sent messages stayed 'sending')."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.dispatch.ledger import Outcome

    committed: list[list[int]] = []

    class Ledger:
        def commit(self, claims, outcomes, pids=None) -> None:
            committed.append([o.seq for o in outcomes])

    async def scenario() -> None:
        pool = ThreadPoolExecutor(1)
        busy = threading.Event()
        pool.submit(busy.wait, 5)  # the ledger thread is busy: the commit below queues behind it

        async def run_db(fn, *args):
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

        writer = dispatch_module._Writer(Ledger(), run_db)  # type: ignore[arg-type]
        writer.record(Outcome(7, "sent", "wamid.7", None, None, None, 1, None, None))
        flushing = asyncio.create_task(writer.flush())
        # Cancelled once the commit has taken its outcomes and been handed to the (busy) ledger thread.
        await wait_for_async(lambda: writer.inflight is not None, timeout_s=10, what="the commit to be handed over")
        assert not writer.outcomes
        flushing.cancel()
        await asyncio.gather(flushing, return_exceptions=True)
        busy.set()
        writer.record(Outcome(8, "sent", "wamid.8", None, None, None, 1, None, None))
        await writer.flush()
        pool.shutdown(wait=True)

    asyncio.run(scenario())
    assert committed == [[7], [8]]
