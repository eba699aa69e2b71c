"""Alibaba SMS limits against the dysmsapi sandbox on loopback: the account's daily sending limit
(isv.DAY_LIMIT_CONTROL) stops the channel and holds what it refused back until the next day, China time, and its
monthly limit (isv.MONTH_LIMIT_CONTROL) until the 1st of the next month; the campaign continues then by itself; a
signature + content over 500 characters is refused isv.PARAM_LENGTH_LIMIT, and in a batch fails alone."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from pipeline.channels.alibaba_rpc import encode_form, signed_params
from pipeline.channels.alibaba_sms import AlibabaSmsChannel, day_limit_resets_at, month_limit_resets_at
from pipeline.cli.parser import main
from pipeline.dispatch.operations import record_status
from pipeline.store import Store, utc
from tests.helpers.alibaba_sms import (
    KEY_ID,
    KEY_SECRET,
    alibaba_channel,
    outbox_payloads,
    queue_sms,
    send_batch,
    sms_phones,
    stack,
)
from tests.helpers.channels import CAMPAIGN, dispatch, states


def _held_until(db: Store) -> set[datetime | None]:
    """When the queued messages held back for a quota may go."""
    return {utc(r[0]) for r in db.rows("SELECT not_before FROM outbox WHERE state = 'queued' "
                                       "AND not_before IS NOT NULL")}


@pytest.mark.parametrize(("now", "resets"), [
    (datetime(2026, 3, 1, 15, 59, 59, tzinfo=UTC), datetime(2026, 3, 1, 16, 0, tzinfo=UTC)),  # 23:59:59 in Beijing
    (datetime(2026, 3, 1, 16, 0, 0, tzinfo=UTC), datetime(2026, 3, 2, 16, 0, tzinfo=UTC)),  # 00:00 the next day
    (datetime(2026, 3, 1, 3, 0, 0, tzinfo=UTC), datetime(2026, 3, 1, 16, 0, tzinfo=UTC)),
])
def test_the_daily_limit_resets_at_midnight_china_time(now, resets):
    assert day_limit_resets_at(now) == resets


@pytest.mark.parametrize(("code", "message", "resets_at", "detail", "when"), [
    ("isv.DAY_LIMIT_CONTROL", "触发日发送限额", day_limit_resets_at, "the account's daily limit",
     "midnight China time"),
    ("isv.MONTH_LIMIT_CONTROL", "触发月发送限额", month_limit_resets_at, "the account's monthly limit",
     "00:00 China time on the 1st"),
])
def test_a_quota_limit_is_a_stop_until_it_resets_never_a_retry_or_a_permanent_failure(code, message, resets_at,
                                                                                      detail, when):
    channel = AlibabaSmsChannel(base_url="http://x", access_key_id="k", access_key_secret="s", sign_name="Acme",
                                template_code="SMS_1")
    body = json.dumps({"Code": code, "Message": message, "RequestId": "r"}).encode()
    before = resets_at(datetime.now(UTC))
    outcome = channel.classify_response(200, body, {})
    assert (outcome.kind, outcome.throttled, outcome.retry_after_s) == ("stop", False, None)
    assert outcome.not_before in {before, resets_at(datetime.now(UTC))}
    assert outcome.error_detail.startswith(f"{message}: {detail}") and when in outcome.error_detail


def test_the_daily_limit_stops_the_campaign_holds_the_refused_to_the_next_day_and_continues_then(
        db: Store, db_url: str, monkeypatch, capsys):
    # On both backends: the hold's time goes through the store and back out in `campaign status`.
    # One number a call, one call at a time: ten calls fit the day's limit, the 11th is refused, and then the
    # channel stops instead of asking again for the last one.
    with stack(webhook_url=None, day_quota=10) as (sandbox_url, _, sandbox):
        channel, spec = alibaba_channel(monkeypatch, sandbox_url, max_batch=1)
        queue_sms(db, channel, spec, sms_phones(12))
        before = day_limit_resets_at(datetime.now(UTC))
        result = dispatch(db, channel, concurrency=1, on_status=lambda info: record_status(db, CAMPAIGN, info))
        after = day_limit_resets_at(datetime.now(UTC))
        assert sandbox.calls == 11 and sandbox.tally.rejected["isv.DAY_LIMIT_CONTROL"] == 1
        assert result.sent == 10 and result.deferred == 0 and result.failed == 0 and result.retries == 0
        assert result.stopped_reason.startswith("isv.DAY_LIMIT_CONTROL: 触发日发送限额")
        # Nothing failed: the refused one waits for the reset, the rest with it, and the campaign goes on then
        # (flows/continuation.py schedules the run at `continue_at`).
        assert states(db) == {"sent": 10, "queued": 2} and result.waiting == 2
        [resets_at] = _held_until(db)
        assert resets_at in {before, after} and result.continue_at == resets_at
        held = db.rows("SELECT error_code, attempts FROM outbox WHERE not_before IS NOT NULL")
        assert [tuple(r) for r in held] == [("isv.DAY_LIMIT_CONTROL", 0)]  # why it waits; no attempt spent

        assert main(["status", CAMPAIGN, "--db", db_url]) == 0
        shown = capsys.readouterr().out
        assert re.search(r"^\s+queued\s+2$", shown, re.M) and "deferred" not in shown
        assert f"queued messages held back until {resets_at.isoformat()}" in shown
        assert "stopped: isv.DAY_LIMIT_CONTROL" in shown

        # The run that continues at the reset: the day's count starts again, and everything left is sent.
        sandbox.reset_quotas()
        db.execute("UPDATE outbox SET not_before = :at WHERE not_before IS NOT NULL",
                   at=datetime.now(UTC) - timedelta(seconds=1))
        again = dispatch(db, channel, concurrency=1)
    assert again.sent == 2 and again.stopped_reason is None and again.continue_at is None
    assert states(db) == {"sent": 12} and sandbox.calls == 13 and sandbox.tally.accepted == 12


def test_a_run_before_the_reset_sends_nothing_held_and_continues_at_the_reset(sqlite_db: Store, monkeypatch):
    # The operator resumes before midnight China time: the held message stays held (the quota would refuse it),
    # the others meet the limit again, and the run says it continues at the same reset.
    with stack(webhook_url=None, day_quota=2) as (sandbox_url, _, sandbox):
        channel, spec = alibaba_channel(monkeypatch, sandbox_url, max_batch=1)
        queue_sms(sqlite_db, channel, spec, sms_phones(6))
        first = dispatch(sqlite_db, channel, concurrency=1)
        second = dispatch(sqlite_db, channel, concurrency=1)
    assert first.sent == 2 and second.sent == 0
    # Two sent and one refused, then one refused: the held message was not asked for again.
    assert sandbox.calls == 4 and sandbox.tally.rejected["isv.DAY_LIMIT_CONTROL"] == 2
    assert states(sqlite_db) == {"sent": 2, "queued": 4}
    assert sqlite_db.scalar("SELECT count(*) FROM outbox WHERE not_before IS NOT NULL") == 2
    assert first.continue_at is not None and second.continue_at in {first.continue_at, *_held_until(sqlite_db)}


@pytest.mark.parametrize(("now", "resets"), [
    (datetime(2026, 3, 14, 9, 0, tzinfo=UTC), datetime(2026, 3, 31, 16, 0, tzinfo=UTC)),  # 1 April, 00:00 Beijing
    (datetime(2026, 3, 31, 15, 59, 59, tzinfo=UTC), datetime(2026, 3, 31, 16, 0, tzinfo=UTC)),  # 31 March, 23:59:59
    (datetime(2026, 3, 31, 16, 0, tzinfo=UTC), datetime(2026, 4, 30, 16, 0, tzinfo=UTC)),  # already 1 April there
    (datetime(2026, 12, 20, 8, 0, tzinfo=UTC), datetime(2026, 12, 31, 16, 0, tzinfo=UTC)),  # December -> 1 January
    (datetime(2026, 12, 31, 16, 0, tzinfo=UTC), datetime(2027, 1, 31, 16, 0, tzinfo=UTC)),  # 1 January in Beijing
    (datetime(2027, 1, 31, 16, 0, tzinfo=UTC), datetime(2027, 2, 28, 16, 0, tzinfo=UTC)),  # February: 1 March
])
def test_the_monthly_limit_resets_on_the_1st_at_midnight_china_time(now, resets):
    assert month_limit_resets_at(now) == resets


def test_the_monthly_limit_stops_the_campaign_and_holds_the_refused_to_the_next_month(db: Store, monkeypatch):
    # As the day's limit, with the day's limit set too but not reached: the month's is the one answered, and the
    # refused message (and the campaign) waits for the 1st, not for tomorrow (when the month's limit would refuse it
    # again).
    with stack(webhook_url=None, month_quota=5, day_quota=1000) as (sandbox_url, _, sandbox):
        channel, spec = alibaba_channel(monkeypatch, sandbox_url, max_batch=1)
        queue_sms(db, channel, spec, sms_phones(20))
        before = month_limit_resets_at(datetime.now(UTC))
        result = dispatch(db, channel, concurrency=1)
        after = month_limit_resets_at(datetime.now(UTC))
    assert sandbox.calls == 6 and sandbox.tally.rejected == {"isv.MONTH_LIMIT_CONTROL": 1}
    assert result.sent == 5 and result.deferred == 0 and result.failed == 0 and result.retries == 0
    assert result.stopped_reason.startswith("isv.MONTH_LIMIT_CONTROL: 触发月发送限额")
    assert states(db) == {"sent": 5, "queued": 15}
    assert _held_until(db) <= {before, after} and len(_held_until(db)) == 1
    assert result.continue_at in _held_until(db)
    held = db.rows("SELECT error_code FROM outbox WHERE not_before IS NOT NULL")
    assert [tuple(r) for r in held] == [("isv.MONTH_LIMIT_CONTROL",)]


def test_the_sandbox_answers_whichever_limit_a_call_would_pass_the_month_first():
    def send(sandbox_url: str, n: int) -> str:
        return _post(sandbox_url, _batch([f"4477009{i:05d}" for i in range(n)], "Acme", ["x"] * n))["Code"]

    with stack(webhook_url=None, day_quota=3, month_quota=5) as (sandbox_url, _, sandbox):
        assert [send(sandbox_url, 2), send(sandbox_url, 2)] == ["OK", "isv.DAY_LIMIT_CONTROL"]  # 4 > 3 a day
    assert sandbox.tally.accepted == 2
    with stack(webhook_url=None, day_quota=5, month_quota=3) as (sandbox_url, _, sandbox):
        assert [send(sandbox_url, 2), send(sandbox_url, 2)] == ["OK", "isv.MONTH_LIMIT_CONTROL"]
    with stack(webhook_url=None, day_quota=3, month_quota=3) as (sandbox_url, _, sandbox):
        assert send(sandbox_url, 4) == "isv.MONTH_LIMIT_CONTROL"  # over both: the one that frees later


def test_a_limit_reached_at_once_costs_at_most_one_call_per_connection(sqlite_db: Store, monkeypatch):
    # Batches of up to 100 on 4 connections: the refused calls are never split to look for a number to blame, and
    # once the channel stops nothing more is asked. What was refused is held back until the reset, the rest queued.
    with stack(webhook_url=None, day_quota=0) as (sandbox_url, _, sandbox):
        channel, spec = alibaba_channel(monkeypatch, sandbox_url)
        queue_sms(sqlite_db, channel, spec, sms_phones(300))
        result = dispatch(sqlite_db, channel, concurrency=4)
    assert 1 <= sandbox.calls <= 4 and sandbox.tally.rejected["isv.DAY_LIMIT_CONTROL"] == sandbox.calls
    assert result.sent == 0 and result.failed == 0 and result.deferred == 0
    held = sqlite_db.scalar("SELECT count(*) FROM outbox WHERE not_before IS NOT NULL")
    assert states(sqlite_db) == {"queued": 300} and 1 <= held <= 4 * 100
    assert len(_held_until(sqlite_db)) == 1 and result.continue_at in _held_until(sqlite_db)


def test_a_limit_reached_while_a_bad_number_is_looked_for_sends_nothing_more(sqlite_db: Store, monkeypatch):
    # An illegal number refuses the call of 8, so the channel halves it; the first half then meets the day's limit:
    # the second half is not sent (it stays queued), and the first half is held back until the reset.
    with stack(webhook_url=None, illegal_rate=0.2, seed=3, day_quota=3) as (sandbox_url, _, sandbox):
        channel, spec = alibaba_channel(monkeypatch, sandbox_url)
        legal = [p for p in sms_phones(40) if sandbox.config.outcome(p.lstrip("+"))[0] != "illegal"]
        illegal = next(p for p in sms_phones(40) if sandbox.config.outcome(p.lstrip("+"))[0] == "illegal")
        queue_sms(sqlite_db, channel, spec, [*legal[:7], illegal])
        outcomes = asyncio.run(send_batch(channel, outbox_payloads(sqlite_db)))
    assert sandbox.calls == 2
    assert sandbox.tally.rejected == {"isv.MOBILE_NUMBER_ILLEGAL": 1, "isv.DAY_LIMIT_CONTROL": 1}
    assert [o.kind for o in outcomes] == ["stop"] * 8
    assert [o.not_before is not None for o in outcomes] == [True] * 4 + [False] * 4


def test_a_limit_reached_by_one_templates_call_sends_no_other_templates_call(sqlite_db: Store, monkeypatch):
    # A batch of two templates goes as two calls; the first meets the day's limit, so the second is never made.
    with stack(webhook_url=None, day_quota=0) as (sandbox_url, _, sandbox):
        channel, spec = alibaba_channel(monkeypatch, sandbox_url)
        queue_sms(sqlite_db, channel, spec, sms_phones(6))
        payloads = [json.loads(p) for p in outbox_payloads(sqlite_db)]
        for payload in payloads[::2]:
            payload["template_code"] = "SMS_15255002"
        outcomes = asyncio.run(send_batch(channel, [json.dumps(p) for p in payloads]))
    assert sandbox.calls == 1 and [o.kind for o in outcomes] == ["stop"] * 6
    # The first call (the template of the first message) was refused, held back; the other stays queued.
    assert [o.not_before is not None for o in outcomes] == [True, False] * 3


def _post(sandbox_url: str, params: dict[str, str]) -> dict:
    return httpx.post(sandbox_url + "/", content=encode_form(params)).json()


def _batch(phones: list[str], sign_name: str, names: list[str]) -> dict[str, str]:
    return signed_params("SendBatchSms", {
        "RegionId": "cn-hangzhou", "PhoneNumberJson": json.dumps(phones),
        "SignNameJson": json.dumps([sign_name] * len(phones)), "TemplateCode": "SMS_15255001", "OutId": "m-1",
        "TemplateParamJson": json.dumps([{"name": n} for n in names], ensure_ascii=False),
    }, access_key_id=KEY_ID, access_key_secret=KEY_SECRET, version="2017-05-25")


def test_the_sandbox_refuses_a_signature_and_content_over_500_characters():
    text = "Hello ${name}, see you soon."
    room = 500 - len("[Acme]") - len(text.replace("${name}", ""))  # the longest name Alibaba takes
    with stack(webhook_url=None, template_texts={"SMS_15255001": text}) as (sandbox_url, _, sandbox):
        assert _post(sandbox_url, _batch(["447700900001"], "Acme", ["x" * room]))["Code"] == "OK"
        refused = _post(sandbox_url, _batch(["447700900001"], "Acme", ["x" * (room + 1)]))
        assert refused["Code"] == "isv.PARAM_LENGTH_LIMIT" and refused["Message"].startswith("参数超出长度限制")
        assert "501 characters" in refused["Message"]
        # One message too long refuses the whole call, as an illegal number does; 【阿里云】 counts 5, [Acme] 6.
        mixed = _post(sandbox_url, _batch(["447700900002", "8613900000001"], "阿里云", ["ok", "字" * (room + 2)]))
        assert mixed["Code"] == "isv.PARAM_LENGTH_LIMIT"
        single = signed_params("SendSms", {
            "RegionId": "cn-hangzhou", "PhoneNumbers": "447700900003", "SignName": "Acme",
            "TemplateCode": "SMS_15255001", "TemplateParam": json.dumps({"name": "y" * (room + 1)}),
        }, access_key_id=KEY_ID, access_key_secret=KEY_SECRET, version="2017-05-25")
        assert _post(sandbox_url, single)["Code"] == "isv.PARAM_LENGTH_LIMIT"
    assert sandbox.tally.accepted == 1 and sandbox.tally.rejected["isv.PARAM_LENGTH_LIMIT"] == 3


def test_without_the_template_text_the_variables_alone_bound_the_length():
    with stack(webhook_url=None) as (sandbox_url, _, _):
        assert _post(sandbox_url, _batch(["447700900001"], "Acme", ["x" * 494]))["Code"] == "OK"
        assert _post(sandbox_url, _batch(["447700900001"], "Acme", ["x" * 495]))["Code"] == "isv.PARAM_LENGTH_LIMIT"


def test_a_message_too_long_in_a_batch_fails_alone_and_the_rest_is_sent(sqlite_db: Store, monkeypatch):
    with stack(webhook_url=None) as (sandbox_url, _, sandbox):
        channel, spec = alibaba_channel(monkeypatch, sandbox_url)
        queue_sms(sqlite_db, channel, spec, sms_phones(6), values=["z" * (600 if i == 2 else 5) for i in range(6)])
        outcomes = asyncio.run(send_batch(channel, outbox_payloads(sqlite_db)))
    assert [(o.kind, o.error_code) for o in outcomes] == \
        [("sent", None)] * 2 + [("permanent", "isv.PARAM_LENGTH_LIMIT")] + [("sent", None)] * 3
    assert sandbox.tally.accepted == 5
