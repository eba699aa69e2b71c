"""Messenger and Instagram channels through the real dispatcher against the Send API sandbox on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from pipeline.channels import messenger_webhooks
from pipeline.channels.base import Outgoing
from pipeline.channels.whatsapp_webhooks import sign
from pipeline.spec import SpecError, load_spec, parse_spec
from pipeline.store import Store
from tests.helpers.channels import Receiver, dispatch
from tests.helpers.providers import MESSENGER, MESSENGER_PAGE, MESSENGER_SECRET, MESSENGER_SPEC, set_env


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, MESSENGER.env)


def test_payload_is_the_send_api_body() -> None:
    spec = parse_spec(MESSENGER_SPEC)
    message = Outgoing(message_id="m1", to="7100000001", text="Hello", template=spec.template)
    assert MESSENGER.channel("http://g.test").build_payload(message) == {
        "recipient": {"id": "7100000001"}, "messaging_type": "UPDATE", "message": {"text": "Hello"}}
    utility = {**MESSENGER_SPEC["template"], "category": "utility"}
    tagged = MESSENGER.channel("http://g.test", template=utility,
                               provider={"options": {"message_tag": "ACCOUNT_UPDATE"}})
    assert tagged.build_payload(message)["tag"] == "ACCOUNT_UPDATE"
    assert tagged.build_payload(message)["messaging_type"] == "MESSAGE_TAG"
    with pytest.raises(SpecError, match="marketing"):
        MESSENGER.channel("http://g.test", provider={"options": {"message_tag": "ACCOUNT_UPDATE"}})
    with pytest.raises(SpecError, match="message_tag"):
        MESSENGER.channel("http://g.test", template=utility, provider={"options": {"message_tag": "SHIPPING_UPDATE"}})
    assert MESSENGER.channel("http://g.test", "instagram").url == f"http://g.test/v23.0/{MESSENGER_PAGE}/messages"


@pytest.mark.parametrize("platform", ["messenger", "instagram"])
def test_happy_path_each_psid_once_and_signed_receipts_name_our_mids(sqlite_db: Store, platform: str) -> None:
    receiver = Receiver()
    result, sandbox, psids = MESSENGER.send_all(sqlite_db, 20, config=MESSENGER.config(platform=platform),
                                                receiver=receiver, channel_args=(platform,))
    assert result.sent == 20 and result.failed == 0
    stats = sandbox.ledger.snapshot()
    assert stats["accepted"] == 20 and stats["duplicate_callback_data"] == 0
    assert sorted(m["to"] for m in stats["messages"]) == sorted(psids)
    outbox = dict(sqlite_db.rows("SELECT recipient_key, provider_message_id FROM outbox WHERE state = 'sent'"))
    by_psid = {m["to"]: m for m in stats["messages"]}
    assert all(outbox[p] == by_psid[p]["id"] for p in psids)  # the mid Meta returned is what we stored
    receipts = []
    for post in receiver.posts:
        assert messenger_webhooks.verify(post.body, post.headers, MESSENGER_SECRET)
        receipts.extend(messenger_webhooks.parse(post.body)[0])
    readers = {p for p, m in by_psid.items() if m["outcome"] == "read"}
    assert {r.provider for r in receipts} == {platform}
    reads = [r for r in receipts if r.status == "read"]
    assert {r.recipient for r in reads} == readers
    if platform == "messenger":
        delivered = [r for r in receipts if r.status == "delivered"]
        named = [r for r in delivered if not messenger_webhooks.parse_watermark(r.provider_message_id)]
        assert sorted(r.provider_message_id for r in named) == sorted(outbox.values())
        # Each delivery also carries its watermark, applied too (earlier messages it covers).
        assert len(delivered) == 2 * len(named)
        # Messenger's read event is a watermark: ingest resolves it to the PSID's earlier messages.
        for r in reads:
            psid, at = messenger_webhooks.parse_watermark(r.provider_message_id) or ("", None)
            assert psid == r.recipient and at == r.occurred_at
    else:
        assert {r.provider_message_id for r in reads} == {outbox[p] for p in readers}


def test_permanent_errors_unavailable_and_outside_window(sqlite_db: Store) -> None:
    config = MESSENGER.config(unavailable=frozenset({"7100000003"}), outside_window=frozenset({"7100000005"}))
    with MESSENGER.running(config) as (url, _):
        channel = MESSENGER.channel(url)
        MESSENGER.queue(sqlite_db, channel, 8)
        result = dispatch(sqlite_db, channel)
    assert result.sent == 6 and result.failed == 2
    rows = dict(sqlite_db.rows("SELECT recipient_key, error_code FROM outbox WHERE state = 'failed'"))
    assert rows == {"7100000003": "551/1545041", "7100000005": "10/2018278"}


def test_tagged_update_reaches_a_user_outside_the_window(sqlite_db: Store) -> None:
    overrides = {"template": {**MESSENGER_SPEC["template"], "category": "utility"},
                 "provider": {"options": {"message_tag": "POST_PURCHASE_UPDATE"}}}
    with MESSENGER.running(MESSENGER.config(outside_window=frozenset({"7100000001"}))) as (url, _):
        channel = MESSENGER.channel(url, **overrides)
        MESSENGER.queue(sqlite_db, channel, 3, **overrides)
        assert dispatch(sqlite_db, channel).sent == 3


def test_forged_webhook_is_refused_and_a_genuine_one_parses() -> None:
    doc = {"object": "page", "entry": [{"id": MESSENGER_PAGE, "time": 1750000000000, "messaging": [
        {"sender": {"id": "7100000001"}, "recipient": {"id": MESSENGER_PAGE},
         "delivery": {"mids": ["m_a", "m_b"], "watermark": 1750000000100}},
        {"sender": {"id": "7100000001"}, "recipient": {"id": MESSENGER_PAGE}, "timestamp": 1750000000200,
         "read": {"watermark": 1750000000150}},
        {"sender": {"id": "7100000002"}, "recipient": {"id": MESSENGER_PAGE}, "timestamp": 1750000000300,
         "message": {"mid": "m_in", "text": "STOP"}},
        {"sender": {"id": MESSENGER_PAGE}, "recipient": {"id": "7100000002"}, "timestamp": 1750000000400,
         "message": {"mid": "m_echo", "text": "ours", "is_echo": True}},
    ]}]}
    body = json.dumps(doc).encode()
    good = {"X-Hub-Signature-256": sign(body, MESSENGER_SECRET)}
    assert messenger_webhooks.verify(body, good, MESSENGER_SECRET)
    assert messenger_webhooks.verify(body, {k.lower(): v for k, v in good.items()}, MESSENGER_SECRET)
    assert not messenger_webhooks.verify(body + b" ", good, MESSENGER_SECRET)  # tampered body
    assert not messenger_webhooks.verify(body, {"X-Hub-Signature-256": sign(body, "guess")}, MESSENGER_SECRET)
    assert not messenger_webhooks.verify(body, {}, MESSENGER_SECRET)
    receipts, inbound = messenger_webhooks.parse(body)
    assert [(r.provider_message_id, r.status, r.message_id) for r in receipts] == [
        ("m_a", "delivered", None), ("m_b", "delivered", None),
        ("watermark:7100000001:1750000000100", "delivered", None),  # the delivery's watermark, applied too
        ("watermark:7100000001:1750000000150", "read", None)]
    assert [(i.provider, i.sender, i.text) for i in inbound] == [("messenger", "7100000002", "STOP")]
    for bad in (b"{", b'{"object": "whatsapp_business_account", "entry": []}', b'{"object": "page", "entry": [1]}',
                b'{"object": "page", "entry": [{"messaging": [{"sender": {"id": "1"}, "read": {}}]}]}'):
        with pytest.raises(messenger_webhooks.MalformedPayload):
            messenger_webhooks.parse(bad)


def test_the_sandbox_refuses_tags_outside_their_own_window_and_feedback_without_its_template(
        sqlite_db: Store) -> None:
    # 7100000001 wrote 10 days ago, 7100000002 never: HUMAN_AGENT (7 days) reaches neither; 7100000000, 2 days ago.
    ages = {"7100000000": 48.0, "7100000001": 240.0, "7100000002": None}
    overrides = {"template": {**MESSENGER_SPEC["template"], "category": "utility"},
                 "provider": {"options": {"message_tag": "HUMAN_AGENT"}}}
    with MESSENGER.running(MESSENGER.config(last_message_age_h=ages, outside_window=frozenset(ages))) as (url, _):
        channel = MESSENGER.channel(url, **overrides)
        MESSENGER.queue(sqlite_db, channel, 3, **overrides)
        assert dispatch(sqlite_db, channel).failed == 2
        # A feedback tag on a text message, as a hand-made request: Meta refuses it, so does the sandbox.
        body = {"recipient": {"id": "7100000003"}, "messaging_type": "MESSAGE_TAG", "tag": "CUSTOMER_FEEDBACK",
                "message": {"text": "How did we do?"}}
        request = channel.request_for(json.dumps(body))
        answer = httpx.post(request.url, content=request.content, headers=request.headers)
        assert answer.status_code == 400 and "Customer Feedback template" in answer.json()["error"]["message"]
    rows = dict(sqlite_db.rows("SELECT recipient_key, state FROM outbox"))
    assert rows == {"7100000000": "sent", "7100000001": "failed", "7100000002": "failed"}
    feedback = {**overrides, "provider": {"options": {"message_tag": "CUSTOMER_FEEDBACK"}}}
    with pytest.raises(SpecError, match="CUSTOMER_FEEDBACK may only carry"):
        MESSENGER.channel("http://127.0.0.1:1", **feedback)


def test_the_sample_specs_send_no_campaign_under_a_human_agent_tag() -> None:
    # HUMAN_AGENT is for replies a person types (Meta's tag reference), never for a bulk campaign.
    for path in sorted(Path("campaigns").glob("*.yaml")):
        spec = load_spec(path)
        if spec.channel in ("messenger", "instagram"):
            assert spec.provider.options.get("message_tag") != "HUMAN_AGENT", path
