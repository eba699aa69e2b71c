"""The Alibaba ChatApp channel through the real dispatcher against the ChatApp sandbox on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import httpx
import pytest

from pipeline.channels import chatapp_webhooks
from pipeline.channels.acs3 import sign_request
from pipeline.channels.base import Outgoing
from pipeline.channels.chatapp import encode_form, mass_task_id
from pipeline.spec import SpecError, parse_spec
from pipeline.store import Store
from tests.helpers.channels import Receiver, dispatch, drain
from tests.helpers.providers import CHATAPP, CHATAPP_KEY_ID, CHATAPP_KEY_SECRET, CHATAPP_SPEC, CHATAPP_TOKEN, set_env


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, CHATAPP.env)


def _outbox(db: Store) -> dict[str, tuple[str, str | None]]:
    rows = db.rows("SELECT message_id, state, provider_message_id FROM outbox")
    return {m: (state, pid) for m, state, pid in rows}


def test_payload_is_the_send_chatapp_message_parameters() -> None:
    channel = CHATAPP.channel("http://x.test")
    spec = parse_spec(CHATAPP_SPEC)
    payload = channel.build_payload(Outgoing(message_id="m-1", to="+6591000000", params={"body": ["Ann", "7"]},
                                             template=spec.template))
    assert payload == {"ChannelType": "whatsapp", "Type": "template", "Language": "en", "From": "8613100000001",
                       "To": "6591000000", "TemplateParams": {"1": "Ann", "2": "7"}, "TaskId": "m-1",
                       "TemplateName": "promo_v1", "CustSpaceId": "cams-8c8test"}
    viber = CHATAPP.channel("http://x.test",
                            provider={"options": {"channel_type": "viber", "template_code": "1119001"}})
    vp = viber.build_payload(Outgoing(message_id="m-2", to="+6591000000", template=spec.template))
    assert vp["Label"] == "promotion" and vp["TemplateCode"] == "1119001" and "TemplateName" not in vp
    with pytest.raises(SpecError, match="channel_type"):
        CHATAPP.channel("http://x.test", provider={"options": {"channel_type": "sms"}})


def test_happy_path_each_message_once_with_task_id_and_signed_callbacks(sqlite_db: Store) -> None:
    receiver = Receiver()
    result, sandbox, _ = CHATAPP.send_all(sqlite_db, 20, receiver=receiver)
    assert result.sent == 20 and result.failed == 0 and result.throttled == 0
    outbox = _outbox(sqlite_db)
    stats = sandbox.ledger.snapshot()
    assert stats["accepted"] == 20 and stats["calls"] == 20 and stats["duplicate_callback_data"] == 0
    assert sorted(m["correlation_id"] for m in stats["messages"]) == sorted(outbox)
    by_task = {m["correlation_id"]: m["id"] for m in stats["messages"]}
    assert all(state == "sent" and pid == by_task[mid] for mid, (state, pid) in outbox.items())
    # Every push carries our token and parses into receipts that name our messages.
    receipts = []
    for post in receiver.posts:
        assert chatapp_webhooks.verify(post.body, post.headers, CHATAPP_TOKEN)
        receipts.extend(chatapp_webhooks.parse(post.body)[0])
    sent = [r for r in receipts if r.status == "sent"]
    assert sorted(r.message_id for r in sent) == sorted(outbox)
    assert all(r.provider_message_id == outbox[r.message_id][1] for r in receipts)
    assert {r.category for r in receipts} == {"marketing"}
    expected_reads = sum(m["outcome"] == "read" for m in stats["messages"])
    assert sum(r.status == "read" for r in receipts) == expected_reads


def test_mass_send_is_one_call_with_one_outcome_per_recipient(sqlite_db: Store) -> None:
    receiver = Receiver()
    with CHATAPP.running(CHATAPP.config(), receiver) as (url, sandbox):
        channel = CHATAPP.channel(url)
        CHATAPP.queue(sqlite_db, channel, 30)
        rows = sqlite_db.rows("SELECT message_id, payload_json FROM outbox ORDER BY seq")

        async def send() -> list:
            async with channel.open_session(5.0) as session:
                return await channel.send(session, [p for _, p in rows])

        outcomes = asyncio.run(send())
        drain(url)
    task = mass_task_id([m for m, _ in rows])
    tos = [json.loads(p)["To"] for _, p in rows]
    assert [o.kind for o in outcomes] == ["sent"] * 30
    assert [o.provider_message_id for o in outcomes] == [f"{task}:{to}" for to in tos]
    stats = sandbox.ledger.snapshot()
    assert stats["calls"] == 1 and stats["accepted"] == 30 and stats["duplicate_callback_data"] == 0
    receipts = [r for post in receiver.posts for r in chatapp_webhooks.parse(post.body)[0]]
    assert {r.provider_message_id for r in receipts} == {o.provider_message_id for o in outcomes}
    assert all(r.message_id is None for r in receipts)


def test_batch_level_error_applies_to_every_recipient() -> None:
    channel = CHATAPP.channel("http://cams.test")
    spec = parse_spec(CHATAPP_SPEC)
    messages = [Outgoing(message_id=f"m{i}", to=f"+65910000{i}", template=spec.template) for i in range(3)]
    payloads = [json.dumps(channel.build_payload(m)) for m in messages]
    handler_calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        handler_calls.append(request.headers["x-acs-action"])
        return httpx.Response(429, json={"RequestId": "r", "Code": "Throttling.User", "Message": "flow control"})

    async def send() -> list:
        async with channel.open_session(5.0, httpx.MockTransport(handler)) as session:
            return await channel.send(session, payloads)

    outcomes = asyncio.run(send())
    assert handler_calls == ["SendChatappMassMessage"]
    assert all(o.kind == "retry" and o.throttled and o.error_code == "Throttling.User" for o in outcomes)


def test_permanent_error_is_recorded_with_its_code(sqlite_db: Store) -> None:
    bad = "6591000003"
    with CHATAPP.running(CHATAPP.config(invalid_recipients=frozenset({bad}))) as (url, _sandbox):
        channel = CHATAPP.channel(url)
        phones = CHATAPP.queue(sqlite_db, channel, 6)
        result = dispatch(sqlite_db, channel)
    assert result.sent == 5 and result.failed == 1
    (row,) = sqlite_db.rows("SELECT state, error_code, attempts FROM outbox WHERE recipient_key = :key", key=phones[3])
    assert tuple(row) == ("failed", "InvalidParameter.PhoneNumberError", 1)


def test_sandbox_verifies_signature_nonce_date_and_body_hash() -> None:
    with CHATAPP.running(CHATAPP.config()) as (url, _sandbox), httpx.Client(trust_env=False) as client:
        host = url.removeprefix("http://")
        body = encode_form({"ChannelType": "whatsapp", "Type": "template", "From": "1", "To": "6591000001",
                            "TemplateName": "x", "Language": "en"})

        def post(content: bytes, **sign: Any) -> dict:
            headers = sign_request(method="POST", host=host, action="SendChatappMessage", version="2020-06-06",
                                   access_key_id=CHATAPP_KEY_ID, access_key_secret=CHATAPP_KEY_SECRET, body=body,
                                   **sign)
            headers["content-type"] = "application/x-www-form-urlencoded"
            return client.post(f"{url}/", content=content, headers=headers).json()

        assert post(body, nonce="n-1")["Code"] == "OK"
        assert post(body, nonce="n-1")["Code"] == "SignatureNonceUsed"
        assert post(body + b"&To=6591000009")["Code"] == "IncompleteSignature"  # body no longer matches its hash
        stale = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
        assert post(body, date=stale)["Code"] == "InvalidTimeStamp.Expired"
        forged = sign_request(method="POST", host=host, action="SendChatappMessage", version="2020-06-06",
                              access_key_id=CHATAPP_KEY_ID, access_key_secret=CHATAPP_KEY_SECRET, body=body)
        forged["x-acs-content-sha256"] = hashlib.sha256(b"other").hexdigest()
        assert client.post(f"{url}/", content=b"other", headers=forged).json()["Code"] == "SignatureDoesNotMatch"


def test_forged_callback_is_refused_and_a_genuine_one_parses() -> None:
    report = [{"Status": "Failed", "ErrorCode": "131026", "ErrorDescription": "131026:Receiver is incapable",
               "MsgFrameType": "template", "Type": "TEMPLATE", "TaskId": "msg-1", "From": "8613100000001",
               "To": "6591000001", "Timestamp": 1691043638000, "TemplateName": "promo_v1", "Language": "en",
               "ConversationType": "marketing", "MessageId": "2023078469463703"}]
    body = json.dumps(report).encode()
    assert not chatapp_webhooks.verify(body, {"X-Campaign-Token": "guess"}, CHATAPP_TOKEN)
    assert not chatapp_webhooks.verify(body, {}, CHATAPP_TOKEN)
    assert not chatapp_webhooks.verify(body, {"x-campaign-token": CHATAPP_TOKEN}, "")
    assert chatapp_webhooks.verify(body, {"x-campaign-token": CHATAPP_TOKEN}, CHATAPP_TOKEN)
    (receipt,), inbound = chatapp_webhooks.parse(body)
    assert inbound == []
    assert (receipt.message_id, receipt.provider_message_id, receipt.status, receipt.error_code, receipt.recipient) == (
        "msg-1", "2023078469463703", "failed", "131026", "6591000001")
    assert receipt.occurred_at.year == 2023
    unsub = json.dumps([{"Status": "unsubscribe", "From": "svc", "To": "6591000001", "Timestamp": 1691043638000,
                         "MessageId": "x"}]).encode()
    assert chatapp_webhooks.parse(unsub)[1][0].text == "UNSUBSCRIBE"
    for bad in (b"nope", b'{"Status": "Lost", "Timestamp": 1}', b"[1]", b'[{"Status": "Sent", "Timestamp": "x"}]'):
        with pytest.raises(chatapp_webhooks.MalformedPayload):
            chatapp_webhooks.parse(bad)
