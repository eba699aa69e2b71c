"""The Viber channel through the real dispatcher against the Viber bot API sandbox on loopback."""

from __future__ import annotations

import json

import httpx
import pytest

from pipeline.channels import viber_webhooks
from pipeline.channels.base import Outgoing
from pipeline.spec import SpecError, parse_spec
from pipeline.store import Store
from tests.helpers.channels import Receiver, dispatch, drain
from tests.helpers.providers import VIBER, VIBER_SPEC, VIBER_TOKEN, set_env


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, VIBER.env)


def test_payload_carries_tracking_data_and_the_message_class() -> None:
    channel = VIBER.channel("http://v.test")
    spec = parse_spec(VIBER_SPEC)
    payload = channel.build_payload(Outgoing(message_id="m-1", to="u1=", text="Hello", template=spec.template))
    assert payload == {"receiver": "u1=", "sender": {"name": "Example Shop"}, "tracking_data": "m-1",
                       "type": "text", "text": "Hello", "_label": "promotional"}
    wire = json.loads(channel.request_for(json.dumps(payload)).content)
    assert "_label" not in wire and wire["tracking_data"] == "m-1"
    utility = parse_spec({**VIBER_SPEC, "template": {**VIBER_SPEC["template"], "category": "utility"}}).template
    assert channel.build_payload(Outgoing(message_id="m", to="u", text="x", template=utility))["_label"] == (
        "transactional")
    with pytest.raises(SpecError, match="sender_name"):
        VIBER.channel("http://v.test", provider={"options": {"sender_name": "x" * 29}})


def test_happy_path_tracking_data_is_our_id_and_signed_callbacks_name_our_tokens(sqlite_db: Store) -> None:
    receiver = Receiver()
    result, sandbox, _ = VIBER.send_all(sqlite_db, 20, receiver=receiver)
    assert result.sent == 20 and result.failed == 0
    stats = sandbox.ledger.snapshot()
    outbox = dict(sqlite_db.rows("SELECT message_id, provider_message_id FROM outbox WHERE state = 'sent'"))
    assert stats["accepted"] == 20 and stats["duplicate_callback_data"] == 0
    assert sorted(m["correlation_id"] for m in stats["messages"]) == sorted(outbox)
    assert all(outbox[m["correlation_id"]] == m["id"] for m in stats["messages"])
    receipts = []
    for post in receiver.posts:
        assert viber_webhooks.verify(post.body, post.headers, VIBER_TOKEN)
        receipts.extend(viber_webhooks.parse(post.body)[0])
    tokens = set(outbox.values())
    assert {r.provider_message_id for r in receipts} == tokens and all(r.message_id is None for r in receipts)
    fates = {m["id"]: m["outcome"] for m in stats["messages"]}
    failed = {r.provider_message_id for r in receipts if r.status == "failed"}
    assert failed == {t for t, f in fates.items() if f == "failed"} and failed  # seed 11 fails some
    assert all(r.error_title for r in receipts if r.status == "failed")
    read = {r.provider_message_id for r in receipts if r.status == "read"}
    assert read == {t for t, f in fates.items() if f == "read"}


def test_permanent_error_in_a_200_body_is_recorded_with_its_status(sqlite_db: Store) -> None:
    with VIBER.running(VIBER.config(not_subscribed=frozenset({"01234567890A003="}))) as (url, _):
        channel = VIBER.channel(url)
        users = VIBER.queue(sqlite_db, channel, 6)
        result = dispatch(sqlite_db, channel)
    assert result.sent == 5 and result.failed == 1
    sql = "SELECT state, error_code, error_detail FROM outbox WHERE recipient_key = :key"
    (row,) = sqlite_db.rows(sql, key=users[3])
    assert tuple(row) == ("failed", "6", "receiverNotSubscribed")


def test_unsubscribe_arrives_as_a_signed_inbound() -> None:
    receiver = Receiver()
    with VIBER.running(VIBER.config(), receiver) as (url, _), httpx.Client(trust_env=False) as client:
        assert client.post(f"{url}/_sandbox/inbound", json={"from": "u9=", "event": "unsubscribed"}).status_code == 200
        drain(url)
    (post,) = receiver.posts
    assert viber_webhooks.verify(post.body, post.headers, VIBER_TOKEN)
    receipts, inbound = viber_webhooks.parse(post.body)
    assert receipts == [] and [(i.sender, i.text) for i in inbound] == [("u9=", "UNSUBSCRIBE")]


def test_forged_callback_is_refused_and_a_genuine_one_parses() -> None:
    body = json.dumps({"event": "failed", "timestamp": 1457764197627, "message_token": 4912661846655238145,
                       "user_id": "01234567890A=", "desc": "failure description"}).encode()
    signature = viber_webhooks.sign(body, VIBER_TOKEN)
    assert viber_webhooks.verify(body, {"X-Viber-Content-Signature": signature}, VIBER_TOKEN)
    assert not viber_webhooks.verify(body, {"X-Viber-Content-Signature": "sha256=" + signature}, VIBER_TOKEN)
    tampered = body.replace(b"failed", b"seen")
    assert not viber_webhooks.verify(tampered, {"x-viber-content-signature": signature}, VIBER_TOKEN)
    assert not viber_webhooks.verify(body, {"X-Viber-Content-Signature": viber_webhooks.sign(body, "x")}, VIBER_TOKEN)
    assert not viber_webhooks.verify(body, {}, VIBER_TOKEN)
    (receipt,), inbound = viber_webhooks.parse(body)
    assert inbound == []
    r = receipt
    assert (r.provider_message_id, r.status, r.message_id, r.error_title, r.recipient) == (
        "4912661846655238145", "failed", None, "failure description", "01234567890A=")
    seen = json.dumps({"event": "seen", "timestamp": 1, "message_token": 7, "user_id": "u"}).encode()
    assert viber_webhooks.parse(seen)[0][0].status == "read"
    assert viber_webhooks.parse(b'{"event": "webhook", "timestamp": 1}') == ([], [])
    for bad in (b"[]", b"{", b'{"event": "delivered", "timestamp": 1}', b'{"event": "teleported", "timestamp": 1}'):
        with pytest.raises(viber_webhooks.MalformedPayload):
            viber_webhooks.parse(bad)
