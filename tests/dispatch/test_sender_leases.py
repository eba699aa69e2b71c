"""One dispatcher per sender, however many dispatch a campaign: each sender's lease is taken in a transaction and
renewed while its holder lives; two dispatchers never hold (or send for) the same sender; a lease left by a holder
that stopped renewing (its machine died) is taken once it expires, and its new holder first reconciles what was left
in flight from receipts, then sends. On SQLite and on PostgreSQL, with the real engine."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import polars as pl

from pipeline import store
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.ledger import Ledger
from pipeline.dispatch.locks import SenderLeases, sender_holders, sender_lease_name
from pipeline.dispatch.policy import DispatchResult
from pipeline.spec import RateSpec, RetrySpec
from pipeline.store.bulk import insert_frame
from pipeline.testing import FakeChannel
from tests.helpers.waiting import wait_for

CAMPAIGN = "fleet"


def queue(db: store.Store, per_sender: int, senders: list[str]) -> None:
    now = datetime.now(UTC)
    n = per_sender * len(senders)
    rows = pl.DataFrame({
        "message_id": [f"m-{i}" for i in range(n)], "campaign_id": CAMPAIGN, "seq": list(range(n)),
        "recipient_key": [f"+4470000{i:05d}" for i in range(n)], "channel": "whatsapp",
        "sender": [senders[i % len(senders)] for i in range(n)],
        "payload_json": [json.dumps({"id": f"m-{i}", "to": f"+4470000{i:05d}", "text": "hi"}) for i in range(n)],
        "state": "queued", "attempts": 0, "queued_at": now,
    })
    with db.write() as conn:
        insert_frame(conn, "outbox", rows)


def sender_of(db: store.Store) -> dict[str, str]:
    return dict(db.rows("SELECT message_id, sender FROM outbox WHERE campaign_id = :c", c=CAMPAIGN))


class Stamped(FakeChannel):
    """The fake provider, recording when each message left (wall clock) and, at the first send, `at_first_send()`."""

    def __init__(self, at_first_send=None, **kwargs) -> None:  # noqa: ANN001
        super().__init__(**kwargs)
        self.stamps: dict[str, float] = {}
        self.at_first_send, self.first_seen = at_first_send, None

    async def send(self, session, payloads):  # noqa: ANN001
        if self.at_first_send is not None and self.first_seen is None:
            self.first_seen = self.at_first_send()
        now = time.time()
        for p in payloads:
            self.stamps.setdefault(json.loads(p)["id"], now)
        return await super().send(session, payloads)


def dispatch_in_thread(db: store.Store, channel: FakeChannel, senders: list[str] | None, leases: SenderLeases,
                       results: list[DispatchResult], grace_s: float = 30, **kwargs) -> threading.Thread:
    def go() -> None:
        results.append(asyncio.run(dispatch_campaign(
            db, CAMPAIGN, channel, rate=RateSpec(max_per_second=200, concurrency=2), senders=senders,
            leases=leases, retry=RetrySpec(max_attempts=3, base_delay_s=0.01, reconcile_grace_s=grace_s), **kwargs)))

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def test_racing_takers_split_the_senders_exactly(db: store.Store) -> None:
    senders = [f"s{i}" for i in range(8)]
    takers = [SenderLeases(db, CAMPAIGN, ttl_s=30) for _ in range(3)]
    barrier = threading.Barrier(3)

    def take(leases: SenderLeases) -> None:
        barrier.wait()
        for _ in range(5):
            leases.take(senders)

    threads = [threading.Thread(target=take, args=(t,)) for t in takers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    held = [t.held for t in takers]
    assert sum(len(h) for h in held) == 8 and set().union(*held) == set(senders)
    holders = sender_holders(db, CAMPAIGN)
    assert {s: h.pid for s, h in holders.items()} == dict.fromkeys(senders, holders["s0"].pid)
    # A release frees only the releaser's senders, and the next taker gets exactly those.
    first = takers[0]
    freed = set(first.held)
    first.release()
    assert set(takers[1].take(senders)) == freed


def test_two_dispatchers_with_overlapping_groups_never_send_for_the_same_sender(db: store.Store) -> None:
    senders = ["s1", "s2", "s3", "s4"]
    queue(db, 150, senders)
    a, b = Stamped(latency_s=0.002, seed=1), Stamped(latency_s=0.002, seed=2)
    leases_a, leases_b = SenderLeases(db, CAMPAIGN, ttl_s=3), SenderLeases(db, CAMPAIGN, ttl_s=3)
    results: list[DispatchResult] = []
    # Both want s2 and s3: each is sent for by whichever took its lease first, never by both.
    threads = [dispatch_in_thread(db, a, ["s1", "s2", "s3"], leases_a, results),
               dispatch_in_thread(db, b, ["s2", "s3", "s4"], leases_b, results)]
    seen: list[tuple[set[str], set[str]]] = []

    def both_hold() -> bool:
        seen.append((set(leases_a.held), set(leases_b.held)))
        return bool(leases_a.held) and bool(leases_b.held)

    wait_for(both_hold, timeout_s=60, what="both dispatchers to hold senders", every_s=0.01)
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 2
    assert all(not (held_a & held_b) for held_a, held_b in seen)
    owner = sender_of(db)
    by_a = {owner[m] for m in a.accepted}
    by_b = {owner[m] for m in b.accepted}
    assert not by_a & by_b, (by_a, by_b)
    assert by_a | by_b == set(senders) and "s1" in by_a and "s4" in by_b
    assert len(a.accepted) + len(b.accepted) == 600 and len(set(a.accepted) | set(b.accepted)) == 600
    assert Ledger(db, CAMPAIGN).counts() == {"sent": 600}
    assert sender_holders(db, CAMPAIGN) == {}  # both released what they held


def test_a_lease_that_stops_being_renewed_is_handed_over_when_it_expires(db: store.Store) -> None:
    queue(db, 20, ["s1"])
    # As a dispatcher on a machine that died would leave it: a holder elsewhere, its lease running out.
    expires = datetime.now(UTC) + timedelta(seconds=2)
    db.execute("INSERT INTO leases (name, holder, pid, host, since, expires_at) "
               "VALUES (:name, 'gone', 4242, 'worker-b', :since, :expires)",
               name=sender_lease_name(CAMPAIGN, "s1"), since=datetime.now(UTC) - timedelta(minutes=1), expires=expires)
    assert sender_holders(db, CAMPAIGN)["s1"].host == "worker-b"
    channel = Stamped()
    results: list[DispatchResult] = []
    leases = SenderLeases(db, CAMPAIGN, ttl_s=1.5, renew_s=0.3)
    dispatch_in_thread(db, channel, ["s1"], leases, results).join(timeout=60)
    assert results and results[0].sent == 20
    assert min(channel.stamps.values()) >= expires.timestamp(), "sent before the old holder's lease expired"


def test_a_holder_that_was_overtaken_knows_it_lost_the_sender(db: store.Store) -> None:
    leases = SenderLeases(db, CAMPAIGN, ttl_s=1, renew_s=0.2)
    assert leases.take(["s1", "s2"]) == ["s1", "s2"]
    assert leases.renew() == []
    # Its renewals stopped for longer than the lease (a stalled process): another dispatcher took s2 meanwhile.
    db.execute("UPDATE leases SET holder = 'other', expires_at = :later WHERE name = :name",
               later=datetime.now(UTC) + timedelta(seconds=30), name=sender_lease_name(CAMPAIGN, "s2"))
    assert leases.renew() == ["s2"]
    assert leases.held == {"s1"} and leases.lost == {"s2"}
    assert leases.take(["s2"]) == []  # never taken back by the one that lost it
    leases.release()
    assert set(sender_holders(db, CAMPAIGN)) == {"s2"}


def test_a_new_holder_reconciles_the_old_holders_in_flight_messages_before_sending(db: store.Store) -> None:
    queue(db, 10, ["s1"])
    now = datetime.now(UTC)
    # The old holder claimed m-0..m-3 and died: m-0 and m-1 reached the provider (their receipts are in), m-2 and
    # m-3 did not (no receipt ever comes).
    db.execute("UPDATE outbox SET state = 'sending', attempts = 1, updated_at = :now WHERE message_id IN :ids",
               now=now, ids=["m-0", "m-1", "m-2", "m-3"])
    for i in (0, 1):
        db.execute("INSERT INTO events (event_id, provider, provider_message_id, message_id, status, occurred_at) "
                   "VALUES (:e, 'whatsapp', :pid, :mid, 'delivered', :at)", e=f"e{i}", pid=f"wamid.{i}",
                   mid=f"m-{i}", at=now)
    db.execute("INSERT INTO leases (name, holder, pid, host, since, expires_at) "
               "VALUES (:name, 'gone', 4242, 'worker-b', :now, :expires)", name=sender_lease_name(CAMPAIGN, "s1"),
               now=now, expires=now + timedelta(seconds=1))

    def states() -> dict[str, str]:
        return dict(db.rows("SELECT message_id, state FROM outbox WHERE message_id IN :ids",
                            ids=["m-0", "m-1", "m-2", "m-3"]))

    ingests: list[float] = []  # the receipt source's calls (wall clock)
    channel = Stamped(at_first_send=states)
    results: list[DispatchResult] = []
    leases = SenderLeases(db, CAMPAIGN, ttl_s=1.5, renew_s=0.3)
    dispatch_in_thread(db, channel, ["s1"], leases, results, grace_s=1,
                       reconcile=lambda: ingests.append(time.time())).join(timeout=60)
    # Reconciled before the first send: those with a receipt are sent; the others stay in flight (their receipt may
    # still come) and are never sent again by the new holder.
    assert channel.first_seen == {"m-0": "sent", "m-1": "sent", "m-2": "sending", "m-3": "sending"}
    assert ingests and ingests[0] < min(channel.stamps.values())
    assert sorted(channel.accepted) == sorted(f"m-{i}" for i in range(4, 10))
    assert dict(db.rows("SELECT message_id, provider_message_id FROM outbox WHERE message_id IN ('m-0', 'm-1')")) \
        == {"m-0": "wamid.0", "m-1": "wamid.1"}
    # No receipt within the grace: `unknown`, resent only on the operator's word.
    assert states() == {"m-0": "sent", "m-1": "sent", "m-2": "unknown", "m-3": "unknown"}
    assert results[0].reconciled_sent == 2 and results[0].unknown == 2 and results[0].sent == 6


def test_a_dispatcher_leaves_other_holders_messages_in_flight_alone(db: store.Store) -> None:
    """Scoped recovery: a dispatcher of s1 starting while another live one has s2's messages in flight must not
    call them `unknown` (a campaign-wide recovery would)."""
    queue(db, 5, ["s1", "s2"])
    owner = sender_of(db)
    s2_ids = [m for m, s in owner.items() if s == "s2"]
    db.execute("UPDATE outbox SET state = 'sending', attempts = 1, updated_at = :now WHERE message_id IN :ids",
               now=datetime.now(UTC) - timedelta(minutes=5), ids=s2_ids)
    other = SenderLeases(db, CAMPAIGN, ttl_s=30)
    assert other.take(["s2"]) == ["s2"]
    results: list[DispatchResult] = []
    dispatch_in_thread(db, Stamped(), ["s1"], SenderLeases(db, CAMPAIGN, ttl_s=30), results).join(timeout=60)
    assert results[0].sent == 5 and results[0].unknown == 0
    assert {s for m, s in db.rows("SELECT message_id, state FROM outbox WHERE message_id IN :ids", ids=s2_ids)} \
        == {"sending"}
    other.release()
