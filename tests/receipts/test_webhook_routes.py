"""The receiver's routes for every provider: verified, spooled, answered as each provider expects."""

from __future__ import annotations

import base64
import hmac
import json

import httpx

from pipeline.channels import twilio_webhooks, viber_webhooks
from pipeline.receipts.receiver import create_receiver_app
from pipeline.receipts.routes import add_provider_routes
from pipeline.receipts.spool import closed_files, decode_record
from pipeline.sandbox.registry import DEMO_ENV
from pipeline.servers import serve_in_thread


def _app(tmp_path, env=DEMO_ENV):
    app = create_receiver_app(tmp_path, {"whatsapp_app_secret": "s", "whatsapp_verify_token": "v"})
    return app, add_provider_routes(app, env)


def _spooled(tmp_path) -> list[dict]:
    """What the receiver spooled, read once it has stopped: stopping closes its spool file, so nothing
    acknowledged can still sit in an open one."""
    assert not list(tmp_path.glob("*.open")), "read the spool after the receiver has stopped"
    records = [decode_record(line) for f in closed_files(tmp_path) for line in f.read_bytes().splitlines()]
    return [{"provider": provider, "body": body} for provider, _, body in records]


def test_only_providers_with_a_secret_get_a_route(tmp_path):
    _, installed = _app(tmp_path, {"VIBER_AUTH_TOKEN": "t"})
    assert installed == ["viber"]


def test_viber_signed_accepted_forged_refused(tmp_path):
    app, _ = _app(tmp_path)
    body = json.dumps({"event": "delivered", "timestamp": 1750030073000, "message_token": 491266184665523145,
                       "user_id": "01234567890A="}).encode()
    with serve_in_thread(app) as url:
        forged = httpx.post(f"{url}/webhooks/viber", content=body, headers={"X-Viber-Content-Signature": "00" * 32})
        signature = viber_webhooks.sign(body, DEMO_ENV["VIBER_AUTH_TOKEN"])
        good = httpx.post(f"{url}/webhooks/viber", content=body, headers={"X-Viber-Content-Signature": signature})
    records = _spooled(tmp_path)
    assert forged.status_code == 401 and good.status_code == 200
    assert [r["provider"] for r in records] == ["viber"]


def test_twilio_signature_covers_the_url_and_the_answer_is_empty_twiml(tmp_path):
    app, _ = _app(tmp_path)
    form = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered", "To": "+447700900123"}
    with serve_in_thread(app) as url:
        target = f"{url}/webhooks/twilio?mid=m-1"
        signature = twilio_webhooks.sign(target, form, DEMO_ENV["TWILIO_AUTH_TOKEN"])
        good = httpx.post(target, data=form, headers={"X-Twilio-Signature": signature})
        moved = httpx.post(f"{url}/webhooks/twilio?mid=m-2", data=form, headers={"X-Twilio-Signature": signature})
    records = _spooled(tmp_path)
    assert good.status_code == 200 and good.text == "<Response/>"
    assert moved.status_code == 401  # the same signature on another URL is a forgery
    assert len(records) == 1 and records[0]["provider"] == "twilio"


def test_twilio_hmac_sha256_under_a_webhooks_setting_is_verified_with_its_shared_key(tmp_path):
    app, _ = _app(tmp_path, {**DEMO_ENV, "TWILIO_WEBHOOK_SHARED_KEY": "shared-key-1"})
    form = {"MessageSid": "SM" + "b" * 32, "MessageStatus": "delivered", "To": "+447700900123"}
    settings = {"X-Twilio-Webhooks-Signature-Settings": "key=WS0123,algorithm=HMAC_SHA256"}
    with serve_in_thread(app) as url:
        target = f"{url}/webhooks/twilio?mid=m-1"
        # Twilio's scheme computed here by hand: the URL, then each parameter sorted by name as name+value.
        data = (target + "".join(k + v for k, v in sorted(form.items()))).encode()
        sha256 = base64.b64encode(hmac.digest(b"shared-key-1", data, "sha256")).decode()
        good = httpx.post(target, data=form, headers={"X-Twilio-Signature": sha256, **settings})
        # The auth token's SHA-1 signature is not what a request under a Setting carries.
        sha1 = twilio_webhooks.sign(target, form, DEMO_ENV["TWILIO_AUTH_TOKEN"])
        old = httpx.post(target, data=form, headers={"X-Twilio-Signature": sha1, **settings})
        odd = httpx.post(target, data=form, headers={"X-Twilio-Signature": sha256,
                                                     "X-Twilio-Webhooks-Signature-Settings": "algorithm=MD5"})
    assert (good.status_code, old.status_code, odd.status_code) == (200, 401, 401)
    assert len(_spooled(tmp_path)) == 1
    # Without a shared key configured, a request under a Setting cannot be verified: refused.
    app2, _ = _app(tmp_path / "b")
    with serve_in_thread(app2) as url:
        target = f"{url}/webhooks/twilio?mid=m-1"
        data = (target + "".join(k + v for k, v in sorted(form.items()))).encode()
        sha256 = base64.b64encode(hmac.digest(b"shared-key-1", data, "sha256")).decode()
        assert httpx.post(target, data=form, headers={"X-Twilio-Signature": sha256, **settings}).status_code == 401


def test_alibaba_gets_its_ack_body_and_meta_its_handshake(tmp_path):
    app, _ = _app(tmp_path)
    report = json.dumps([{"phone_number": "8613800000000", "success": True, "err_code": "DELIVERED",
                          "biz_id": "1", "out_id": "m", "report_time": "2026-11-25 10:00:00"}]).encode()
    with serve_in_thread(app) as url:
        ack = httpx.post(f"{url}/webhooks/alibaba_sms", content=report,
                         headers={"X-Sms-Report-Token": DEMO_ENV["ALIBABA_SMS_REPORT_TOKEN"]})
        hello = httpx.get(f"{url}/webhooks/instagram", params={
            "hub.mode": "subscribe", "hub.verify_token": DEMO_ENV["INSTAGRAM_VERIFY_TOKEN"], "hub.challenge": "c1"})
        wrong = httpx.get(f"{url}/webhooks/instagram", params={
            "hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "c1"})
    assert ack.status_code == 200 and ack.json() == {"code": 0, "msg": "received"}
    assert hello.text == "c1" and wrong.status_code == 403
