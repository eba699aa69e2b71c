"""The dispatcher against the WhatsApp sandbox in process (tests/helpers/whatsapp.py CloudApi): what it
sends is counted by the sandbox, and tests inject the provider's errors, in its shape, where they need them.
On SQLite and on PostgreSQL (the `db` fixture)."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest

from pipeline.dispatch import engine as dispatch_module
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.writer import GroupWriter
from pipeline.spec import RateSpec, RetrySpec
from pipeline.store import Store
from tests.helpers.channels import states
from tests.helpers.waiting import wait_for_async
from tests.helpers.whatsapp import CloudApi, channel, error, queue

FAST_RETRY = RetrySpec(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, deadline_s=30)


def _run(db: Store, api: CloudApi, rate: float = 1000, concurrency: int = 4):
    return asyncio.run(dispatch_campaign(
        db, "t", channel(), rate=RateSpec(max_per_second=rate, concurrency=concurrency), retry=FAST_RETRY,
        transport=api))


def test_happy_path_sends_each_message_once_with_our_id(db: Store):
    queue(db, 50)
    api = CloudApi()
    result = _run(db, api)
    assert result.sent == 50 and result.failed == 0
    assert states(db) == {"sent": 50}
    ids = [r[0] for r in db.rows("SELECT message_id FROM outbox")]
    assert sorted(api.sandbox.accepted_callback_data()) == sorted(ids)
    assert api.sandbox.accepted == 50 and api.sandbox.duplicate_callback_data == 0
    assert {path for _, path, _ in api.calls} == {"/v23.0/111/messages"}
    wamids = {m[0] for m in api.sandbox.messages}
    assert {r[0] for r in db.rows("SELECT provider_message_id FROM outbox")} == wamids
    # Nothing left to send: a second run sends nothing.
    assert _run(db, api).sent == 0 and len(api.calls) == 50


def test_throttling_slows_down_and_is_not_a_failure(db: Store):
    phones = queue(db, 20)
    tries: Counter[str] = Counter()

    def throttled(request, body):  # noqa: ANN001, ANN202
        # Every third recipient's first two tries are throttled, whatever order the sends leave in (a throttle on
        # every third call overall could land on one message four times running and exhaust its attempts).
        tries[body["to"]] += 1
        return error(130429, 429, 2494055) if int(body["to"]) % 3 == 0 and tries[body["to"]] <= 2 else None

    api = CloudApi(before=throttled)
    result = _run(db, api)
    expected = sum(1 for phone in phones if int(phone.lstrip("+")) % 3 == 0)
    assert expected and result.throttled == 2 * expected
    assert result.sent == 20 and result.failed == 0
    assert api.sandbox.accepted == 20 and api.sandbox.duplicate_callback_data == 0


def test_permanent_error_is_recorded_with_code(db: Store):
    phones = queue(db, 10)
    bad = phones[3].lstrip("+")
    api = CloudApi(before=lambda request, body: error(131026) if body["to"] == bad else None)
    result = _run(db, api)
    assert result.sent == 9 and result.failed == 1
    row = db.rows("SELECT state, error_code, attempts FROM outbox WHERE recipient_key = :key", key=phones[3])
    assert [tuple(r) for r in row] == [("failed", "131026", 1)]


def test_retryable_error_is_retried_then_sent(db: Store):
    queue(db, 5)
    api = CloudApi(before=lambda request, body: error(131000, 500) if sum(
        b["to"] == body["to"] for b in api.bodies) < 3 else None)
    result = _run(db, api)
    assert result.sent == 5 and result.retries == 10
    assert tuple(db.rows("SELECT min(attempts), max(attempts) FROM outbox")[0]) == (3, 3)
    assert api.sandbox.accepted == 5


def test_malformed_response_is_not_counted_as_sent(db: Store):
    queue(db, 3)
    result = _run(db, CloudApi(before=lambda request, body: httpx.Response(200, content=b"<html>oops</html>")))
    assert result.sent == 0 and result.failed == 3
    assert states(db) == {"failed": 3}


def test_stop_error_stops_the_channel_and_keeps_the_rest_queued(db: Store):
    queue(db, 200)
    api = CloudApi(before=lambda request, body: error(132015) if len(api.calls) > 10 else None)
    result = _run(db, api, concurrency=2)
    assert result.stopped_reason and result.stopped_reason.startswith("132015")
    st = states(db)
    assert st.get("sending", 0) == 0 and st.get("failed", 0) == 0
    assert st["sent"] == 10 == api.sandbox.accepted and st["queued"] == 190


def test_in_flight_messages_are_reconciled_from_receipts_not_resent(db: Store):
    queue(db, 4)
    ids = [r[0] for r in db.rows("SELECT message_id FROM outbox ORDER BY seq")]
    # A crash left two messages "sending"; a receipt names one of them.
    assert db.execute("UPDATE outbox SET state = 'sending', attempts = 1 WHERE message_id IN :ids", ids=ids[:2]) == 2
    db.execute(
        "INSERT INTO events (event_id, provider, provider_message_id, message_id, status, occurred_at) "
        "VALUES ('e1', 'whatsapp', 'wamid.X', :mid, 'delivered', :at)", mid=ids[0], at=datetime.now(UTC))
    api = CloudApi()
    result = _run(db, api)
    assert result.reconciled_sent == 1 and result.unknown == 1 and result.sent == 2
    assert sorted(api.sandbox.accepted_callback_data()) == sorted(ids[2:])
    assert db.scalar("SELECT state FROM outbox WHERE message_id = :mid", mid=ids[1]) == "unknown"
    pid = db.scalar("SELECT provider_message_id FROM outbox WHERE message_id = :mid", mid=ids[0])
    assert pid == "wamid.X"


@pytest.mark.parametrize("rate", [200.0])
def test_rate_limit_is_held(db: Store, rate):
    queue(db, 60)
    api = CloudApi()
    result = _run(db, api, rate=rate, concurrency=8)
    stamps = [at for at, _, _ in api.calls]
    # 60 sends at 200/s cannot take less than 59 slot intervals.
    assert stamps[-1] - stamps[0] >= 59 / rate * 0.95
    # The dispatcher's own count of its busiest second (benchmarks/fleet.py prints it beside the provider's): all
    # 60 left within 0.3 s, one second holds them all.
    assert list(result.busiest_second.values()) == [60]


def test_the_ledger_keeps_every_transition(db: Store):
    queue(db, 3)
    api = CloudApi(before=lambda request, body: error(131000, 500) if len(api.calls) == 1 else None)
    _run(db, api, concurrency=1)
    rows = db.rows("SELECT seq, state FROM outbox_transitions ORDER BY changed_at, seq, state")
    by_seq: dict[int, list[str]] = {}
    for seq, state in rows:
        by_seq.setdefault(seq, []).append(state)
    assert by_seq == {0: ["sending", "sent"], 1: ["sending", "sent"], 2: ["sending", "sent"]}


@pytest.mark.timeout(30)  # before the fix this waited forever
def test_a_bug_in_a_worker_fails_the_run_instead_of_hanging_it(db: Store, monkeypatch):
    queue(db, 5)

    def broken(self, lane, item, outcome, attempts):
        raise KeyError("a bookkeeping bug")

    monkeypatch.setattr(dispatch_module._Dispatch, "_finish", broken)
    with pytest.raises(KeyError, match="a bookkeeping bug"):
        _run(db, CloudApi())


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

        writer = GroupWriter(Ledger(), run_db)  # type: ignore[arg-type]
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
