"""Hostile clients against the webhook receiver and the sandbox, over loopback: oversized bodies (declared or
chunked) refused before they are held, slow headers and slow bodies cut off, connections capped, and every
provider's route served by `campaign webhooks` (refusing what it cannot verify)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from pipeline.channels import email_webhooks, twilio_webhooks, viber_webhooks, whatsapp_webhooks
from pipeline.channels.email import unsubscribe_token
from pipeline.receipts.receiver import create_receiver_app
from pipeline.receipts.spool import closed_files, decode_record
from pipeline.sandbox.registry import DEMO_ENV
from pipeline.servers import ServerLimits, serve_in_thread
from pipeline.spec import SpecError
from tests.receipts.raw_http import answer_before_end, connect, head, read_until_closed, status_of, trickle

SECRETS = {"whatsapp_app_secret": DEMO_ENV["WHATSAPP_APP_SECRET"], "whatsapp_verify_token": "v"}
FAST = ServerLimits(header_timeout_s=0.5, body_timeout_s=0.5)
ROUTES = ["/webhooks/whatsapp", "/webhooks/viber", "/webhooks/email", "/webhooks/chatapp", "/webhooks/twilio",
          "/webhooks/messenger", "/webhooks/alibaba_sms",
          "/unsubscribe/" + unsubscribe_token(DEMO_ENV["EMAIL_UNSUBSCRIBE_SECRET"], "someone@example.com")]


@contextmanager
def receiver(tmp_path: Path, limits: ServerLimits = FAST, environ: dict[str, str] = DEMO_ENV) -> Iterator[str]:
    app = create_receiver_app(tmp_path / "spool", SECRETS, environ=environ)
    with serve_in_thread(app, limits=limits) as url:
        yield url


@pytest.mark.parametrize("path", ROUTES)
def test_a_declared_body_past_the_bound_is_refused_before_a_byte_of_it_is_sent(tmp_path, path):
    with receiver(tmp_path) as url, connect(url) as sock:
        sock.sendall(head("POST", path, {"Content-Type": "application/json", "Content-Length": "50000000"}))
        answer, closed = read_until_closed(sock, 5)
    assert status_of(answer) == 413 and closed, answer[:200]


@pytest.mark.parametrize("path", ROUTES)
def test_a_chunked_body_is_refused_once_it_passes_the_bound(tmp_path, path):
    chunks = [b"x" * 65536] * 64  # 4 MiB offered; the bound is 1 MiB (16 KiB for /unsubscribe)
    with receiver(tmp_path) as url, connect(url) as sock:
        sock.sendall(head("POST", path, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}))
        answer = answer_before_end(sock, chunks, chunked=True)
    assert status_of(answer) == 413, answer[:200]


def test_the_body_bound_is_a_setting_and_a_body_within_it_passes(tmp_path):
    body = json.dumps({"event": "delivered", "timestamp": 1750030073000, "message_token": 4912661846655231,
                       "user_id": "01234567890A=", "pad": "x" * 3000}).encode()
    signed = {"X-Viber-Content-Signature": viber_webhooks.sign(body, DEMO_ENV["VIBER_AUTH_TOKEN"])}
    limits = ServerLimits.from_env({"CAMPAIGN_MAX_BODY_BYTES": str(len(body) - 1)})
    with receiver(tmp_path, limits) as url:
        refused = httpx.post(f"{url}/webhooks/viber", content=body, headers=signed)
    with receiver(tmp_path, ServerLimits.from_env({"CAMPAIGN_MAX_BODY_BYTES": str(len(body))})) as url:
        taken = httpx.post(f"{url}/webhooks/viber", content=body, headers=signed)
    assert (refused.status_code, taken.status_code) == (413, 200)


def test_limits_are_read_from_the_environment_and_bad_values_are_named():
    limits = ServerLimits.from_env({"CAMPAIGN_MAX_BODY_BYTES": "2048", "CAMPAIGN_HEADER_TIMEOUT_S": "2.5",
                                    "CAMPAIGN_BODY_TIMEOUT_S": "7", "CAMPAIGN_MAX_CONNECTIONS": "12"})
    assert (limits.max_body_bytes, limits.header_timeout_s, limits.body_timeout_s, limits.max_connections) == (
        2048, 2.5, 7.0, 12)
    assert ServerLimits.from_env({}) == ServerLimits()
    for name, value in (("CAMPAIGN_MAX_CONNECTIONS", "many"), ("CAMPAIGN_HEADER_TIMEOUT_S", "-1"),
                        ("CAMPAIGN_MAX_BODY_BYTES", "abc"), ("CAMPAIGN_MAX_BODY_BYTES", "0"),
                        ("CAMPAIGN_KEEP_ALIVE_S", "inf"), ("CAMPAIGN_BODY_TIMEOUT_S", "nan")):
        # A SpecError: the CLI shows it as one `error:` line naming the variable (tests/cli/test_cli_servers.py).
        with pytest.raises(SpecError, match=f"^{name}: '{value}' is not a"):
            ServerLimits.from_env({name: value})


def test_headers_that_never_finish_are_cut_off(tmp_path):
    with receiver(tmp_path) as url:
        with connect(url) as silent:  # connects and says nothing
            _, closed = read_until_closed(silent, 5)
            assert closed
        with connect(url) as slow:  # one header byte at a time, never the blank line
            after_s, answer = trickle(slow, b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200,
                                      every_s=0.1, within_s=5)
        assert after_s is not None and status_of(answer) == 408
        assert httpx.get(f"{url}/healthz").status_code == 200  # the server itself is fine


def test_a_body_sent_a_byte_at_a_time_is_cut_off(tmp_path):
    with receiver(tmp_path) as url, connect(url) as sock:
        sock.sendall(head("POST", "/webhooks/viber", {"Content-Type": "application/json", "Content-Length": "500"}))
        after_s, answer = trickle(sock, b"{" + b" " * 499, every_s=0.1, within_s=5)
    assert after_s is not None and status_of(answer) == 408


def test_a_kept_alive_connection_gets_the_header_deadline_for_its_next_request(tmp_path):
    with receiver(tmp_path) as url, connect(url) as sock:
        sock.sendall(head("GET", "/healthz", {}))
        first, _ = read_until_closed(sock, 0.3)
        assert status_of(first) == 200
        after_s, _ = trickle(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200, every_s=0.1,
                             within_s=5)
    assert after_s is not None


def test_connections_past_the_cap_are_answered_503_and_closed(tmp_path):
    with receiver(tmp_path, ServerLimits(max_connections=3, header_timeout_s=30)) as url:
        held = [connect(url) for _ in range(3)]
        try:
            with connect(url) as extra:
                answer, closed = read_until_closed(extra, 5)
            assert status_of(answer) == 503 and closed
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 5  # the server notices the closed connections, then serves again
        while (status := _health(url)) != 200 and time.monotonic() < deadline:
            pass
        assert status == 200


def _health(url: str) -> int | None:
    with connect(url) as sock:
        sock.sendall(head("GET", "/healthz", {"Connection": "close"}))
        return status_of(read_until_closed(sock, 2)[0])


def test_a_route_whose_secret_is_not_set_exists_and_refuses_unread(tmp_path):
    body = json.dumps({"event": "delivered", "timestamp": 1750030073000, "message_token": 1, "user_id": "u"}).encode()
    with receiver(tmp_path, environ={}) as url:
        answer = httpx.post(f"{url}/webhooks/viber", content=body, headers={
            "X-Viber-Content-Signature": viber_webhooks.sign(body, "anything")})
        unsubscribe = httpx.post(f"{url}{ROUTES[-1]}", data={"List-Unsubscribe": "One-Click"})
    assert (answer.status_code, unsubscribe.status_code) == (503, 503)
    assert not [f for f in closed_files(tmp_path / "spool") if f.read_bytes()]


# --- the commands -------------------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def command(args: list[str], env: dict[str, str], ready: str) -> Iterator[subprocess.Popen[str]]:
    """Runs `campaign ARGS` until `ready` answers 2xx-4xx; stops it (SIGTERM to the process we started)."""
    proc = subprocess.Popen([str(Path(sys.executable).with_name("campaign")), *args], env={**os.environ, **env},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(ready, timeout=1).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"campaign {args[0]} did not start:\n{proc.stdout.read() if proc.stdout else ''}")
            time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_campaign_webhooks_serves_every_provider_with_the_bounds_from_the_environment(tmp_path):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**DEMO_ENV, "CAMPAIGN_HEADER_TIMEOUT_S": "0.5", "CAMPAIGN_MAX_BODY_BYTES": "100000"}
    del env["CHATAPP_CALLBACK_TOKEN"]
    spool = tmp_path / "spool"
    viber = json.dumps({"event": "delivered", "timestamp": 1750030073000, "message_token": 1, "user_id": "u"}).encode()
    email = json.dumps({"object": "email_report", "reports": [{"event": "delivered", "message_id": "<m-1@x.test>",
                                                                "timestamp": "2026-11-25T10:00:00Z"}]}).encode()
    form = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered", "To": "+447700900123"}
    with command(["webhooks", "--port", str(port), "--spool-dir", str(spool)], env, f"{url}/healthz"):
        twilio_url = f"{url}/webhooks/twilio?mid=m-2"
        answers = {
            "twilio": httpx.post(twilio_url, data=form, headers={
                "X-Twilio-Signature": twilio_webhooks.sign(twilio_url, form, env["TWILIO_AUTH_TOKEN"])}),
            "viber": httpx.post(f"{url}/webhooks/viber", content=viber, headers={
                "X-Viber-Content-Signature": viber_webhooks.sign(viber, env["VIBER_AUTH_TOKEN"])}),
            "email": httpx.post(f"{url}/webhooks/email", content=email, headers={
                email_webhooks.SIGNATURE_HEADER: email_webhooks.sign(email, env["EMAIL_WEBHOOK_SECRET"])}),
            "chatapp": httpx.post(f"{url}/webhooks/chatapp", content=b"[]"),  # no secret: refused
            "whatsapp": httpx.post(f"{url}/webhooks/whatsapp", content=b"x" * 100_001, headers={
                "X-Hub-Signature-256": whatsapp_webhooks.sign(b"x" * 100_001, env["WHATSAPP_APP_SECRET"])}),
        }
        with connect(url) as slow:
            after_s, _ = trickle(slow, b"POST /webhooks/viber HTTP/1.1\r\nHost: x\r\n" + b"a" * 200, every_s=0.1,
                                 within_s=10)
    assert {p: a.status_code for p, a in answers.items()} == {
        "twilio": 200, "viber": 200, "email": 200, "chatapp": 503, "whatsapp": 413}
    assert after_s is not None
    spooled = [decode_record(line)[0] for f in closed_files(spool) for line in f.read_bytes().splitlines()]
    assert sorted(spooled) == ["email", "twilio", "viber"]


def test_campaign_sandbox_cuts_off_slow_clients_too():
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**DEMO_ENV, "CAMPAIGN_HEADER_TIMEOUT_S": "0.5", "CAMPAIGN_MAX_CONNECTIONS": "50"}
    with command(["sandbox", "--port", str(port)], env, f"{url}/_sandbox/stats"):
        with connect(url) as slow:
            after_s, answer = trickle(slow, b"GET /_sandbox/stats HTTP/1.1\r\nHost: x\r\n" + b"a" * 200,
                                      every_s=0.1, within_s=10)
    assert after_s is not None and status_of(answer) == 408
