"""Messenger and Instagram channels through the real dispatcher against the Send API sandbox on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import polars as pl
import pytest

from pipeline.channels import messenger_webhooks
from pipeline.channels.base import Outgoing
from pipeline.channels.messenger import MessengerChannel, from_spec, instagram_from_spec
from pipeline.channels.whatsapp_webhooks import sign
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.outbox import enqueue_messages, register_campaign
from pipeline.sandbox.common import RecordingReceiver
from pipeline.sandbox.messenger import MessengerSandbox, MessengerSandboxConfig, create_messenger_app
from pipeline.servers import serve_in_thread
from pipeline.spec import RateSpec, RetrySpec, SpecError, parse_spec

PAGE, TOKEN, SECRET = "104857600001", "page-token", "app-secret"
SPEC: dict[str, Any] = {
    "name": "t", "audience": "x.csv", "channel": "messenger", "sender": PAGE,
    "template": {"name": "spring_sale", "language": "en", "category": "marketing", "text": "Hi {{ n }}"},
    "variables": {"n": "first_name"},
}
RETRY = RetrySpec(max_attempts=20, base_delay_s=0.02, max_delay_s=0.3, deadline_s=30)


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSENGER_PAGE_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("INSTAGRAM_ACCESS_TOKEN", TOKEN)


def _config(**overrides: Any) -> MessengerSandboxConfig:
    values: dict[str, Any] = dict(access_token=TOKEN, app_secret=SECRET, fail_rate=0.0, read_rate=0.5,
                                  webhook_delay_s=(0.0, 0.02), webhook_retry_base_s=0.05, seed=5)
    values.update(overrides)
    return MessengerSandboxConfig(**values)


@contextmanager
def running(config: MessengerSandboxConfig, receiver: RecordingReceiver | None = None
            ) -> Iterator[tuple[str, MessengerSandbox]]:
    if receiver is None:
        app = create_messenger_app(config)
        with serve_in_thread(app) as url:
            yield url, app.state.sandbox
        return
    with serve_in_thread(receiver.app) as hook:
        app = create_messenger_app(config.model_copy(update={"webhook_url": f"{hook}/webhooks/messenger"}))
        with serve_in_thread(app) as url:
            yield url, app.state.sandbox


def _channel(url: str, platform: str = "messenger", **spec_overrides: Any) -> MessengerChannel:
    spec = parse_spec({**SPEC, "channel": platform, **spec_overrides})
    return (from_spec if platform == "messenger" else instagram_from_spec)(spec, url)


def _queue(con, channel: MessengerChannel, n: int, **spec_overrides: Any) -> list[str]:
    # The recipient column is phone_e164 for now: it carries the PSID (the lead generalises it).
    psids = [f"71000{i:05d}" for i in range(n)]
    frame = pl.DataFrame({
        "row_number": list(range(2, n + 2)), "phone_e164": psids, "region": [None] * n,
        "number_type": [None] * n, "text": [f"Hi n{i}, 20% off this week" for i in range(n)],
        "params_json": ["{}"] * n,
    }, schema_overrides={"region": pl.String, "number_type": pl.String})
    spec = parse_spec({**SPEC, "channel": channel.name, **spec_overrides})
    register_campaign(con, spec, "t")
    enqueue_messages(con, spec, "t", channel, frame)
    return psids


def _run(con, channel: MessengerChannel, rate: float = 1000, concurrency: int = 4):
    return asyncio.run(dispatch_campaign(con, "t", channel, rate=RateSpec(max_per_second=rate, concurrency=concurrency),
                                         retry=RETRY, timeout_s=5))


def _drain(url: str) -> None:
    with httpx.Client(trust_env=False) as client:
        result = client.post(f"{url}/_sandbox/drain", params={"timeout": 10}, timeout=15).json()
    assert result["drained"], result


def test_payload_is_the_send_api_body() -> None:
    spec = parse_spec(SPEC)
    message = Outgoing(message_id="m1", to="7100000001", text="Hello", template=spec.template)
    assert _channel("http://g.test").build_payload(message) == {
        "recipient": {"id": "7100000001"}, "messaging_type": "UPDATE", "message": {"text": "Hello"}}
    utility = {**SPEC["template"], "category": "utility"}
    tagged = _channel("http://g.test", template=utility, provider={"options": {"message_tag": "ACCOUNT_UPDATE"}})
    assert tagged.build_payload(message)["tag"] == "ACCOUNT_UPDATE"
    assert tagged.build_payload(message)["messaging_type"] == "MESSAGE_TAG"
    with pytest.raises(SpecError, match="marketing"):
        _channel("http://g.test", provider={"options": {"message_tag": "ACCOUNT_UPDATE"}})
    with pytest.raises(SpecError, match="message_tag"):
        _channel("http://g.test", template=utility, provider={"options": {"message_tag": "SHIPPING_UPDATE"}})
    assert _channel("http://g.test", "instagram").url == f"http://g.test/v23.0/{PAGE}/messages"


@pytest.mark.parametrize("platform", ["messenger", "instagram"])
def test_happy_path_each_psid_once_and_signed_receipts_name_our_mids(con, platform: str) -> None:
    receiver = RecordingReceiver()
    with running(_config(platform=platform), receiver) as (url, sandbox):
        channel = _channel(url, platform)
        psids = _queue(con, channel, 20)
        result = _run(con, channel)
        assert result.sent == 20 and result.failed == 0
        _drain(url)
    stats = sandbox.ledger.snapshot()
    assert stats["accepted"] == 20 and stats["duplicate_callback_data"] == 0
    assert sorted(m["to"] for m in stats["messages"]) == sorted(psids)
    outbox = dict(con.execute("SELECT recipient_key, provider_message_id FROM outbox WHERE state = 'sent'").fetchall())
    by_psid = {m["to"]: m for m in stats["messages"]}
    assert all(outbox[p] == by_psid[p]["id"] for p in psids)  # the mid Meta returned is what we stored
    receipts = []
    for body, headers in receiver.snapshot():
        assert messenger_webhooks.verify(body, headers, SECRET)
        receipts.extend(messenger_webhooks.parse(body)[0])
    readers = {p for p, m in by_psid.items() if m["outcome"] == "read"}
    assert {r.provider for r in receipts} == {platform}
    reads = [r for r in receipts if r.status == "read"]
    assert {r.recipient for r in reads} == readers
    if platform == "messenger":
        delivered = [r for r in receipts if r.status == "delivered"]
        assert sorted(r.provider_message_id for r in delivered) == sorted(outbox.values())
        # Messenger's read event is a watermark: ingest resolves it to the PSID's earlier messages.
        for r in reads:
            psid, at = messenger_webhooks.parse_watermark(r.provider_message_id) or ("", None)
            assert psid == r.recipient and at == r.occurred_at
    else:
        assert {r.provider_message_id for r in reads} == {outbox[p] for p in readers}


def test_rate_limit_answer_is_throttling_not_failure(con) -> None:
    with running(_config(throughput_per_s=20)) as (url, sandbox):
        channel = _channel(url)
        _queue(con, channel, 30)
        result = _run(con, channel, rate=300)
    assert result.sent == 30 and result.failed == 0 and result.throttled > 0
    stats = sandbox.ledger.snapshot()
    assert stats["rejected"]["613"] == stats["throttled"] > 0 and stats["accepted"] == 30


def test_permanent_errors_unavailable_and_outside_window(con) -> None:
    with running(_config(unavailable=frozenset({"7100000003"}), outside_window=frozenset({"7100000005"}))) as (url, _):
        channel = _channel(url)
        _queue(con, channel, 8)
        result = _run(con, channel)
    assert result.sent == 6 and result.failed == 2
    rows = dict(con.execute("SELECT recipient_key, error_code FROM outbox WHERE state = 'failed'").fetchall())
    assert rows == {"7100000003": "551/1545041", "7100000005": "10/2018278"}


def test_tagged_update_reaches_a_user_outside_the_window(con) -> None:
    overrides = {"template": {**SPEC["template"], "category": "utility"},
                 "provider": {"options": {"message_tag": "POST_PURCHASE_UPDATE"}}}
    with running(_config(outside_window=frozenset({"7100000001"}))) as (url, _):
        channel = _channel(url, **overrides)
        _queue(con, channel, 3, **overrides)
        assert _run(con, channel).sent == 3


def test_invalid_token_stops_the_channel(con) -> None:
    with running(_config(access_token="other")) as (url, _):
        channel = _channel(url)
        _queue(con, channel, 5)
        result = _run(con, channel, concurrency=1)
    assert result.stopped_reason and result.stopped_reason.startswith("190")
    assert con.execute("SELECT count(*) FROM outbox WHERE state = 'queued'").fetchone()[0] == 5


def test_malformed_provider_response_is_not_counted_as_sent(con) -> None:
    with running(_config(malformed=True)) as (url, _):
        channel = _channel(url)
        _queue(con, channel, 3)
        result = _run(con, channel)
    assert result.sent == 0 and result.failed == 3
    assert con.execute("SELECT DISTINCT error_code FROM outbox").fetchall() == [("http_200",)]


def test_forged_webhook_is_refused_and_a_genuine_one_parses() -> None:
    doc = {"object": "page", "entry": [{"id": PAGE, "time": 1750000000000, "messaging": [
        {"sender": {"id": "7100000001"}, "recipient": {"id": PAGE},
         "delivery": {"mids": ["m_a", "m_b"], "watermark": 1750000000100}},
        {"sender": {"id": "7100000001"}, "recipient": {"id": PAGE}, "timestamp": 1750000000200,
         "read": {"watermark": 1750000000150}},
        {"sender": {"id": "7100000002"}, "recipient": {"id": PAGE}, "timestamp": 1750000000300,
         "message": {"mid": "m_in", "text": "STOP"}},
        {"sender": {"id": PAGE}, "recipient": {"id": "7100000002"}, "timestamp": 1750000000400,
         "message": {"mid": "m_echo", "text": "ours", "is_echo": True}},
    ]}]}
    body = json.dumps(doc).encode()
    good = {"X-Hub-Signature-256": sign(body, SECRET)}
    assert messenger_webhooks.verify(body, good, SECRET)
    assert messenger_webhooks.verify(body, {k.lower(): v for k, v in good.items()}, SECRET)
    assert not messenger_webhooks.verify(body + b" ", good, SECRET)  # tampered body
    assert not messenger_webhooks.verify(body, {"X-Hub-Signature-256": sign(body, "guess")}, SECRET)
    assert not messenger_webhooks.verify(body, {}, SECRET)
    receipts, inbound = messenger_webhooks.parse(body)
    assert [(r.provider_message_id, r.status, r.message_id) for r in receipts] == [
        ("m_a", "delivered", None), ("m_b", "delivered", None), ("watermark:7100000001:1750000000150", "read", None)]
    assert [(i.provider, i.sender, i.text) for i in inbound] == [("messenger", "7100000002", "STOP")]
    for bad in (b"{", b'{"object": "whatsapp_business_account", "entry": []}', b'{"object": "page", "entry": [1]}',
                b'{"object": "page", "entry": [{"messaging": [{"sender": {"id": "1"}, "read": {}}]}]}'):
        with pytest.raises(messenger_webhooks.MalformedPayload):
            messenger_webhooks.parse(bad)
