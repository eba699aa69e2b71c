"""Alibaba-style SMS through the real dispatcher and in batches against the dysmsapi sandbox on loopback:
signed SendBatchSms calls, throttling, illegal numbers, malformed answers, and SmsReport receipts."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
import pytest

from pipeline.channels import alibaba_sms_webhooks as ali
from pipeline.channels.alibaba_rpc import encode_form
from pipeline.channels.alibaba_sms import AlibabaSmsChannel, alibaba_segments
from pipeline.receipts.links import link_alibaba
from pipeline.records import Receipt
from pipeline.store import Store, run_many
from tests.helpers.alibaba_sms import (
    REPORT_TOKEN,
    alibaba_channel,
    outbox_payloads,
    queue_sms,
    send_batch,
    sms_phones,
    stack,
)
from tests.helpers.channels import dispatch, drain, states


def _store_receipts(db: Store, receipts: list[Receipt]) -> None:
    now = datetime.now(UTC)
    with db.write() as conn:
        run_many(conn, "INSERT INTO events (event_id, provider, provider_message_id, message_id, status, error_code,"
                       " recipient, occurred_at, received_at, raw_json) VALUES (:e, :provider, :pid, :m, :status,"
                       " :code, :recipient, :at, :received, :raw)",
                 [{"e": f"e{i}", "provider": r.provider, "pid": r.provider_message_id, "m": r.message_id,
                   "status": r.status, "code": r.error_code, "recipient": r.recipient, "at": r.occurred_at,
                   "received": now, "raw": r.raw_json} for i, r in enumerate(receipts)])


def test_happy_path_through_the_dispatcher_and_reports_find_their_messages(db: Store, monkeypatch):
    # On both backends: the end of it is the store linking receipts that lost their BizId (link_alibaba's SQL).
    with stack(answers=[500]) as (sandbox_url, receiver, sandbox):  # the first push is refused, then retried
        channel, spec = alibaba_channel(monkeypatch, sandbox_url)
        queue_sms(db, channel, spec, sms_phones(9))
        result = dispatch(db, channel)
        assert result.sent == 9 and result.failed == 0
        stats = httpx.get(f"{sandbox_url}/_sandbox/stats").json()
        drain(sandbox_url)
    outbox = dict(db.rows("SELECT message_id, provider_message_id FROM outbox"))
    assert stats["accepted"] == 9 and stats["duplicate_callback_data"] == 0 and stats["rejected"] == {}
    # Each call's OutId is the id of its first message, and the call's BizId is on each of its messages.
    assert {m["correlation_id"] for m in stats["messages"]} <= set(outbox)
    by_phone = {pid.split(":")[1]: pid.split(":")[0] for pid in outbox.values()}
    assert {m["to"]: m["id"] for m in stats["messages"]} == by_phone
    sent_params = {m["to"]: m["template_param"] for m in stats["messages"]}
    assert sent_params["447700900001"] == {"name": "n1"}
    assert all(pid.split(":")[1].isdigit() and "^" in pid for pid in outbox.values())

    receipts = []
    for post in receiver.posts:
        assert ali.verify(post.body, post.headers, REPORT_TOKEN)
        receipts += ali.parse(post.body)[0]
    assert len(receipts) == 9 and {r.status for r in receipts} == {"delivered"}
    assert {r.provider_message_id for r in receipts} == set(outbox.values())
    # As after a crash: one message's BizId never reached the outbox; out_id + phone still find it.
    lost = next(iter(outbox))
    db.execute("UPDATE outbox SET provider_message_id = NULL WHERE message_id = :m", m=lost)
    _store_receipts(db, receipts)
    assert link_alibaba(db) == 9
    assert db.scalar("SELECT count(*) FROM events WHERE message_id = :m", m=lost) == 1
    linked = db.rows("SELECT message_id, provider_message_id FROM events")
    assert {(mid, pid) for mid, pid in linked} == set(outbox.items())


def test_a_batch_of_150_goes_as_two_signed_calls_with_one_outid_each(sqlite_db: Store, monkeypatch):
    with stack(webhook_url=None) as (sandbox_url, _, sandbox):
        channel, spec = alibaba_channel(monkeypatch, sandbox_url)
        queue_sms(sqlite_db, channel, spec, sms_phones(150))
        payloads = outbox_payloads(sqlite_db)
        outcomes = asyncio.run(send_batch(channel, payloads))
    assert [o.kind for o in outcomes] == ["sent"] * 150 and sandbox.calls == 2
    assert sandbox.tally.accepted == 150 and sandbox.tally.duplicate_callback_data == 0
    first_ids = {json.loads(payloads[0])["out_id"], json.loads(payloads[100])["out_id"]}
    assert {m["correlation_id"] for m in sandbox.tally.messages} == first_ids
    biz_ids = [o.provider_message_id.split(":")[0] for o in outcomes]
    assert len(set(biz_ids[:100])) == 1 and len(set(biz_ids[100:])) == 1 and biz_ids[0] != biz_ids[100]


def test_an_illegal_number_in_a_batch_fails_alone_and_the_rest_is_sent(sqlite_db: Store, monkeypatch):
    with stack(webhook_url=None, illegal_rate=0.2, seed=3) as (sandbox_url, _, sandbox):
        channel, spec = alibaba_channel(monkeypatch, sandbox_url)
        phones = sms_phones(12)
        illegal = {p for p in phones if sandbox.config.outcome(p.lstrip("+"))[0] == "illegal"}
        assert 0 < len(illegal) < 12
        queue_sms(sqlite_db, channel, spec, phones)
        outcomes = asyncio.run(send_batch(channel, outbox_payloads(sqlite_db)))
    kinds = {p: (o.kind, o.error_code) for p, o in zip(phones, outcomes, strict=True)}
    assert {p for p, k in kinds.items() if k == ("permanent", "isv.MOBILE_NUMBER_ILLEGAL")} == illegal
    assert all(k[0] == "sent" for p, k in kinds.items() if p not in illegal)
    assert sandbox.tally.accepted == 12 - len(illegal) and sandbox.tally.duplicate_callback_data == 0


def test_permanent_error_through_the_dispatcher(sqlite_db: Store, monkeypatch):
    with stack(webhook_url=None, illegal_rate=0.3, seed=5) as (sandbox_url, _, sandbox):
        channel, spec = alibaba_channel(monkeypatch, sandbox_url)
        phones = sms_phones(10)
        illegal = {p for p in phones if sandbox.config.outcome(p.lstrip("+"))[0] == "illegal"}
        assert illegal
        queue_sms(sqlite_db, channel, spec, phones)
        result = dispatch(sqlite_db, channel)
    assert result.failed == len(illegal) and result.sent == 10 - len(illegal)
    failed = dict(sqlite_db.rows("SELECT recipient_key, error_code FROM outbox WHERE state = 'failed'"))
    assert failed == {p: "isv.MOBILE_NUMBER_ILLEGAL" for p in illegal}


def test_rate_limit_answers_are_throttled_retries(sqlite_db: Store, monkeypatch):
    # One number per call, so that the calls (Alibaba's QPS counts calls) outrun the limit: the
    # dispatcher batches whatever is waiting, and 30 numbers would otherwise fit in two calls. 10 calls/s (a burst of
    # 10): a dispatcher slowed down by a busy machine (30 calls in 1.1 s once, at 20/s) still outruns it.
    with stack(webhook_url=None, throughput_per_s=10.0) as (sandbox_url, _, sandbox):
        channel, spec = alibaba_channel(monkeypatch, sandbox_url, max_batch=1)
        queue_sms(sqlite_db, channel, spec, sms_phones(30))
        result = dispatch(sqlite_db, channel)
    assert result.sent == 30 and result.failed == 0 and result.throttled > 0
    assert sandbox.tally.rejected["Throttling.User"] > 0 and not sandbox.tally.rejected["isv.BUSINESS_LIMIT_CONTROL"]
    assert sandbox.tally.accepted == 30 and sandbox.tally.duplicate_callback_data == 0


def test_a_number_over_its_frequency_limit_waits_alone_and_the_sender_keeps_its_pace(sqlite_db: Store, monkeypatch):
    # isv.BUSINESS_LIMIT_CONTROL is Alibaba's per-number limit (50 a day per number, signature and
    # template): the call is refused for one number, which is found by halving and deferred; the
    # others are sent and nothing is counted as throttling.
    with stack(webhook_url=None, number_limit=(1, 86400.0)) as (sandbox_url, _, sandbox):
        channel, spec = alibaba_channel(monkeypatch, sandbox_url)
        phones = sms_phones(10)
        queue_sms(sqlite_db, channel, spec, phones)
        payloads = [json.loads(p) for p in outbox_payloads(sqlite_db)]
        earlier = channel.request_params([payloads[4]])  # the limit's one permit, used before the campaign
        assert httpx.post(sandbox_url + "/", content=encode_form(earlier)).json()["Code"] == "OK"
        result = dispatch(sqlite_db, channel)
    assert result.sent == 9 and result.deferred == 1 and result.failed == 0 and result.throttled == 0
    assert sandbox.tally.rejected["isv.BUSINESS_LIMIT_CONTROL"] > 0
    deferred = sqlite_db.rows("SELECT recipient_key, error_code FROM outbox WHERE state = 'deferred'")
    assert [tuple(r) for r in deferred] == [(phones[4], "isv.BUSINESS_LIMIT_CONTROL")]


@pytest.mark.parametrize(("message", "wait_s"), [
    ("触发分钟级流控Permits:1", 60.0), ("触发小时级流控Permits:5", 3600.0), ("触发天级流控Permits:10", 86400.0),
    ("business limit control", 86400.0),
])
def test_the_per_number_limit_is_never_a_throttle(message, wait_s):
    channel = AlibabaSmsChannel(base_url="http://x", access_key_id="k", access_key_secret="s", sign_name="Acme",
                                template_code="SMS_1")
    body = json.dumps({"Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": message, "RequestId": "r"}).encode()
    outcome = channel.classify_response(200, body, {})
    assert (outcome.kind, outcome.throttled, outcome.retry_after_s) == ("retry", False, wait_s)
    gateway = json.dumps({"Code": "Throttling.User", "Message": "flow control", "RequestId": "r"}).encode()
    assert (channel.classify_response(400, gateway, {}).kind, channel.classify_response(400, gateway, {}).throttled) \
        == ("retry", True)


def test_a_wrong_secret_fails_the_signature_check_and_stops_the_channel(sqlite_db: Store, monkeypatch):
    with stack(webhook_url=None) as (sandbox_url, _, sandbox):
        channel, spec = alibaba_channel(monkeypatch, sandbox_url, secret="not-the-secret")
        queue_sms(sqlite_db, channel, spec, sms_phones(5))
        result = dispatch(sqlite_db, channel, concurrency=1)
    assert result.stopped_reason and result.stopped_reason.startswith("SignatureDoesNotMatch")
    assert sandbox.tally.rejected["SignatureDoesNotMatch"] >= 1 and sandbox.tally.accepted == 0
    assert states(sqlite_db) == {"queued": 5}


def test_sandbox_limits_and_replayed_nonces(monkeypatch):
    with stack(webhook_url=None) as (sandbox_url, _, _):
        channel, _ = alibaba_channel(monkeypatch, sandbox_url)
        items = [{"phone": f"4477009{i:05d}", "sign_name": "Acme", "template_code": "SMS_1", "out_id": "m"}
                 for i in range(101)]
        too_many = httpx.post(sandbox_url + "/", content=encode_form(channel.request_params(items)))
        assert too_many.json()["Code"] == "isv.MOBILE_COUNT_OVER_LIMIT"
        params = channel.request_params(items[:1])
        assert httpx.post(sandbox_url + "/", content=encode_form(params)).json()["Code"] == "OK"
        replay = httpx.post(sandbox_url + "/", content=encode_form(params))
        assert replay.status_code == 400 and replay.json()["Code"] == "SignatureNonceUsed"


def test_malformed_answers_are_not_counted_as_sent(sqlite_db: Store, monkeypatch):
    channel, spec = alibaba_channel(monkeypatch, "http://dysmsapi.test")
    queue_sms(sqlite_db, channel, spec, sms_phones(3))
    result = dispatch(sqlite_db, channel, transport=httpx.MockTransport(lambda r: httpx.Response(200, text="<html>")))
    assert result.sent == 0 and result.failed == 3
    assert [tuple(r) for r in sqlite_db.rows("SELECT DISTINCT error_code FROM outbox")] == [("http_200",)]
    ok_without_biz_id = channel.classify_response(200, b'{"Code":"OK","Message":"OK","RequestId":"r"}', {})
    assert ok_without_biz_id.kind == "permanent" and ok_without_biz_id.error_detail == "malformed provider response"
    assert channel.classify_response(503, b"busy", {}).kind == "retry"
    stop = channel.classify_response(404, b'{"Code":"InvalidAccessKeyId.NotFound","Message":"m"}', {})
    assert stop.kind == "stop"


def test_reports_with_a_forged_or_missing_token_are_refused_and_bad_bodies_raise():
    body = json.dumps([{"phone_number": "8613900000003", "send_time": "2026-10-01 16:00:00",
                        "report_time": "2026-10-01 16:00:05", "success": False, "err_code": "MN:0001",
                        "err_msg": "failed", "sms_size": "1", "biz_id": "900619746936498440^0",
                        "out_id": "m-1"}]).encode()
    assert ali.verify(body, {"x-sms-report-token": REPORT_TOKEN}, REPORT_TOKEN)
    assert not ali.verify(body, {"X-Sms-Report-Token": "guess"}, REPORT_TOKEN)
    assert not ali.verify(body, {}, REPORT_TOKEN)
    (receipt,), _ = ali.parse(body)
    assert receipt.status == "failed" and receipt.error_code == "MN:0001"
    assert receipt.provider_message_id == "900619746936498440^0:8613900000003"
    assert receipt.occurred_at == datetime(2026, 10, 1, 8, 0, 5, tzinfo=UTC)  # Beijing time, UTC+8
    for bad in (b"not json", b'{"a":1}', b'[{"phone_number":"1","biz_id":"2","success":"maybe"}]'):
        with pytest.raises(ValueError):
            ali.parse(bad)


def test_segments_follow_alibabas_rules():
    assert alibaba_segments("Acme", "x" * 150, "GB") == 1  # "[Acme]" counts 8 septets: 158
    assert alibaba_segments("Acme", "x" * 153, "GB") == 2
    assert alibaba_segments("阿里云", "x" * 65, "CN") == 1  # 【阿里云】 + 65 = 70
    assert alibaba_segments("阿里云", "x" * 66, "CN") == 2
