"""WhatsApp webhook signature checks and envelope parsing (pipeline.channels.whatsapp_webhooks)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime

import pytest

from pipeline.channels.whatsapp_webhooks import (
    MalformedPayload,
    inbound_message_id,
    parse_webhook,
    sign,
    verify_signature,
)
from tests.helpers.whatsapp import envelope

SECRET = "app-secret-for-tests"


STATUS = {
    "id": "wamid.HBgL1",
    "status": "sent",
    "timestamp": "1750030073",
    "recipient_id": "16505551234",
    "biz_opaque_callback_data": "msg-0001",
    "conversation": {"id": "72b1", "expiration_timestamp": "1750116480", "origin": {"type": "marketing"}},
    "pricing": {"billable": True, "pricing_model": "PMP", "type": "regular", "category": "marketing"},
}


def raw(doc: object) -> bytes:
    return json.dumps(doc).encode()


# ---- signatures -------------------------------------------------------------------------------

def test_signature_accepts_hmac_of_raw_bytes() -> None:
    body = b'{"object": "whatsapp_business_account", "entry": []}'
    header = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign(body, SECRET) == header
    assert verify_signature(body, header, SECRET)
    assert verify_signature(body, header.upper().replace("SHA256=", "sha256="), SECRET)


@pytest.mark.parametrize(
    "header",
    [None, "", "sha256=", "sha1=abc", "sha256=deadbeef", "sha256=ünïcode", "garbage"],
)
def test_signature_rejects_missing_or_malformed_headers(header: str | None) -> None:
    assert not verify_signature(b"{}", header, SECRET)


def test_signature_rejects_other_secret_and_reserialised_body() -> None:
    body = b'{"a": 1,  "b": 2}'
    header = sign(body, SECRET)
    assert not verify_signature(body, header, "another-secret")
    assert not verify_signature(json.dumps(json.loads(body)).encode(), header, SECRET)  # re-serialised
    assert not verify_signature(body + b" ", header, SECRET)
    assert not verify_signature(body, header, "")  # no secret configured: never valid


# ---- statuses ---------------------------------------------------------------------------------

def test_status_maps_every_field() -> None:
    receipts, inbound = parse_webhook(raw(envelope(statuses=[STATUS])))
    assert inbound == []
    (r,) = receipts
    assert r.provider == "whatsapp"
    assert r.provider_message_id == "wamid.HBgL1"
    assert r.message_id == "msg-0001"
    assert r.status == "sent"
    assert r.category == "marketing" and r.pricing_type == "regular"
    assert r.recipient == "16505551234"
    assert r.occurred_at == datetime(2025, 6, 15, 23, 27, 53, tzinfo=UTC)
    assert r.occurred_at.utcoffset() is not None
    assert r.error_code is None and r.error_title is None
    assert json.loads(r.raw_json) == STATUS  # exactly that one status object


def test_failed_status_carries_first_error_as_string_code() -> None:
    failed = {
        "id": "wamid.F", "status": "failed", "timestamp": 1750030100, "recipient_id": "447700900123",
        "errors": [{"code": 131050, "title": "User stopped marketing", "message": "m"},
                   {"code": 1, "title": "second"}],
    }
    (r,), _ = parse_webhook(raw(envelope(statuses=[failed])))
    assert r.status == "failed"
    assert r.error_code == "131050" and isinstance(r.error_code, str)
    assert r.error_title == "User stopped marketing"
    assert r.message_id is None and r.category is None and r.pricing_type is None


def test_many_entries_changes_and_statuses_all_come_out() -> None:
    doc = envelope(statuses=[STATUS, {**STATUS, "id": "wamid.2", "status": "delivered"}])
    doc["entry"].append({"id": "WABA2", "changes": [
        {"field": "messages", "value": {"statuses": [{**STATUS, "id": "wamid.3", "status": "read"}]}},
    ]})
    receipts, _ = parse_webhook(raw(doc))
    assert [(r.provider_message_id, r.status) for r in receipts] == [
        ("wamid.HBgL1", "sent"), ("wamid.2", "delivered"), ("wamid.3", "read")]


def test_played_counts_as_read() -> None:
    (r,), _ = parse_webhook(raw(envelope(statuses=[{**STATUS, "status": "played"}])))
    assert r.status == "read"
    assert json.loads(r.raw_json)["status"] == "played"


def test_other_fields_yield_nothing() -> None:
    doc = envelope(field="message_template_status_update")
    doc["entry"][0]["changes"][0]["value"] = {"event": "PAUSED", "message_template_id": 1}
    assert parse_webhook(raw(doc)) == ([], [])


# ---- inbound ----------------------------------------------------------------------------------

def test_inbound_text_button_and_interactive() -> None:
    messages = [
        {"from": "16505551234", "id": "wamid.in1", "timestamp": "1749416383", "type": "text",
         "text": {"body": "STOP"}, "context": {"from": "15550783881", "id": "wamid.x"}},
        {"from": "16505551235", "id": "wamid.in2", "timestamp": "1749416384", "type": "button",
         "button": {"payload": "unsubscribe-payload", "text": "Unsubscribe"}},
        {"from": "16505551236", "id": "wamid.in3", "timestamp": "1749416385", "type": "button",
         "button": {"payload": "only-payload"}},
        {"from": "16505551237", "id": "wamid.in4", "timestamp": "1749416386", "type": "interactive",
         "interactive": {"type": "button_reply", "button_reply": {"id": "b1", "title": "Yes"}}},
        {"from": "16505551238", "id": "wamid.in5", "timestamp": "1749416387", "type": "image",
         "image": {"id": "media1", "mime_type": "image/jpeg"}},
    ]
    receipts, inbound = parse_webhook(raw(envelope(messages=messages)))
    assert receipts == []
    assert [(m.sender, m.text) for m in inbound] == [
        ("16505551234", "STOP"), ("16505551235", "Unsubscribe"), ("16505551236", "only-payload"),
        ("16505551237", "Yes"), ("16505551238", None)]
    assert all(m.provider == "whatsapp" for m in inbound)
    assert inbound[0].occurred_at == datetime.fromtimestamp(1749416383, tz=UTC)
    assert inbound_message_id(inbound[0]) == "wamid.in1"


# ---- malformed --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        raw({"object": "page", "entry": []}),
        raw({"object": "whatsapp_business_account"}),
        raw({"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages"}]}]}),
        raw(envelope(statuses={"id": "x"})),  # type: ignore[arg-type]
        raw(envelope(statuses=["x"])),
        raw(envelope(statuses=[{**STATUS, "id": ""}])),
        raw(envelope(statuses=[{**STATUS, "status": "exploded"}])),
        raw(envelope(statuses=[{**STATUS, "timestamp": "yesterday"}])),
        raw(envelope(statuses=[{k: v for k, v in STATUS.items() if k != "timestamp"}])),
        raw(envelope(statuses=[{**STATUS, "pricing": "cheap"}])),
        raw(envelope(messages=[{"id": "wamid.1", "timestamp": "1", "type": "text"}])),  # no sender
    ],
)
def test_malformed_payloads_raise_a_value_error_subclass(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse_webhook(body)
    assert issubclass(MalformedPayload, ValueError)


# ---- the JSON rules shared with the bulk (DuckDB) path ------------------------------------------

def test_raw_json_keeps_member_order_and_the_first_of_duplicate_keys_wins() -> None:
    body = (b'{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"statuses":'
            b'[{"timestamp":"1750030073","id":"wamid.D","status":"sent","status":"read","z":{"b":1,"a":2}}]}}]}]}')
    (r,), _ = parse_webhook(body)
    assert r.status == "sent"  # the first "status", as DuckDB's reader sees it
    assert r.raw_json == '{"timestamp":"1750030073","id":"wamid.D","status":"sent","status":"read","z":{"b":1,"a":2}}'


def test_raw_json_prints_numbers_as_duckdb_does() -> None:
    body = (b'{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"statuses":[{"id":"wamid.N",'
            b'"status":"sent","timestamp":1750030073,"f":[1.5e-07,1e5,0.1,-0.0,1e16,1e21,2.5E+3],"big":'
            b'123456789012345678901234567890,"n":NaN,"i":-Infinity,"o":1e400}]}}]}]}')
    (r,), _ = parse_webhook(body)
    assert r.raw_json == ('{"id":"wamid.N","status":"sent","timestamp":1750030073,"f":[1.5e-7,100000.0,0.1,-0.0,'
                          '10000000000000000.0,1e21,2500.0],"big":123456789012345678901234567890,"n":NaN,'
                          '"i":-Infinity,"o":1e400}')
    assert r.occurred_at == datetime.fromtimestamp(1750030073, tz=UTC)


@pytest.mark.parametrize("body", [
    b'{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"statuses":[{"id":"\\ud800",'
    b'"status":"sent","timestamp":"1"}]}}]}]}',  # a lone surrogate: no database can store it as text
    b'{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"statuses":[{"id":"x",'
    b'"status":"sent","timestamp":"1","deep":' + b"[" * 100_000 + b"]" * 100_000 + b"}]}}]}]}",
    b'{"object":"whatsapp_business_account","entry":[{"changes":[{"value":{"statuses":[{"id":"x",'
    b'"status":"sent","timestamp":"1","deep":' + b"[" * 600 + b"]" * 600 + b"}]}}]}]}",  # parses; too deep to print
])
def test_unstorable_or_absurd_bodies_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse_webhook(body)
