"""Fallback: undeliverable or not-delivered-in-time recipients get the second channel's message once.
On SQLite and on PostgreSQL (the `db` fixture)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl

from pipeline.dispatch.fallback import fallback_leg_id, send_fallback
from pipeline.dispatch.outbox import enqueue_messages, register_campaign, store_preparation
from pipeline.records import empty_rejects
from pipeline.spec import parse_spec
from pipeline.store import Store, run_many
from pipeline.testing import FakeChannel
from tests.helpers.whatsapp import SPEC, channel


def test_only_unreachable_recipients_get_the_fallback_and_only_once(db: Store):
    spec = parse_spec({**SPEC, "senders": [], "fallback": {"channel": "sms", "sender": "Acme", "after_s": 600}})
    n = 6
    frame = pl.DataFrame({
        "row_number": list(range(2, n + 2)), "phone_e164": [f"+4477009{i:05d}" for i in range(n)],
        "region": ["GB"] * n, "number_type": ["mobile"] * n, "text": [f"Hi {i}" for i in range(n)],
        "params_json": [json.dumps({"body": [str(i)]}) for i in range(n)],
    })
    register_campaign(db, spec, "t")
    store_preparation(db, "t", frame, empty_rejects())
    enqueue_messages(db, spec, "t", channel(), frame)
    ids = [r[0] for r in db.rows("SELECT message_id FROM outbox ORDER BY seq")]
    now = datetime.now(UTC)
    old, recent = now - timedelta(hours=2), now - timedelta(seconds=30)
    outcomes = [("sent", None, old), ("failed", "131026", None), ("sent", None, old), ("sent", None, old),
                ("failed", "131050", None), ("sent", None, recent)]
    receipts = [(ids[0], "failed", "131026"), (ids[2], "sent", None), (ids[3], "delivered", None),
                (ids[5], "sent", None)]
    with db.write() as conn:
        run_many(conn, "UPDATE outbox SET state = :state, error_code = :code, sent_at = :sent_at "
                       "WHERE message_id = :mid",
                 [{"state": state, "code": code, "sent_at": sent_at, "mid": message_id}
                  for message_id, (state, code, sent_at) in zip(ids, outcomes, strict=True)])
        run_many(conn, "INSERT INTO events (event_id, provider, provider_message_id, message_id, status, error_code, "
                       "occurred_at) VALUES (:eid, 'whatsapp', :pid, :mid, :status, :code, :at)",
                 [{"eid": f"e{i}", "pid": f"w{i}", "mid": message_id, "status": status, "code": code, "at": now}
                  for i, (message_id, status, code) in enumerate(receipts)])

    sms = FakeChannel()
    first = send_fallback(db, spec, "t", sms, now=now)
    # 131026 on the receipt, 131026 at send, and sent-but-not-delivered for 2 h; not 131050
    # (an opt-out), not the delivered one, not the one sent 30 s ago.
    assert first == {"selected": 3, "queued": 3, "sent": 3, "failed": 0}
    leg = fallback_leg_id("t")
    got = [tuple(r) for r in db.rows("SELECT recipient_key, channel FROM outbox WHERE campaign_id = :leg ORDER BY 1",
                                     leg=leg)]
    assert got == [("+447700900000", "fake"), ("+447700900001", "fake"), ("+447700900002", "fake")]
    texts = [json.loads(r[0])["text"] for r in db.rows(
        "SELECT payload_json FROM outbox WHERE campaign_id = :leg ORDER BY seq", leg=leg)]
    assert texts == ["Hi 0", "Hi 1", "Hi 2"]  # the rendered text goes out on the second channel
    again = send_fallback(db, spec, "t", sms, now=now)
    assert again["queued"] == 0 and again["sent"] == 0 and len(sms.accepted) == 3
