"""PostgreSQL going away mid-dispatch (stopped, then started again): the run ends with one clear line naming the
store, and `resume` finishes the campaign with every message sent exactly once (the sandbox's own count): what
receipts reconcile is sent, and what was claimed but never left ends `unknown`, for `resend-unknown`."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import polars as pl

from pipeline import store
from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.dispatch import operations
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.outbox import enqueue_messages, register_campaign
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.receiver import create_receiver_app
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from pipeline.spec import RateSpec, RetrySpec, parse_spec
from pipeline.store.local_pg import local_postgres

MESSAGES = 600
SPEC = {"name": "outage", "audience": "x.csv", "channel": "whatsapp", "sender": "1065",
        "template": {"name": "welcome_offer", "language": "en_US", "category": "marketing", "text": "Hi {{ n }}",
                     "body": ["{{ n }}"]}}


def _queue(db: store.Store, channel: WhatsAppChannel) -> None:
    spec = parse_spec(SPEC)
    frame = pl.DataFrame({
        "row_number": range(2, MESSAGES + 2), "phone_e164": [f"+447700{i:06d}" for i in range(MESSAGES)],
        "region": "GB", "number_type": "mobile", "text": "Hi",
        "params_json": [json.dumps({"body": [f"N{i}"]}) for i in range(MESSAGES)],
    })
    register_campaign(db, spec, "outage")
    enqueue_messages(db, spec, "outage", channel, frame)


def test_a_postgresql_that_goes_away_mid_dispatch_stops_the_run_and_resume_sends_each_once(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    receiver = create_receiver_app(spool, {"whatsapp_app_secret": "test-app-secret",
                                           "whatsapp_verify_token": "test-verify-token"}, rotate_after_s=0.2)
    with local_postgres() as pg, serve_in_thread(receiver) as receiver_url:
        url = pg.create_database("outage")
        app = create_app(SandboxConfig(access_token="test-token", app_secret="test-app-secret",
                                       webhook_url=f"{receiver_url}/webhooks/whatsapp"))
        with serve_in_thread(app) as sandbox_url:
            channel = WhatsAppChannel(base_url=sandbox_url, api_version="v23.0", phone_number_id="1065",
                                      access_token="test-token")
            db = store.connect(url)
            _queue(db, channel)
            rate = RateSpec(max_per_second=150, concurrency=8)
            retry = RetrySpec(max_attempts=3, reconcile_grace_s=3)
            failure: list[BaseException] = []

            def first_run() -> None:
                try:
                    asyncio.run(dispatch_campaign(db, "outage", channel, rate=rate, retry=retry,
                                                  reconcile=lambda: ingest_spool(db, spool), progress_every_s=60))
                except BaseException as exc:  # noqa: BLE001 - the test inspects it
                    failure.append(exc)

            runner = threading.Thread(target=first_run)
            runner.start()
            deadline = time.monotonic() + 60
            while app.state.sandbox.accepted < 150:
                assert time.monotonic() < deadline and runner.is_alive(), "the dispatch never got going"
                time.sleep(0.02)
            pg.stop("immediate")  # the database server is gone, mid-dispatch
            runner.join(timeout=120)
            assert not runner.is_alive()
            assert len(failure) == 1 and isinstance(failure[0], store.StoreError), failure
            message = str(failure[0])
            assert message.startswith(f"store {store.shown(store.database_url(url))}: ") and "\n" not in message
            sent_before = app.state.sandbox.accepted
            assert 150 <= sent_before < MESSAGES

            pg.start()
            db.close()
            db = store.connect(url)
            resumed = asyncio.run(dispatch_campaign(db, "outage", channel, rate=rate, retry=retry,
                                                    reconcile=lambda: ingest_spool(db, spool), progress_every_s=60))
            # Claimed when the store went away, never sent: no receipt names them, so the operator decides.
            assert resumed.unknown == db.scalar("SELECT count(*) FROM outbox WHERE state = 'unknown'")
            # The operator's resend-unknown: the spool's receipts settle what they name first, the rest goes again.
            settled, queued = operations.resend_unknown(db, "outage", ingest=lambda: ingest_spool(db, spool),
                                                        grace_s=retry.reconcile_grace_s)
            assert settled + queued == resumed.unknown
            result = asyncio.run(dispatch_campaign(db, "outage", channel, rate=rate, retry=retry,
                                                   reconcile=lambda: ingest_spool(db, spool), progress_every_s=60))
            states = dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY state"))
            db.close()
            stats = app.state.sandbox.snapshot(with_messages=False)
    assert states == {"sent": MESSAGES}, (states, result)
    assert stats["accepted"] == MESSAGES and stats["unique_callback_data"] == MESSAGES
    assert stats["duplicate_callback_data"] == 0
