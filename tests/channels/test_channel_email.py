"""E-mail through the real dispatcher to a real SMTP server (the aiosmtpd sandbox on loopback): multipart
messages with RFC 8058 headers, 421 throttling, 550 refusals, a malformed reply, AUTH, and signed reports."""

from __future__ import annotations

import asyncio
import json

import aiosmtplib
import httpx
import pytest

from pipeline.channels import email_webhooks as ew
from pipeline.channels.email import classify_reply, from_spec, verify_unsubscribe_token
from pipeline.sandbox.smtp import SmtpSandbox, create_smtp_stats_app
from pipeline.servers import serve_in_thread
from pipeline.spec import SpecError
from pipeline.store import Store
from tests.helpers.channels import dispatch, states
from tests.helpers.providers import (
    EMAIL_UNSUB_SECRET,
    EMAIL_UNSUB_URL,
    EMAIL_WEBHOOK_SECRET,
    email_addresses,
    email_queue,
    email_spec,
    email_stack,
)


def _channel(monkeypatch, sandbox: SmtpSandbox, *, username: str | None = None, password: str | None = None):
    monkeypatch.setenv("EMAIL_UNSUBSCRIBE_SECRET", EMAIL_UNSUB_SECRET)
    for name, value in (("SMTP_USERNAME", username), ("SMTP_PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    spec = email_spec()
    return from_spec(spec, sandbox.url), spec


def test_happy_path_multipart_rfc8058_headers_and_signed_delivery_reports(sqlite_db: Store, monkeypatch):
    with email_stack() as (sandbox, receiver):
        channel, spec = _channel(monkeypatch, sandbox)
        addresses = email_addresses(8)
        email_queue(sqlite_db, channel, spec, addresses)
        result = dispatch(sqlite_db, channel)
        assert result.sent == 8 and result.failed == 0
        assert sandbox.drain(10)
        stats, messages = sandbox.stats(), sandbox.messages()
    outbox = dict(sqlite_db.rows("SELECT message_id, provider_message_id FROM outbox"))
    assert stats["accepted"] == 8 and stats["duplicate_callback_data"] == 0 and stats["rejected"] == {}
    assert sorted(m["correlation_id"] for m in stats["messages"]) == sorted(outbox)
    assert {m["id"] for m in stats["messages"]} == set(outbox.values())  # the queue id from "250 ... queued as"

    assert len(messages) == 8
    for message in messages:
        assert message.get_content_type() == "multipart/alternative"
        text, html = message.get_body(("plain",)), message.get_body(("html",))
        assert text is not None and html is not None
        assert "Hello reader" in text.get_content() and "&lt;b&gt;&amp;" in html.get_content()
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        header = message["List-Unsubscribe"]
        assert header.endswith(", <mailto:unsubscribe@acme.test?subject=unsubscribe>")
        link = header.split(">")[0].lstrip("<")
        assert link.startswith(EMAIL_UNSUB_URL + "/")
        assert verify_unsubscribe_token(EMAIL_UNSUB_SECRET, link.rsplit("/", 1)[1]) == message["To"]
        assert message["To"] not in link  # the token is opaque
        assert message["Message-ID"].strip("<>").split("@")[0] in outbox

    receipts = []
    for post in receiver.posts:
        assert ew.verify(post.body, post.headers, EMAIL_WEBHOOK_SECRET)
        receipts += ew.parse(post.body)[0]
    assert sorted((r.message_id, r.status) for r in receipts) == sorted((m, "delivered") for m in outbox)
    assert all(outbox[r.message_id] == r.provider_message_id for r in receipts)


def test_throughput_limit_answers_421_the_channel_reconnects_and_everything_is_sent_once(sqlite_db: Store, monkeypatch):
    with email_stack(throughput_per_s=10.0, webhook_url=None) as (sandbox, _):
        channel, spec = _channel(monkeypatch, sandbox)
        email_queue(sqlite_db, channel, spec, email_addresses(24))
        result = dispatch(sqlite_db, channel)
        stats = sandbox.stats()
    assert result.sent == 24 and result.failed == 0 and result.throttled > 0
    assert stats["throttled"] == stats["rejected"]["421"] > 0
    assert stats["accepted"] == 24 and stats["duplicate_callback_data"] == 0


def test_refused_recipients_are_permanent_550_and_bounces_come_back_as_failed_receipts(sqlite_db: Store, monkeypatch):
    with email_stack(reject_rate=0.25, bounce_rate=0.3, seed=11) as (sandbox, receiver):
        channel, spec = _channel(monkeypatch, sandbox)
        addresses = email_addresses(16)
        fates = {a: sandbox.config.outcome(a) for a in addresses}
        assert set(fates.values()) == {"rejected", "bounced", "delivered"}  # the seed gives a mix
        email_queue(sqlite_db, channel, spec, addresses)
        result = dispatch(sqlite_db, channel)
        assert sandbox.drain(10)
    rejected = {a for a, f in fates.items() if f == "rejected"}
    assert result.failed == len(rejected) and result.sent == 16 - len(rejected)
    failed = dict(sqlite_db.rows("SELECT recipient_key, error_code FROM outbox WHERE state = 'failed'"))
    assert failed == {a: "550" for a in rejected}
    receipts = [r for post in receiver.posts if ew.verify(post.body, post.headers, EMAIL_WEBHOOK_SECRET)
                for r in ew.parse(post.body)[0]]
    bounced = {r.recipient: r for r in receipts if r.status == "failed"}
    assert set(bounced) == {a for a, f in fates.items() if f == "bounced"}
    assert {r.error_code for r in bounced.values()} <= {"5.1.1", "5.2.2"}
    assert all(r.error_title and r.error_title.startswith("55") for r in bounced.values())


def test_a_reply_that_is_not_smtp_is_permanent_and_never_resent(sqlite_db: Store, monkeypatch):
    with email_stack(malformed_reply=True, webhook_url=None) as (sandbox, _):
        channel, spec = _channel(monkeypatch, sandbox)
        email_queue(sqlite_db, channel, spec, email_addresses(3))
        result = dispatch(sqlite_db, channel, concurrency=1)
        stats = sandbox.stats()
    assert result.sent == 0 and result.failed == 3 and result.retries == 0
    rows = sqlite_db.rows("SELECT DISTINCT error_code, error_detail FROM outbox")
    assert [r[0] for r in rows] == ["smtp_-1"] and "malformed provider response" in rows[0][1]
    # The server did take each message once: nothing is sent twice on a reply we cannot read.
    assert stats["accepted"] == 3 and stats["duplicate_callback_data"] == 0


def test_a_timeout_after_data_is_unknown_and_never_resent_blindly(sqlite_db: Store, monkeypatch):
    with email_stack(reply_delay_s=0.5, webhook_url=None) as (sandbox, _):
        channel, spec = _channel(monkeypatch, sandbox)
        email_queue(sqlite_db, channel, spec, email_addresses(2))
        result = dispatch(sqlite_db, channel, concurrency=2, timeout_s=0.2)
        stats = sandbox.stats()
    assert result.sent == 0 and result.unknown == 2 and result.retries == 0
    assert states(sqlite_db) == {"unknown": 2}
    assert stats["accepted"] == 2 and stats["duplicate_callback_data"] == 0


def test_authentication_failure_stops_the_channel_and_good_credentials_send(sqlite_db: Store, monkeypatch):
    with email_stack(username="mailer", password="s3cret", webhook_url=None) as (sandbox, _):
        channel, spec = _channel(monkeypatch, sandbox, username="mailer", password="wrong")
        email_queue(sqlite_db, channel, spec, email_addresses(4))
        result = dispatch(sqlite_db, channel, concurrency=1)
        assert result.stopped_reason and result.stopped_reason.startswith("535")
        assert states(sqlite_db) == {"queued": 4}
        channel, _ = _channel(monkeypatch, sandbox, username="mailer", password="s3cret")
        assert dispatch(sqlite_db, channel).sent == 4
        # Without credentials at all the server refuses MAIL: 530, which stops too.
        assert classify_reply(530, "5.7.0 Authentication required").kind == "stop"


def test_the_sandbox_refuses_mail_without_one_click_headers(monkeypatch):
    with email_stack(webhook_url=None) as (sandbox, _):
        raw = b"From: a@acme.test\r\nTo: b@example.com\r\nSubject: x\r\nMessage-ID: <1@acme.test>\r\n\r\nhi\r\n"

        async def send() -> None:
            await aiosmtplib.send(raw, sender="a@acme.test", recipients=["b@example.com"],
                                  hostname="127.0.0.1", port=sandbox.port)

        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            asyncio.run(send())
        assert refused.value.code == 550 and "List-Unsubscribe" in refused.value.message
        with serve_in_thread(create_smtp_stats_app(sandbox)) as url:
            assert httpx.get(url + "/_sandbox/stats").json()["rejected"] == {"550": 1}


def test_forged_reports_are_refused_and_bad_bodies_raise():
    body = json.dumps({"object": "email_report", "reports": [{
        "event": "bounced", "message_id": "<m-1@acme.test>", "queue_id": "Q1", "recipient": "A@Example.com",
        "smtp_code": 550, "status": "5.1.1", "diagnostic": "user unknown", "timestamp": "2026-10-01T08:00:00+00:00",
    }]}).encode()
    good = {"X-Email-Signature": ew.sign(body, EMAIL_WEBHOOK_SECRET)}
    assert ew.verify(body, good, EMAIL_WEBHOOK_SECRET)
    assert not ew.verify(body, {"X-Email-Signature": ew.sign(body, "forger")}, EMAIL_WEBHOOK_SECRET)
    assert not ew.verify(body.replace(b"5.1.1", b"2.0.0"), good, EMAIL_WEBHOOK_SECRET)
    assert not ew.verify(body, {}, EMAIL_WEBHOOK_SECRET)
    (receipt,), _ = ew.parse(body)
    assert (receipt.message_id, receipt.status, receipt.error_code) == ("m-1", "failed", "5.1.1")
    assert receipt.provider_message_id == "Q1" and receipt.recipient == "a@example.com"
    for bad in (b"[]", b'{"object":"email_report","reports":[{"event":"exploded"}]}', b"\x00"):
        with pytest.raises(ValueError):
            ew.parse(bad)


def test_spec_checks_for_the_email_channel(monkeypatch):
    monkeypatch.setenv("EMAIL_UNSUBSCRIBE_SECRET", EMAIL_UNSUB_SECRET)
    with pytest.raises(SpecError, match="https"):
        from_spec(email_spec(unsubscribe_url="http://mail.example.test/u"), "smtp://127.0.0.1:2525")
    with pytest.raises(SpecError, match="smtp://"):
        from_spec(email_spec(), "http://127.0.0.1:2525")
    channel = from_spec(email_spec(unsubscribe_url="http://127.0.0.1:8802/unsubscribe"), "smtps://mail.test")
    assert (channel.host, channel.port, channel.use_tls) == ("mail.test", 465, True)
