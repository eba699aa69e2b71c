"""E-mail through the real dispatcher to a real SMTP server (the aiosmtpd sandbox on loopback): multipart
messages with RFC 8058 headers, 421 throttling, 550 refusals, a malformed reply, AUTH, and signed reports."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import aiosmtplib
import httpx
import polars as pl
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.channels import email_webhooks as ew
from pipeline.channels.email import EmailChannel, classify_reply, from_spec, verify_unsubscribe_token
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.outbox import enqueue_messages, register_campaign
from pipeline.sandbox.smtp import SmtpSandbox, SmtpSandboxConfig, create_smtp_stats_app
from pipeline.servers import serve_in_thread
from pipeline.spec import RateSpec, RetrySpec, SpecError, parse_spec

WEBHOOK_SECRET, UNSUB_SECRET = "email-webhook-secret", "unsubscribe-secret"
UNSUB_URL = "https://mail.example.test/unsubscribe"
FAST_RETRY = RetrySpec(max_attempts=20, base_delay_s=0.02, max_delay_s=0.3, deadline_s=30)


class Receiver:
    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/webhooks/email", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self.posts.append((dict(request.headers), body))
        return Response(status_code=200)


@contextmanager
def stack(**overrides: Any) -> Iterator[tuple[SmtpSandbox, Receiver]]:
    receiver = Receiver()
    with serve_in_thread(receiver.app) as receiver_url:
        config = SmtpSandboxConfig(**{
            "webhook_secret": WEBHOOK_SECRET, "webhook_url": receiver_url + "/webhooks/email",
            "reject_rate": 0.0, "bounce_rate": 0.0, "report_delay_s": (0.0, 0.02), **overrides})
        with SmtpSandbox(config) as sandbox:
            yield sandbox, receiver


def _spec(**options: Any) -> Any:
    return parse_spec({
        "name": "mail-t", "audience": "x.csv", "channel": "email", "sender": "news@acme.test",
        "template": {"name": "newsletter", "language": "en", "category": "marketing", "text": "Hello {{ n }}"},
        "provider": {"options": {"from_address": "Acme News <news@acme.test>", "subject": "October news",
                                 "unsubscribe_url": UNSUB_URL, "unsubscribe_mailto": "unsubscribe@acme.test",
                                 **options}},
    })


def _channel(monkeypatch, sandbox: SmtpSandbox, *, username: str | None = None, password: str | None = None):
    monkeypatch.setenv("EMAIL_UNSUBSCRIBE_SECRET", UNSUB_SECRET)
    for name, value in (("SMTP_USERNAME", username), ("SMTP_PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    spec = _spec()
    return from_spec(spec, sandbox.url), spec


def _addresses(n: int) -> list[str]:
    return [f"reader{i}@example.com" for i in range(n)]


def _queue(con, channel: EmailChannel, spec: Any, addresses: list[str]) -> None:
    # The recipient key column is phone_e164 for now: for e-mail it holds the address.
    n = len(addresses)
    accepted = pl.DataFrame({
        "row_number": list(range(2, n + 2)), "phone_e164": addresses, "region": ["GB"] * n,
        "number_type": ["email"] * n, "text": [f"Hello reader {i} <b>&\n\nSee you — Acme" for i in range(n)],
        "params_json": ["{}"] * n,
    })
    register_campaign(con, spec, "t")
    enqueue_messages(con, spec, "t", channel, accepted)


def _dispatch(con, channel, *, rate: float = 500, concurrency: int = 4, timeout_s: float = 10.0):
    return asyncio.run(dispatch_campaign(
        con, "t", channel, rate=RateSpec(max_per_second=rate, concurrency=concurrency), retry=FAST_RETRY,
        timeout_s=timeout_s))


def test_happy_path_multipart_rfc8058_headers_and_signed_delivery_reports(con, monkeypatch):
    with stack() as (sandbox, receiver):
        channel, spec = _channel(monkeypatch, sandbox)
        addresses = _addresses(8)
        _queue(con, channel, spec, addresses)
        result = _dispatch(con, channel)
        assert result.sent == 8 and result.failed == 0
        assert sandbox.drain(10)
        stats, messages = sandbox.stats(), sandbox.messages()
    outbox = dict(con.execute("SELECT message_id, provider_message_id FROM outbox").fetchall())
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
        assert link.startswith(UNSUB_URL + "/")
        assert verify_unsubscribe_token(UNSUB_SECRET, link.rsplit("/", 1)[1]) == message["To"]
        assert message["To"] not in link  # the token is opaque
        assert message["Message-ID"].strip("<>").split("@")[0] in outbox

    receipts = []
    for headers, body in receiver.posts:
        assert ew.verify(body, headers, WEBHOOK_SECRET)
        receipts += ew.parse(body)[0]
    assert sorted((r.message_id, r.status) for r in receipts) == sorted((m, "delivered") for m in outbox)
    assert all(outbox[r.message_id] == r.provider_message_id for r in receipts)


def test_throughput_limit_answers_421_the_channel_reconnects_and_everything_is_sent_once(con, monkeypatch):
    with stack(throughput_per_s=10.0, webhook_url=None) as (sandbox, _):
        channel, spec = _channel(monkeypatch, sandbox)
        _queue(con, channel, spec, _addresses(24))
        result = _dispatch(con, channel)
        stats = sandbox.stats()
    assert result.sent == 24 and result.failed == 0 and result.throttled > 0
    assert stats["throttled"] == stats["rejected"]["421"] > 0
    assert stats["accepted"] == 24 and stats["duplicate_callback_data"] == 0


def test_refused_recipients_are_permanent_550_and_bounces_come_back_as_failed_receipts(con, monkeypatch):
    with stack(reject_rate=0.25, bounce_rate=0.3, seed=11) as (sandbox, receiver):
        channel, spec = _channel(monkeypatch, sandbox)
        addresses = _addresses(16)
        fates = {a: sandbox.config.outcome(a) for a in addresses}
        assert set(fates.values()) == {"rejected", "bounced", "delivered"}  # the seed gives a mix
        _queue(con, channel, spec, addresses)
        result = _dispatch(con, channel)
        assert sandbox.drain(10)
    rejected = {a for a, f in fates.items() if f == "rejected"}
    assert result.failed == len(rejected) and result.sent == 16 - len(rejected)
    failed = dict(con.execute("SELECT recipient_key, error_code FROM outbox WHERE state = 'failed'").fetchall())
    assert failed == {a: "550" for a in rejected}
    receipts = [r for headers, body in receiver.posts if ew.verify(body, headers, WEBHOOK_SECRET)
                for r in ew.parse(body)[0]]
    bounced = {r.recipient: r for r in receipts if r.status == "failed"}
    assert set(bounced) == {a for a, f in fates.items() if f == "bounced"}
    assert {r.error_code for r in bounced.values()} <= {"5.1.1", "5.2.2"}
    assert all(r.error_title and r.error_title.startswith("55") for r in bounced.values())


def test_a_reply_that_is_not_smtp_is_permanent_and_never_resent(con, monkeypatch):
    with stack(malformed_reply=True, webhook_url=None) as (sandbox, _):
        channel, spec = _channel(monkeypatch, sandbox)
        _queue(con, channel, spec, _addresses(3))
        result = _dispatch(con, channel, concurrency=1)
        stats = sandbox.stats()
    assert result.sent == 0 and result.failed == 3 and result.retries == 0
    rows = con.execute("SELECT DISTINCT error_code, error_detail FROM outbox").fetchall()
    assert [r[0] for r in rows] == ["smtp_-1"] and "malformed provider response" in rows[0][1]
    # The server did take each message once: nothing is sent twice on a reply we cannot read.
    assert stats["accepted"] == 3 and stats["duplicate_callback_data"] == 0


def test_a_timeout_after_data_is_unknown_and_never_resent_blindly(con, monkeypatch):
    with stack(reply_delay_s=0.5, webhook_url=None) as (sandbox, _):
        channel, spec = _channel(monkeypatch, sandbox)
        _queue(con, channel, spec, _addresses(2))
        result = _dispatch(con, channel, concurrency=2, timeout_s=0.2)
        stats = sandbox.stats()
    assert result.sent == 0 and result.unknown == 2 and result.retries == 0
    assert dict(con.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall()) == {"unknown": 2}
    assert stats["accepted"] == 2 and stats["duplicate_callback_data"] == 0


def test_authentication_failure_stops_the_channel_and_good_credentials_send(con, monkeypatch):
    with stack(username="mailer", password="s3cret", webhook_url=None) as (sandbox, _):
        channel, spec = _channel(monkeypatch, sandbox, username="mailer", password="wrong")
        _queue(con, channel, spec, _addresses(4))
        result = _dispatch(con, channel, concurrency=1)
        assert result.stopped_reason and result.stopped_reason.startswith("535")
        assert dict(con.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall()) == {"queued": 4}
        channel, _ = _channel(monkeypatch, sandbox, username="mailer", password="s3cret")
        assert _dispatch(con, channel).sent == 4
        # Without credentials at all the server refuses MAIL: 530, which stops too.
        assert classify_reply(530, "5.7.0 Authentication required").kind == "stop"


def test_the_sandbox_refuses_mail_without_one_click_headers(monkeypatch):
    with stack(webhook_url=None) as (sandbox, _):
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
    good = {"X-Email-Signature": ew.sign(body, WEBHOOK_SECRET)}
    assert ew.verify(body, good, WEBHOOK_SECRET)
    assert not ew.verify(body, {"X-Email-Signature": ew.sign(body, "forger")}, WEBHOOK_SECRET)
    assert not ew.verify(body.replace(b"5.1.1", b"2.0.0"), good, WEBHOOK_SECRET)
    assert not ew.verify(body, {}, WEBHOOK_SECRET)
    (receipt,), _ = ew.parse(body)
    assert (receipt.message_id, receipt.status, receipt.error_code) == ("m-1", "failed", "5.1.1")
    assert receipt.provider_message_id == "Q1" and receipt.recipient == "a@example.com"
    for bad in (b"[]", b'{"object":"email_report","reports":[{"event":"exploded"}]}', b"\x00"):
        with pytest.raises(ValueError):
            ew.parse(bad)


def test_spec_checks_for_the_email_channel(monkeypatch):
    monkeypatch.setenv("EMAIL_UNSUBSCRIBE_SECRET", UNSUB_SECRET)
    with pytest.raises(SpecError, match="https"):
        from_spec(_spec(unsubscribe_url="http://mail.example.test/u"), "smtp://127.0.0.1:2525")
    with pytest.raises(SpecError, match="smtp://"):
        from_spec(_spec(), "http://127.0.0.1:2525")
    channel = from_spec(_spec(unsubscribe_url="http://127.0.0.1:8802/unsubscribe"), "smtps://mail.test")
    assert (channel.host, channel.port, channel.use_tls) == ("mail.test", 465, True)
