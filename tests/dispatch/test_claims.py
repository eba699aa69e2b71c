"""Claims are transactions: dispatchers racing for the same messages (threads with their own connections, and
processes) never both get one, and everything queued is claimed by someone. On SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from pipeline import store
from pipeline.dispatch.ledger import Claim, Ledger, Outcome
from pipeline.store.bulk import insert_frame

ROOT = Path(__file__).resolve().parents[2]


def queue(db: store.Store, n: int, campaign_id: str = "race") -> None:
    now = datetime.now(UTC)
    rows = pl.DataFrame({
        "message_id": [f"{campaign_id}-{i}" for i in range(n)], "campaign_id": campaign_id, "seq": list(range(n)),
        "recipient_key": [f"+4470000{i:05d}" for i in range(n)], "channel": "whatsapp", "sender": "s1",
        "payload_json": "{}", "state": "queued", "attempts": 0, "queued_at": now,
    })
    with db.write() as conn:
        insert_frame(conn, "outbox", rows)


def test_racing_claims_split_the_messages_exactly(db: store.Store) -> None:
    queue(db, 600)
    won: list[set[int]] = [set(), set(), set()]
    barrier = threading.Barrier(3)

    def dispatcher(index: int) -> None:
        ledger = Ledger(db, "race")
        barrier.wait()
        for start in range(0, 600, 40):  # every dispatcher asks for every message, in the same order
            won[index] |= ledger.commit([Claim(list(range(start, start + 40)))], [])

    threads = [threading.Thread(target=dispatcher, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sum(len(w) for w in won) == 600 and set().union(*won) == set(range(600))
    assert Ledger(db, "race").counts() == {"sending": 600}
    attempts = db.rows("SELECT attempts, count(*) FROM outbox GROUP BY attempts")
    assert [tuple(r) for r in attempts] == [(1, 600)]
    claims = db.scalar("SELECT count(*) FROM outbox_transitions WHERE state = 'sending'")
    assert claims == 600  # one transition per claim that took effect


def test_a_claim_takes_only_queued_messages_and_records_outcomes(db: store.Store) -> None:
    queue(db, 5)
    ledger = Ledger(db, "race")
    assert ledger.commit([Claim([0, 1, 2], ["pid-0", None, "pid-2"])], []) == {0, 1, 2}
    assert ledger.commit([Claim([1, 2, 3])], []) == {3}  # 1 and 2 are already sending
    now = datetime.now(UTC)
    ledger.commit([], [Outcome(0, "sent", "wamid.0", None, None, now, 1),
                       Outcome(1, "failed", None, "131026", "undeliverable", None, 1, retryable=False)])
    rows = {r[0]: tuple(r[1:]) for r in db.rows(
        "SELECT seq, state, provider_message_id, error_code FROM outbox ORDER BY seq")}
    assert rows == {0: ("sent", "wamid.0", None), 1: ("failed", None, "131026"), 2: ("sending", "pid-2", None),
                    3: ("sending", None, None), 4: ("queued", None, None)}
    # A resend of a message still in flight records the new batch's provider id without a second claim.
    assert ledger.commit([Claim([2], ["pid-2b"], resend=True)], []) == {2}
    assert db.scalar("SELECT provider_message_id FROM outbox WHERE seq = 2") == "pid-2b"


CLAIMER = textwrap.dedent("""
    import json, sys
    from pipeline import store
    from pipeline.dispatch.ledger import Claim, Ledger
    ledger = Ledger(store.connect(sys.argv[1]), "race")
    won = set()
    for start in range(0, 2000, 50):
        won |= ledger.commit([Claim(list(range(start, start + 50)))], [])
    print(json.dumps(sorted(won)))
""")


def test_processes_claiming_the_same_campaign_never_share_a_message(db: store.Store, db_url: str) -> None:
    queue(db, 2000)
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, db_url], stdout=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(3)]
    import json

    results = [set(json.loads(p.communicate(timeout=180)[0])) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert sum(len(r) for r in results) == 2000 and set().union(*results) == set(range(2000))
