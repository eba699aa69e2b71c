"""Fallback: undeliverable or not-delivered-in-time recipients get the second channel's message once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl

from pipeline.dispatch.fallback import fallback_leg_id, send_fallback
from pipeline.dispatch.outbox import enqueue_messages, register_campaign, store_preparation
from pipeline.records import empty_rejects
from pipeline.spec import parse_spec
from pipeline.testing import FakeChannel
from tests.helpers.whatsapp import SPEC, channel


def test_only_unreachable_recipients_get_the_fallback_and_only_once(con):
    spec = parse_spec({**SPEC, "senders": [], "fallback": {"channel": "sms", "sender": "Acme", "after_s": 600}})
    n = 6
    frame = pl.DataFrame({
        "row_number": list(range(2, n + 2)), "phone_e164": [f"+4477009{i:05d}" for i in range(n)],
        "region": ["GB"] * n, "number_type": ["mobile"] * n, "text": [f"Hi {i}" for i in range(n)],
        "params_json": [json.dumps({"body": [str(i)]}) for i in range(n)],
    })
    register_campaign(con, spec, "t")
    store_preparation(con, "t", frame, empty_rejects())
    enqueue_messages(con, spec, "t", channel(), frame)
    ids = [r[0] for r in con.execute("SELECT message_id FROM outbox ORDER BY seq").fetchall()]
    now = datetime.now(UTC)
    old, recent = now - timedelta(hours=2), now - timedelta(seconds=30)
    outcomes = [("sent", None, old), ("failed", "131026", None), ("sent", None, old), ("sent", None, old),
                ("failed", "131050", None), ("sent", None, recent)]
    for message_id, (state, code, sent_at) in zip(ids, outcomes, strict=True):
        con.execute("UPDATE outbox SET state = ?, error_code = ?, sent_at = ? WHERE message_id = ?",
                    [state, code, sent_at, message_id])
    receipts = [(ids[0], "failed", "131026"), (ids[2], "sent", None), (ids[3], "delivered", None),
                (ids[5], "sent", None)]
    for i, (message_id, status, code) in enumerate(receipts):
        con.execute("INSERT INTO events (event_id, provider, provider_message_id, message_id, status, error_code, "
                    "occurred_at) VALUES (?, 'whatsapp', ?, ?, ?, ?, ?)",
                    [f"e{i}", f"w{i}", message_id, status, code, now])

    sms = FakeChannel()
    first = send_fallback(con, spec, "t", sms, now=now)
    # 131026 on the receipt, 131026 at send, and sent-but-not-delivered for 2 h; not 131050
    # (an opt-out), not the delivered one, not the one sent 30 s ago.
    assert first == {"selected": 3, "queued": 3, "sent": 3, "failed": 0}
    leg = fallback_leg_id("t")
    got = con.execute("SELECT recipient_key, channel FROM outbox WHERE campaign_id = ? ORDER BY 1", [leg]).fetchall()
    assert got == [("+447700900000", "fake"), ("+447700900001", "fake"), ("+447700900002", "fake")]
    texts = [json.loads(r[0])["text"] for r in con.execute(
        "SELECT payload_json FROM outbox WHERE campaign_id = ? ORDER BY seq", [leg]).fetchall()]
    assert texts == ["Hi 0", "Hi 1", "Hi 2"]  # the rendered text goes out on the second channel
    again = send_fallback(con, spec, "t", sms, now=now)
    assert again["queued"] == 0 and again["sent"] == 0 and len(sms.accepted) == 3
