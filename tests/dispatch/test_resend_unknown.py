"""`campaign resend-unknown` settles what receipts can before it re-sends: an `unknown` message whose receipt sits in
a closed spool file nothing has ingested yet is marked sent by that receipt and not sent again (once, under load, the
store-outage test counted 1,001 sends of 1,000 messages); one no receipt names is sent again, once. The real sandbox
and receiver, the command in this process; on SQLite and on PostgreSQL. The wait for receipts of messages that went
`unknown` less than the grace ago is tested on the library call."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline import store
from pipeline.cli import main
from pipeline.dispatch import operations
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.receipts.spool import closed_files
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from tests.helpers.channels import states
from tests.helpers.receipts import add_messages
from tests.helpers.specs import uk_welcome_spec
from tests.helpers.waiting import wait_for

ROWS, LOST = 12, 4  # messages sent first; of them, the ones whose outcome the "crash" lost


def _unknown_long_ago(db: store.Store, message_ids: list[str]) -> None:
    """As a crash leaves them: claimed, outcome never recorded, reconciled `unknown` an hour ago."""
    db.execute("UPDATE outbox SET state = 'unknown', provider_message_id = NULL, sent_at = NULL, updated_at = :at "
               "WHERE message_id IN :ids", ids=message_ids, at=datetime.now(UTC) - timedelta(hours=1))


def test_resend_unknown_settles_by_receipts_in_the_spool_and_resends_only_what_none_names(
        tmp_path: Path, db_url: str, prefect_harness) -> None:
    spool, elsewhere = tmp_path / "spool", tmp_path / "no-receipts"
    spec = uk_welcome_spec(tmp_path, ROWS + 1, "3", rate=50, receipts_wait_s=1, grace_s=2)
    audience = tmp_path / "audience.csv"
    everyone = audience.read_text()
    audience.write_text("".join(everyone.splitlines(keepends=True)[:-1]))  # the last recipient comes later
    with serve_in_thread(create_receiver_app(spool, secrets_from_env())) as receiver:
        app = create_app(SandboxConfig(access_token="test-token", app_secret="test-app-secret", seed=3,
                                       templates={"welcome_offer": "marketing"},
                                       webhook_url=f"{receiver}/webhooks/whatsapp", webhook_delay_s=(0.01, 0.05)))
        sandbox = app.state.sandbox
        with serve_in_thread(app) as sandbox_url, store.connect(db_url) as db:
            def campaign(command: str, spool_dir: Path) -> None:
                assert main([command, str(spec), "--db", db_url, "--spool-dir", str(spool_dir), "--reports-dir",
                             str(tmp_path / "reports"), "--provider-base-url", sandbox_url]) == 0

            # Sent, their receipts spooled by the receiver but never ingested: this run reads another folder.
            campaign("run", elsewhere)
            assert sandbox.accepted == ROWS and states(db) == {"sent": ROWS}
            assert db.scalar("SELECT count(*) FROM events") == 0
            # One more recipient, queued by a paused run and never sent.
            audience.write_text(everyone)
            operations.request_pause(db, "welcome")
            campaign("run", elsewhere)
            assert sandbox.accepted == ROWS and states(db) == {"sent": ROWS, "queued": 1}

            lost = [r[0] for r in db.rows("SELECT message_id FROM outbox WHERE state = 'sent' ORDER BY seq")][:LOST]
            (never,) = db.rows("SELECT message_id FROM outbox WHERE state = 'queued'")[0]
            _unknown_long_ago(db, [*lost, never])
            wait_for(lambda: all(any(m.encode() in p.read_bytes() for p in closed_files(spool)) for m in lost),
                     timeout_s=30, what="the lost messages' receipts in closed spool files")
            campaign("resend-unknown", spool)

            final = states(db)
            settled = dict(db.rows("SELECT message_id, provider_message_id FROM outbox WHERE message_id IN :ids "
                                   "AND sent_at IS NOT NULL", ids=lost))
        wamids = {m["biz_opaque_callback_data"]: m["wamid"] for m in sandbox.snapshot()["messages"]}
    assert sandbox.duplicate_callback_data == 0  # none of the lost ones went out again
    assert sandbox.accepted == ROWS + 1 and sandbox.accepted_callback_data()[-1] == never  # the other, once
    assert final == {"sent": ROWS + 1}
    assert settled == {m: wamids[m] for m in lost}  # marked by their own receipts


def test_a_message_that_went_unknown_within_the_grace_waits_for_its_receipt(db: store.Store) -> None:
    add_messages(db, "m-late", "m-none", "m-old", state="unknown")  # unknown just now
    db.execute("UPDATE outbox SET updated_at = :at WHERE message_id = 'm-old'",
               at=datetime.now(UTC) - timedelta(hours=1))
    ingests = []
    arrived = threading.Event()

    def ingest() -> None:  # the receipt of m-late reaches the store with the second ingest (its file closed)
        ingests.append(1)
        if len(ingests) == 2:
            db.execute("INSERT INTO events (event_id, provider, provider_message_id, message_id, status, occurred_at, "
                       "received_at) VALUES ('e1', 'whatsapp', 'wamid.late', 'm-late', 'delivered', :at, :at)",
                       at=datetime.now(UTC))
            arrived.set()

    settled, queued = operations.resend_unknown(db, "c1", ingest=ingest, grace_s=2, poll_s=0.1)
    assert arrived.is_set() and (settled, queued) == (1, 2)
    assert dict(db.rows("SELECT message_id, state FROM outbox")) == {"m-late": "sent", "m-none": "queued",
                                                                     "m-old": "queued"}
    assert db.scalar("SELECT provider_message_id FROM outbox WHERE message_id = 'm-late'") == "wamid.late"


def test_without_young_unknowns_nothing_waits(db: store.Store) -> None:
    add_messages(db, "m-old", state="unknown")
    db.execute("UPDATE outbox SET updated_at = :at", at=datetime.now(UTC) - timedelta(hours=1))
    ingests = []
    assert operations.resend_unknown(db, "c1", ingest=lambda: ingests.append(1), grace_s=3600) == (0, 1)
    assert ingests == [1]  # one ingest, no wait for a grace long over
