"""Twilio-style SMS through the real dispatcher against the Twilio sandbox on loopback: sends, throttling,
refusals, a malformed answer, and signed status callbacks (forged ones refused)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from pipeline.channels import twilio_webhooks as tw
from pipeline.channels.twilio_sms import TwilioSmsChannel, callback_url, from_spec
from pipeline.sandbox.twilio import TwilioSandboxConfig, create_twilio_app
from pipeline.servers import serve_in_thread
from pipeline.spec import parse_spec
from pipeline.store import Store
from tests.helpers.channels import Receiver, dispatch, drain, queue, serving, states

SID, TOKEN = "AC" + "a1" * 16, "twilio-test-token"


@contextmanager
def stack(**overrides: Any) -> Iterator[tuple[str, str, Receiver, Any]]:
    """(sandbox URL, receiver URL, receiver, sandbox state), all on loopback."""
    receiver = Receiver()
    with serve_in_thread(receiver.app) as receiver_url:
        settings: dict[str, Any] = {"account_sid": SID, "auth_token": TOKEN, "refuse_rate": 0.0, "fail_rate": 0.0,
                                    "webhook_delay_s": (0.0, 0.02), **overrides}
        if settings.pop("inbound", False):
            settings["inbound_url"] = receiver_url + "/webhooks/twilio"
        with serving(create_twilio_app, TwilioSandboxConfig(**settings)) as (sandbox_url, sandbox):
            yield sandbox_url, receiver_url, receiver, sandbox


def _spec(status_callback: str | None) -> Any:
    options: dict[str, Any] = {"sender_ids": {"GB": "Acme"}}
    if status_callback:
        options["status_callback"] = status_callback
    return parse_spec({
        "name": "sms-t", "audience": "x.csv", "channel": "sms", "sender": "+15550001111",
        "template": {"name": "promo", "language": "en", "category": "marketing", "text": "Hi {{ n }}"},
        "provider": {"options": options},
    })


def _queue(db: Store, channel: TwilioSmsChannel, spec: Any, phones: list[str]) -> None:
    queue(db, spec, channel, phones, regions=["US" if p.startswith("+1") else "GB" for p in phones],
          texts=[f"Hi n{i} €" for i in range(len(phones))])


def _phones(n: int) -> list[str]:
    return [f"+4477009{i:05d}" if i % 4 else f"+1415555{i:04d}" for i in range(n)]


def _channel(monkeypatch, sandbox_url: str, receiver_url: str | None, token: str = TOKEN):
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", token)
    spec = _spec(receiver_url + "/webhooks/twilio?campaign=t" if receiver_url else None)
    return from_spec(spec, sandbox_url), spec


def test_happy_path_sends_each_once_and_callbacks_verify_and_correlate(sqlite_db: Store, monkeypatch):
    with stack() as (sandbox_url, receiver_url, receiver, sandbox):
        channel, spec = _channel(monkeypatch, sandbox_url, receiver_url)
        phones = _phones(12)
        _queue(sqlite_db, channel, spec, phones)
        result = dispatch(sqlite_db, channel)
        assert result.sent == 12 and result.failed == 0
        stats = httpx.get(f"{sandbox_url}/_sandbox/stats").json()
        assert stats["accepted"] == 12 and stats["duplicate_callback_data"] == 0 and stats["rejected"] == {}
        outbox = dict(sqlite_db.rows("SELECT message_id, provider_message_id FROM outbox"))
        assert sorted(m["correlation_id"] for m in stats["messages"]) == sorted(outbox)
        assert all(pid.startswith("SM") and len(pid) == 34 for pid in outbox.values())
        froms = {m["to"]: m["from"] for m in stats["messages"]}
        assert all(froms[p] == ("+15550001111" if p.startswith("+1") else "Acme") for p in phones)
        # "€" is a GSM-7 extension character: still one segment for these short texts.
        assert {m["segments"] for m in stats["messages"]} == {1}
        drain(sandbox_url)

    receipts = []
    for post in receiver.posts:
        assert "campaign=t" in post.url  # the callback's own query survives next to our mid
        assert tw.verify(post.body, post.headers, TOKEN, post.url)
        receipts += tw.parse(tw.spool_body(post.body, post.url))[0]
    assert len(receipts) == 24  # sent + delivered for each message
    by_message: dict[str, set[str]] = {}
    for r in receipts:
        assert r.provider == "twilio" and outbox[r.message_id] == r.provider_message_id
        by_message.setdefault(r.message_id, set()).add(r.status)
    assert set(by_message) == set(outbox) and all(s == {"sent", "delivered"} for s in by_message.values())


def test_rate_limit_answers_are_throttled_retries_and_everything_is_sent_once(sqlite_db: Store, monkeypatch):
    with stack(throughput_per_s=20.0) as (sandbox_url, _, _, sandbox):
        channel, spec = _channel(monkeypatch, sandbox_url, None)
        _queue(sqlite_db, channel, spec, _phones(30))
        result = dispatch(sqlite_db, channel, rate=500)
        stats = sandbox.tally.snapshot(None)
    assert result.sent == 30 and result.failed == 0 and result.throttled > 0
    assert stats["throttled"] == stats["rejected"]["20429"] > 0
    assert stats["accepted"] == 30 and stats["duplicate_callback_data"] == 0


def test_refusals_are_permanent_with_twilio_codes_and_the_rest_is_sent(sqlite_db: Store, monkeypatch):
    with stack(refuse_rate=0.35, seed=7) as (sandbox_url, _, _, sandbox):
        channel, spec = _channel(monkeypatch, sandbox_url, None)
        phones = _phones(20)
        expected = {p: sandbox.config.outcome(p).refusal for p in phones}
        assert any(expected.values()) and not all(expected.values())  # the seed gives a mix
        _queue(sqlite_db, channel, spec, phones)
        result = dispatch(sqlite_db, channel)
    refused = {p: c for p, c in expected.items() if c}
    assert result.failed == len(refused) and result.sent == 20 - len(refused)
    rows = dict(sqlite_db.rows("SELECT recipient_key, error_code FROM outbox WHERE state = 'failed'"))
    assert rows == {p: str(c) for p, c in refused.items()}
    assert set(rows.values()) <= {"21610", "21635", "21408"}


def test_bad_credentials_stop_the_channel_with_everything_still_queued(sqlite_db: Store, monkeypatch):
    with stack() as (sandbox_url, _, _, sandbox):
        channel, spec = _channel(monkeypatch, sandbox_url, None, token="wrong")
        _queue(sqlite_db, channel, spec, _phones(6))
        result = dispatch(sqlite_db, channel, concurrency=1)
    assert result.stopped_reason and result.stopped_reason.startswith("20003")
    assert states(sqlite_db) == {"queued": 6}
    assert sandbox.tally.accepted == 0


def test_malformed_answers_are_never_counted_as_sent(sqlite_db: Store, monkeypatch):
    channel, spec = _channel(monkeypatch, "http://twilio.test", None)
    _queue(sqlite_db, channel, spec, _phones(4))
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        return httpx.Response(201, content=b"<html>gateway says hi</html>")

    result = dispatch(sqlite_db, channel, transport=httpx.MockTransport(handler))
    assert result.sent == 0 and result.failed == 4 and calls["n"] == 4  # not retried: it may have gone out
    assert [tuple(r) for r in sqlite_db.rows("SELECT DISTINCT error_code FROM outbox")] == [("http_201",)]
    # A 502 without Twilio's body is Twilio's trouble: retried, not permanent.
    outcome = channel.classify_response(502, b"Bad Gateway", {})
    assert outcome.kind == "retry" and outcome.error_detail == "malformed provider response"


def test_classification_of_twilio_error_codes():
    channel = TwilioSmsChannel(base_url="http://x", account_sid=SID, auth_token=TOKEN, sender="+15550001111")

    def kind(code: int, status: int = 400) -> tuple[str, bool]:
        body = json.dumps({"code": code, "message": "m", "more_info": "", "status": status}).encode()
        outcome = channel.classify_response(status, body, {"retry-after": "2"})
        return outcome.kind, outcome.throttled

    assert kind(20429, 429) == ("retry", True)
    assert kind(20003, 401) == ("stop", False)
    for code in (21211, 21610, 21408, 21635):
        assert kind(code) == ("permanent", False)
    assert kind(20500, 500) == ("retry", False)


def test_14107_pair_limit_waits_for_that_recipient_only():
    # More than 30 messages between the same two numbers within 30 s fail for 30 s: only that
    # message waits, the sender's rate is left alone (a 429 status included).
    channel = TwilioSmsChannel(base_url="http://x", account_sid=SID, auth_token=TOKEN, sender="+15550001111")
    for status, headers in ((400, {}), (429, {"retry-after": "2"})):
        body = json.dumps({"code": 14107, "message": "pair limit", "status": status}).encode()
        outcome = channel.classify_response(status, body, headers)
        assert (outcome.kind, outcome.throttled, outcome.error_code) == ("retry", False, "14107")
        assert outcome.retry_after_s == 30.0


def test_status_callback_signature_forged_or_tampered_is_refused():
    # Twilio's published example (auth token 12345).
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
              "From": "+14158675309", "To": "+18005551212"}
    assert tw.sign(url, params, "12345") == "RSOYDt4T1cUTdK1PDd93/VVr8B8="

    callback = callback_url("http://127.0.0.1:9/webhooks/twilio", "msg-1")
    form = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "undelivered", "ErrorCode": "30003",
            "To": "+447700900001", "AccountSid": SID}
    body = httpx.QueryParams(form).__str__().encode()
    good = {"X-Twilio-Signature": tw.sign(callback, form, TOKEN)}
    assert tw.verify(body, good, TOKEN, callback)
    assert not tw.verify(body, {"X-Twilio-Signature": tw.sign(callback, form, "forger")}, TOKEN, callback)
    assert not tw.verify(body.replace(b"undelivered", b"delivered"), good, TOKEN, callback)
    assert not tw.verify(body, good, TOKEN, callback.replace("msg-1", "msg-2"))  # the URL is signed too
    assert not tw.verify(body, {}, TOKEN, callback) and not tw.verify(body, good, TOKEN, None)

    (receipt,), inbound = tw.parse(body, url=callback)
    assert inbound == [] and receipt.message_id == "msg-1" and receipt.status == "failed"
    assert receipt.error_code == "30003" and receipt.recipient == "+447700900001"
    assert tw.parse(b"MessageSid=SM1&MessageStatus=queued") == ([], [])
    with pytest.raises(ValueError):
        tw.parse(b"MessageSid=SM1&MessageStatus=exploded")
    with pytest.raises(ValueError):
        tw.parse(b"\xff\xfe")


def test_stop_reply_arrives_as_inbound_and_later_sends_are_refused_21610(sqlite_db: Store, monkeypatch):
    with stack(stop_rate=1.0, inbound=True) as (sandbox_url, receiver_url, receiver, sandbox):
        channel, spec = _channel(monkeypatch, sandbox_url, receiver_url)
        _queue(sqlite_db, channel, spec, ["+447700900123"])
        assert dispatch(sqlite_db, channel).sent == 1
        drain(sandbox_url)
        inbound = [m for post in receiver.posts if tw.verify(post.body, post.headers, TOKEN, post.url)
                   for m in tw.parse(tw.spool_body(post.body, post.url))[1]]
        assert [(m.sender, m.text) for m in inbound] == [("+447700900123", "STOP")]
        assert json.loads(inbound[0].raw_json)["id"].startswith("SM")
        again = httpx.post(f"{sandbox_url}/2010-04-01/Accounts/{SID}/Messages.json", auth=(SID, TOKEN),
                           data={"To": "+447700900123", "From": "+15550001111", "Body": "hi"})
        assert again.status_code == 400 and again.json()["code"] == 21610
