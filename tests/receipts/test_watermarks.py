"""Messenger/Instagram watermarks through ingest into the store (SQLite and PostgreSQL): a read (or mid-less
delivery) watermark marks every message sent to that PSID up to its instant, whatever the arrival order,
once and for all, and the reports count those reads."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from pipeline import store
from pipeline.costs.costing import cost_report, summary_totals
from pipeline.receipts.ingest import current_statuses, ingest_spool
from pipeline.receipts.spool import encode_record
from pipeline.sandbox.messenger import create_messenger_app
from pipeline.servers import serve_in_thread
from tests.helpers.channels import dispatch, drain
from tests.helpers.providers import (
    MESSENGER_ENV,
    MESSENGER_SECRET,
    messenger_channel,
    messenger_config,
    messenger_queue,
    set_env,
)
from tests.helpers.receipts import add_messages, count, spooling_receiver, write_spool

T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
PAGE = "104857600001"


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def webhook(events: list[dict], obj: str = "page") -> bytes:
    return json.dumps({"object": obj, "entry": [{"id": PAGE, "time": ms(T0), "messaging": events}]}).encode()


def read_mark(psid: str, at: datetime) -> dict:
    return {"sender": {"id": psid}, "recipient": {"id": PAGE}, "timestamp": ms(at), "read": {"watermark": ms(at)}}


def delivery_mark(psid: str, at: datetime) -> dict:
    return {"sender": {"id": psid}, "recipient": {"id": PAGE}, "delivery": {"watermark": ms(at)}}


def delivered(psid: str, mid: str, at: datetime) -> dict:
    return {"sender": {"id": psid}, "recipient": {"id": PAGE}, "delivery": {"mids": [mid], "watermark": ms(at)}}


def line(body: bytes, provider: str = "messenger") -> bytes:
    return encode_record(provider, body, T0 + timedelta(hours=1))


def sent(db: store.Store, mid: str, psid: str, at: datetime, channel: str = "messenger") -> None:
    add_messages(db, f"msg-{mid}", recipient=psid, channel=channel, sender=PAGE, provider_ids=[mid],
                 queued_at=at - timedelta(seconds=1), sent_at=at)


def statuses(db: store.Store) -> dict[str, str]:
    return dict(db.rows("SELECT message_id, status FROM message_status"))


def test_a_read_watermark_marks_the_psids_earlier_messages_read(db: store.Store, tmp_path) -> None:
    sent(db, "m1", "7100", T0)
    sent(db, "m2", "7100", T0 + timedelta(seconds=10))
    sent(db, "m3", "7100", T0 + timedelta(minutes=5))  # after the watermark: not read
    sent(db, "m4", "7200", T0)  # another user
    sent(db, "m5", "7100", T0, channel="instagram")  # the same id on Instagram is another account
    write_spool(tmp_path / "sp", "1", [line(webhook([read_mark("7100", T0 + timedelta(minutes=1))]))])

    result = ingest_spool(db, tmp_path / "sp")
    assert (result.events_added, result.derived_events) == (1, 2)
    assert statuses(db) == {"msg-m1": "read", "msg-m2": "read"}
    rows = db.rows("SELECT provider, provider_message_id, recipient, occurred_at FROM events"
                   " WHERE message_id = 'msg-m1'")
    assert [(*r[:3], store.utc(r[3])) for r in rows] == [("messenger", "m1", "7100", T0 + timedelta(minutes=1))]

    # A delivery without mids is a watermark too; read implies delivered, so m1/m2 stay read.
    write_spool(tmp_path / "sp", "2", [line(webhook([delivery_mark("7200", T0 + timedelta(seconds=5)),
                                                     delivery_mark("7100", T0 + timedelta(minutes=10))]))])
    assert ingest_spool(db, tmp_path / "sp").derived_events == 2  # m4 and m3 delivered
    assert statuses(db) == {"msg-m1": "read", "msg-m2": "read", "msg-m3": "delivered", "msg-m4": "delivered"}

    # Replaying everything (bookkeeping lost) changes nothing.
    before = count(db, "events")
    db.execute("DELETE FROM spool_files")
    again = ingest_spool(db, tmp_path / "sp")
    assert (again.events_added, again.derived_events, count(db, "events")) == (0, 0, before)

    # Reports count the reads: 2 of the 4 delivered Messenger messages (Instagram's m5 has no receipt).
    totals = summary_totals(cost_report(db, "c1"))
    assert (totals["delivered"], totals["read"], totals["read_rate"]) == (4, 2, 0.5)
    assert current_statuses(db, "c1") == {"read": 2, "delivered": 2}


def test_a_watermark_counts_whatever_the_arrival_order(db: store.Store, tmp_path) -> None:
    spool = tmp_path / "sp"
    # The read watermark arrives before the dispatcher has recorded the message: nothing to mark yet.
    write_spool(spool, "1", [line(webhook([read_mark("7100", T0 + timedelta(minutes=1))]))])
    assert ingest_spool(db, spool).derived_events == 0
    sent(db, "m1", "7100", T0)
    # Once the message is known, the next ingest marks it, without any new file.
    assert ingest_spool(db, spool).derived_events == 1
    assert statuses(db) == {"msg-m1": "read"}
    # Its own delivery receipt comes last; an earlier watermark, arriving even later, adds its instant.
    write_spool(spool, "2", [line(webhook([delivered("7100", "m1", T0 + timedelta(seconds=3))]))])
    write_spool(spool, "3", [line(webhook([read_mark("7100", T0 + timedelta(seconds=30))]))])
    result = ingest_spool(db, spool)
    # The delivery's mid and its watermark (which adds nothing m1's own receipt did not say), the read.
    assert (result.events_added, result.derived_events) == (3, 1)
    assert statuses(db) == {"msg-m1": "read"}
    assert [store.utc(at) for (at,) in db.rows("SELECT delivered_at FROM message_status")] \
        == [T0 + timedelta(seconds=3)]
    events = count(db, "events")
    db.execute("DELETE FROM spool_files")
    assert ingest_spool(db, spool).derived_events == 0
    assert count(db, "events") == events


def test_the_messages_own_receipt_is_evidence_of_when_it_was_sent(db: store.Store, tmp_path) -> None:
    # Our clock recorded the send after Meta's watermark instant, but Meta delivered it before it.
    sent(db, "m1", "7100", T0 + timedelta(seconds=40))
    write_spool(tmp_path / "sp", "1", [line(webhook([delivered("7100", "m1", T0 + timedelta(seconds=20)),
                                                     read_mark("7100", T0 + timedelta(seconds=30))]))])
    assert ingest_spool(db, tmp_path / "sp").derived_events == 1
    assert statuses(db) == {"msg-m1": "read"}


def test_instagram_watermarks_mark_instagram_messages(db: store.Store, tmp_path) -> None:
    sent(db, "ig1", "1789", T0, channel="instagram")
    sent(db, "fb1", "1789", T0)
    write_spool(tmp_path / "sp", "1", [line(webhook([read_mark("1789", T0 + timedelta(minutes=1))], "instagram"),
                                            provider="instagram")])
    assert ingest_spool(db, tmp_path / "sp").derived_events == 1
    assert statuses(db) == {"msg-ig1": "read"}


def test_the_sandboxs_read_watermarks_reach_the_report(db: store.Store, tmp_path, monkeypatch) -> None:
    """Send API sandbox -> real dispatcher -> signed webhooks -> receiver spool -> ingest: every PSID the
    sandbox had read its message ends up read, the others delivered."""
    set_env(monkeypatch, MESSENGER_ENV)
    spool = tmp_path / "spool"
    with spooling_receiver(spool, {"MESSENGER_APP_SECRET": MESSENGER_SECRET}) as receiver:
        app = create_messenger_app(messenger_config(webhook_url=f"{receiver}/webhooks/messenger", read_rate=0.5))
        with serve_in_thread(app) as url:
            channel = messenger_channel(url)
            messenger_queue(db, channel, 30)
            assert dispatch(db, channel).sent == 30
            drain(url)
    fate = {m["to"]: m["outcome"] for m in app.state.sandbox.ledger.snapshot()["messages"]}
    assert set(fate.values()) == {"read", "delivered"}
    result = ingest_spool(db, spool)
    assert result.quarantined == 0 and result.derived_events == sum(o == "read" for o in fate.values())
    got = dict(db.rows("SELECT o.recipient_key, s.status FROM outbox o JOIN message_status s USING (message_id)"))
    assert got == fate


def test_a_delivery_naming_one_mid_still_applies_its_watermark(db: store.Store, tmp_path) -> None:
    # Meta names the newest message in `mids`; the watermark covers the earlier ones it does not name.
    sent(db, "m1", "7100", T0)
    sent(db, "m2", "7100", T0 + timedelta(seconds=10))
    sent(db, "m3", "7100", T0 + timedelta(minutes=5))  # after the watermark: stays undelivered
    write_spool(tmp_path / "sp", "1", [line(webhook([delivered("7100", "m2", T0 + timedelta(seconds=20))]))])
    ingest_spool(db, tmp_path / "sp")
    assert statuses(db) == {"msg-m1": "delivered", "msg-m2": "delivered"}
