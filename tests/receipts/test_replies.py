"""Replies and taps through ingest (SQLite and PostgreSQL): a tap on a spec's opt-out button suppresses the
recipient, as STOP does, and the next campaign skips them; another button's tap suppresses nobody."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline import store
from pipeline.costs.engagement import engagement
from pipeline.costs.report import write_report
from pipeline.dispatch.outbox import register_campaign
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.replies import opt_out_payloads
from pipeline.receipts.spool import encode_record
from pipeline.render.prepare import prepare_audience
from pipeline.render.prepare_ids import id_channel, prepare_ids
from pipeline.spec import SpecError, load_spec
from tests.helpers.receipts import T0, add_messages, body, line, write_spool


def tap(sender: str, payload: str, mid: str, context: str | None = None) -> dict:
    message = {"from": sender, "id": mid, "timestamp": str(T0), "type": "button",
               "button": {"payload": payload, "text": "Stop promotions"}}
    if context:
        message["context"] = {"from": "15550001111", "id": context}
    return message


def test_the_demo_opt_out_button_suppresses_and_the_next_campaign_skips(db: store.Store, tmp_path: Path) -> None:
    spec = load_spec("campaigns/welcome.yaml")
    register_campaign(db, spec, "welcome")
    assert opt_out_payloads(db) == {"STOP_PROMOS"}
    write_spool(tmp_path / "sp", "1", [line(body(messages=[
        tap("12015520895", "STOP_PROMOS", "wamid.t1", context="wamid.sent1"),
        tap("12015520896", "MORE_INFO", "wamid.t2"),  # not an opt-out
    ]))])
    result = ingest_spool(db, tmp_path / "sp")
    assert result.suppressions_added == 1
    assert db.rows("SELECT channel, address, reason, source FROM suppressions") == [
        ("whatsapp", "+12015520895", "opt_out_button", "wamid.t1")]
    audience = tmp_path / "a.csv"
    audience.write_text("phone,first_name,city,coupon,opt_in\n+1 201-552-0895,Liam,Austin,W-1,yes\n"
                        "+1 201-552-0896,Ann,Austin,W-2,yes\n")
    prepared = prepare_audience(audience, channel="whatsapp", category="marketing", template=spec.template,
                                variables=spec.variables, suppressed=store.suppressed_addresses(db, "whatsapp"))
    assert prepared.accepted["phone_e164"].to_list() == ["+12015520896"]
    assert prepared.counts == {"suppressed": 1}


def test_opt_out_payloads_are_bounded(db: store.Store) -> None:
    spec = load_spec("campaigns/welcome.yaml")
    second = spec.template.buttons[0].model_copy(update={"payload": "STOP_2"})
    register_campaign(db, spec, "welcome")
    register_campaign(db, spec.model_copy(update={
        "template": spec.template.model_copy(update={"buttons": [second]})}), "welcome-2")
    assert opt_out_payloads(db, {"CAMPAIGN_MAX_OPT_OUT_PAYLOADS": "2"}) == {"STOP_PROMOS", "STOP_2"}
    with pytest.raises(SpecError, match="CAMPAIGN_MAX_OPT_OUT_PAYLOADS: more than 1"):
        opt_out_payloads(db, {"CAMPAIGN_MAX_OPT_OUT_PAYLOADS": "1"})


def chatapp_line(items: list[dict]) -> bytes:
    return encode_record("chatapp", json.dumps(items).encode(), datetime(2026, 6, 1, tzinfo=UTC))


def test_chatapp_replies_and_taps_suppress_by_phone_and_by_user_id(db: store.Store, tmp_path: Path) -> None:
    spec = load_spec("campaigns/welcome.yaml")
    register_campaign(db, spec, "welcome")  # names STOP_PROMOS as an opt-out
    ms = T0 * 1000
    write_spool(tmp_path / "sp", "1", [chatapp_line([
        {"MessageId": "in-1", "From": "6591000001", "To": "8613100000001", "Timestamp": ms, "Type": "TEXT",
         "Message": "STOP", "DisplayName": "A", "Name": "A"},
        {"MessageId": "in-2", "From": "6591000002", "To": "8613100000001", "Timestamp": ms, "Type": "REPLY",
         "Message": {"payload": "STOP_PROMOS", "text": "Stop promotions"}, "DisplayName": "B", "Name": "B",
         "ContextMessageId": "61851ccb2f1365b16aee0001"},
        {"MessageId": "in-3", "From": "6591000003", "To": "8613100000001", "Timestamp": ms, "Type": "TEXT",
         "Message": "Thanks!", "DisplayName": "C", "Name": "C"},
        {"MessageId": "in-4", "From": "7100000000000001", "To": "104857600001", "Timestamp": ms, "Type": "TEXT",
         "Message": "stop", "ChannelType": "messenger", "DisplayName": "D", "Name": "D"},
        {"MessageId": "6185", "TaskId": "m-1", "From": "8613100000001", "To": "6591000004", "Timestamp": ms,
         "Status": "Delivered"},
    ])])
    result = ingest_spool(db, tmp_path / "sp")
    assert (result.inbound_added, result.quarantined, result.suppressions_added) == (4, 0, 3)
    assert sorted(db.rows("SELECT channel, address, reason, source FROM suppressions")) == [
        ("chatapp", "+6591000001", "stop_reply", "in-1"),
        ("chatapp", "+6591000002", "opt_out_button", "in-2"),
        ("chatapp", "7100000000000001", "stop_reply", "in-4"),
    ]
    # The next Chat App campaign to Messenger users, prepared by user id, skips the one who wrote STOP.
    audience = tmp_path / "u.csv"
    audience.write_text("user_id,first_name,city,opt_in\n7100000000000001,Ann,Rome,yes\n7100000000000002,Bo,Rome,yes\n")
    channel = id_channel("chatapp", {"channel_type": "messenger"})
    assert channel == "messenger"
    prepared = prepare_ids(audience, channel=channel, category="utility", suppressed=store.suppressed_addresses(
        db, "chatapp"), last_inbound={"7100000000000002": datetime.now(UTC)})
    assert prepared.accepted["recipient_key"].to_list() == ["7100000000000002"]
    assert prepared.counts == {"suppressed": 1}


def test_replies_and_taps_are_linked_to_their_campaign_and_counted_in_its_report(
        db: store.Store, tmp_path: Path) -> None:
    spec = load_spec("campaigns/welcome.yaml")
    register_campaign(db, spec, "c1")
    sent_at = datetime.fromtimestamp(T0 - 3600, tz=UTC)
    for i in range(4):
        add_messages(db, f"m{i}", recipient=f"+1201552080{i}", provider_ids=[f"wamid.sent{i}"], sent_at=sent_at)
    add_messages(db, "old", campaign="c0", recipient="+12015520801", provider_ids=["wamid.old"],
                 sent_at=sent_at - timedelta(days=30))
    text_reply = {"from": "12015520801", "id": "wamid.r1", "timestamp": str(T0), "type": "text",
                  "text": {"body": "Is it valid in Austin?"}}  # no context: the last message sent to them
    write_spool(tmp_path / "sp", "1", [line(body(messages=[
        tap("12015520800", "STOP_PROMOS", "wamid.t0", context="wamid.sent0"),
        text_reply,
        tap("12015520802", "MORE_INFO", "wamid.t2", context="wamid.sent2"),
        tap("19999999999", "MORE_INFO", "wamid.t9"),  # never sent to: linked to nothing
    ]))])
    result = ingest_spool(db, tmp_path / "sp")
    assert result.replies_linked == 4
    links = dict(db.rows("SELECT event_id, message_id FROM replies"))
    assert sorted(v for v in links.values() if v) == ["m0", "m1", "m2"] and len(links) == 4
    assert engagement(db, "c1") == {"replies": 3, "reply_rate": 0.75, "taps": {"MORE_INFO": 1, "STOP_PROMOS": 1},
                                    "opt_outs": 1}
    assert ingest_spool(db, tmp_path / "sp").replies_linked == 0  # looked at once
    files = write_report(db, "c1", tmp_path / "report", settle=False)
    page = files.html.read_text(encoding="utf-8")
    assert "Reply rate" in page and "75.0%" in page and "STOP_PROMOS" in page and "Opt outs" in page


def test_messenger_and_viber_replies_name_what_they_answer(db: store.Store, tmp_path: Path) -> None:
    at = datetime.fromtimestamp(T0 - 60, tz=UTC)
    add_messages(db, "fb-1", campaign="c-fb", recipient="7100000001", channel="messenger", provider_ids=["m_ours"],
                 sent_at=at)
    add_messages(db, "vb-1", campaign="c-vb", recipient="01234567890A=", channel="viber", provider_ids=["5741"],
                 sent_at=at)
    messenger = {"object": "page", "entry": [{"id": "P", "time": T0 * 1000, "messaging": [
        {"sender": {"id": "7100000001"}, "recipient": {"id": "P"}, "timestamp": T0 * 1000,
         "message": {"mid": "m_in", "text": "Stop", "quick_reply": {"payload": "STOP"}, "reply_to": {"mid": "m_ours"}}},
    ]}]}
    viber = {"event": "message", "timestamp": T0 * 1000, "message_token": 99,
             "sender": {"id": "01234567890A=", "name": "V"},
             "message": {"type": "text", "text": "YES", "tracking_data": "vb-1"}}
    at_receipt = datetime(2026, 6, 1, tzinfo=UTC)
    write_spool(tmp_path / "sp", "1", [encode_record("messenger", json.dumps(messenger).encode(), at_receipt),
                                       encode_record("viber", json.dumps(viber).encode(), at_receipt)])
    ingest_spool(db, tmp_path / "sp")
    assert sorted(db.rows("SELECT channel, kind, payload, context_id, opt_out, message_id, campaign_id FROM replies")) \
        == [("messenger", "tap", "STOP", "m_ours", True, "fb-1", "c-fb"),
            ("viber", "reply", None, "vb-1", False, "vb-1", "c-vb")]
    assert db.rows("SELECT channel, address, reason FROM suppressions") == [("messenger", "7100000001", "stop_reply")]
