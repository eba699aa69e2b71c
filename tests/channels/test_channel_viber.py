"""The Viber channel through the real dispatcher against the Viber bot API sandbox on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import polars as pl
import pytest

from pipeline.channels import viber_webhooks
from pipeline.channels.base import Outgoing
from pipeline.channels.viber import ViberChannel, from_spec
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.outbox import enqueue_messages, register_campaign
from pipeline.sandbox.common import RecordingReceiver
from pipeline.sandbox.viber import ViberSandbox, ViberSandboxConfig, create_viber_app
from pipeline.servers import serve_in_thread
from pipeline.spec import RateSpec, RetrySpec, SpecError, parse_spec

TOKEN = "445da6az1s345z78-dazcczb2542zv51a-e0vc5fva17480im9"
SPEC: dict[str, Any] = {
    "name": "t", "audience": "x.csv", "channel": "viber", "sender": "Shop",
    "template": {"name": "spring_sale", "language": "en", "category": "marketing", "text": "Hi {{ n }}"},
    "variables": {"n": "first_name"},
    "provider": {"options": {"sender_name": "Example Shop"}},
}
RETRY = RetrySpec(max_attempts=20, base_delay_s=0.02, max_delay_s=0.3, deadline_s=30)


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIBER_AUTH_TOKEN", TOKEN)


def _config(**overrides: Any) -> ViberSandboxConfig:
    values: dict[str, Any] = dict(auth_token=TOKEN, fail_rate=0.2, read_rate=0.5, webhook_delay_s=(0.0, 0.02),
                                  webhook_retry_base_s=0.05, seed=11)
    values.update(overrides)
    return ViberSandboxConfig(**values)


@contextmanager
def running(config: ViberSandboxConfig, receiver: RecordingReceiver | None = None
            ) -> Iterator[tuple[str, ViberSandbox]]:
    if receiver is None:
        app = create_viber_app(config)
        with serve_in_thread(app) as url:
            yield url, app.state.sandbox
        return
    with serve_in_thread(receiver.app) as hook:
        app = create_viber_app(config.model_copy(update={"webhook_url": f"{hook}/webhooks/viber"}))
        with serve_in_thread(app) as url:
            yield url, app.state.sandbox


def _channel(url: str, **spec_overrides: Any) -> ViberChannel:
    return from_spec(parse_spec({**SPEC, **spec_overrides}), url)


def _queue(con, channel: ViberChannel, n: int) -> list[str]:
    users = [f"01234567890A{i:03d}=" for i in range(n)]  # Viber user ids, in the recipient column
    frame = pl.DataFrame({
        "row_number": list(range(2, n + 2)), "phone_e164": users, "region": ["UA"] * n,
        "number_type": ["mobile"] * n, "text": [f"Hi n{i}" for i in range(n)], "params_json": ["{}"] * n,
    })
    spec = parse_spec(SPEC)
    register_campaign(con, spec, "t")
    enqueue_messages(con, spec, "t", channel, frame)
    return users


def _run(con, channel: ViberChannel, rate: float = 1000, concurrency: int = 4):
    return asyncio.run(dispatch_campaign(con, "t", channel, rate=RateSpec(max_per_second=rate, concurrency=concurrency),
                                         retry=RETRY, timeout_s=5))


def _drain(url: str) -> None:
    with httpx.Client(trust_env=False) as client:
        result = client.post(f"{url}/_sandbox/drain", params={"timeout": 10}, timeout=15).json()
    assert result["drained"], result


def test_payload_carries_tracking_data_and_the_message_class() -> None:
    channel = _channel("http://v.test")
    spec = parse_spec(SPEC)
    payload = channel.build_payload(Outgoing(message_id="m-1", to="u1=", text="Hello", template=spec.template))
    assert payload == {"receiver": "u1=", "sender": {"name": "Example Shop"}, "tracking_data": "m-1",
                       "type": "text", "text": "Hello", "_label": "promotional"}
    wire = json.loads(channel.request_for(json.dumps(payload)).content)
    assert "_label" not in wire and wire["tracking_data"] == "m-1"
    utility = parse_spec({**SPEC, "template": {**SPEC["template"], "category": "utility"}}).template
    assert channel.build_payload(Outgoing(message_id="m", to="u", text="x", template=utility))["_label"] == (
        "transactional")
    with pytest.raises(SpecError, match="sender_name"):
        _channel("http://v.test", provider={"options": {"sender_name": "x" * 29}})


def test_happy_path_tracking_data_is_our_id_and_signed_callbacks_name_our_tokens(con) -> None:
    receiver = RecordingReceiver()
    with running(_config(), receiver) as (url, sandbox):
        channel = _channel(url)
        _queue(con, channel, 20)
        result = _run(con, channel)
        assert result.sent == 20 and result.failed == 0
        _drain(url)
    stats = sandbox.ledger.snapshot()
    outbox = dict(con.execute("SELECT message_id, provider_message_id FROM outbox WHERE state = 'sent'").fetchall())
    assert stats["accepted"] == 20 and stats["duplicate_callback_data"] == 0
    assert sorted(m["correlation_id"] for m in stats["messages"]) == sorted(outbox)
    assert all(outbox[m["correlation_id"]] == m["id"] for m in stats["messages"])
    receipts = []
    for body, headers in receiver.snapshot():
        assert viber_webhooks.verify(body, headers, TOKEN)
        receipts.extend(viber_webhooks.parse(body)[0])
    tokens = set(outbox.values())
    assert {r.provider_message_id for r in receipts} == tokens and all(r.message_id is None for r in receipts)
    fates = {m["id"]: m["outcome"] for m in stats["messages"]}
    failed = {r.provider_message_id for r in receipts if r.status == "failed"}
    assert failed == {t for t, f in fates.items() if f == "failed"} and failed  # seed 11 fails some
    assert all(r.error_title for r in receipts if r.status == "failed")
    read = {r.provider_message_id for r in receipts if r.status == "read"}
    assert read == {t for t, f in fates.items() if f == "read"}


def test_rate_limit_status_12_is_throttling_not_failure(con) -> None:
    with running(_config(throughput_per_s=20)) as (url, sandbox):
        channel = _channel(url)
        _queue(con, channel, 30)
        result = _run(con, channel, rate=300)
    assert result.sent == 30 and result.failed == 0 and result.throttled > 0
    stats = sandbox.ledger.snapshot()
    assert stats["rejected"]["12"] == stats["throttled"] > 0 and stats["accepted"] == 30


def test_permanent_error_in_a_200_body_is_recorded_with_its_status(con) -> None:
    with running(_config(not_subscribed=frozenset({"01234567890A003="}))) as (url, _):
        channel = _channel(url)
        users = _queue(con, channel, 6)
        result = _run(con, channel)
    assert result.sent == 5 and result.failed == 1
    sql = "SELECT state, error_code, error_detail FROM outbox WHERE recipient_key = ?"
    row = con.execute(sql, [users[3]]).fetchone()
    assert row == ("failed", "6", "receiverNotSubscribed")


def test_invalid_auth_token_stops_the_channel(con) -> None:
    with running(_config(auth_token="another-bot")) as (url, _):
        channel = _channel(url)
        _queue(con, channel, 5)
        result = _run(con, channel, concurrency=1)
    assert result.stopped_reason and result.stopped_reason.startswith("2:")
    assert con.execute("SELECT count(*) FROM outbox WHERE state = 'queued'").fetchone()[0] == 5


def test_malformed_provider_response_is_not_counted_as_sent(con) -> None:
    with running(_config(malformed=True)) as (url, _):
        channel = _channel(url)
        _queue(con, channel, 3)
        result = _run(con, channel)
    assert result.sent == 0 and result.failed == 3
    assert con.execute("SELECT DISTINCT error_code FROM outbox").fetchall() == [("http_200",)]


def test_unsubscribe_arrives_as_a_signed_inbound() -> None:
    receiver = RecordingReceiver()
    with running(_config(), receiver) as (url, _), httpx.Client(trust_env=False) as client:
        assert client.post(f"{url}/_sandbox/inbound", json={"from": "u9=", "event": "unsubscribed"}).status_code == 200
        _drain(url)
    ((body, headers),) = receiver.snapshot()
    assert viber_webhooks.verify(body, headers, TOKEN)
    receipts, inbound = viber_webhooks.parse(body)
    assert receipts == [] and [(i.sender, i.text) for i in inbound] == [("u9=", "UNSUBSCRIBE")]


def test_forged_callback_is_refused_and_a_genuine_one_parses() -> None:
    body = json.dumps({"event": "failed", "timestamp": 1457764197627, "message_token": 4912661846655238145,
                       "user_id": "01234567890A=", "desc": "failure description"}).encode()
    signature = viber_webhooks.sign(body, TOKEN)
    assert viber_webhooks.verify(body, {"X-Viber-Content-Signature": signature}, TOKEN)
    assert not viber_webhooks.verify(body, {"X-Viber-Content-Signature": "sha256=" + signature}, TOKEN)
    assert not viber_webhooks.verify(body.replace(b"failed", b"seen"), {"x-viber-content-signature": signature}, TOKEN)
    assert not viber_webhooks.verify(body, {"X-Viber-Content-Signature": viber_webhooks.sign(body, "x")}, TOKEN)
    assert not viber_webhooks.verify(body, {}, TOKEN)
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
