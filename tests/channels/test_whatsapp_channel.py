"""The WhatsApp channel: requests valid to Meta's OpenAPI schema, answers classified right."""

from __future__ import annotations

import json

import httpx
import pytest

from pipeline.channels.base import Outgoing
from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.sandbox.schema import validate_message
from pipeline.spec import TemplateSpec

CHANNEL = WhatsAppChannel(base_url="https://graph.facebook.com", api_version="v23.0", phone_number_id="1065",
                          access_token="tok")

TEMPLATES = {
    "body only": (TemplateSpec(name="t", language="en", category="utility", text="x", body=["{{ a }}"]),
                  {"body": ["A-1001"]}),
    "header, body, buttons": (
        TemplateSpec(name="order_update", language="en_US", category="marketing", text="x",
                     header=["{{ a }}"], body=["{{ a }}", "{{ b }}"],
                     buttons=[{"sub_type": "url", "text": "{{ a }}"},
                              {"sub_type": "quick_reply", "payload": "STOP_PROMOS"}]),
        {"header": ["Jane"], "body": ["A-1001", "tomorrow"], "buttons": ["A-1001"]},
    ),
    "no parameters": (TemplateSpec(name="hello_world", language="en_US", category="utility", text="Hello"), {}),
}


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_every_template_kind_we_send_validates_against_metas_schema(kind):
    template, params = TEMPLATES[kind]
    payload = CHANNEL.build_payload(
        Outgoing(message_id="m-1", to="+447700900123", params=params, template=template)
    )
    assert validate_message(payload) == []
    assert payload["to"] == "447700900123" and payload["biz_opaque_callback_data"] == "m-1"
    request = CHANNEL.request_for(json.dumps(payload))
    assert request.url == "https://graph.facebook.com/v23.0/1065/messages"
    assert request.headers["Authorization"] == "Bearer tok"


def test_the_schema_check_is_not_vacuous():
    template, params = TEMPLATES["header, body, buttons"]
    payload = CHANNEL.build_payload(Outgoing(message_id="m", to="+44770", params=params, template=template))
    del payload["template"]["components"][2]["sub_type"]
    assert validate_message(payload)


def _error(code: int, status: int = 400, headers: dict | None = None):
    body = json.dumps({"error": {"message": f"(#{code})", "type": "OAuthException", "code": code,
                                 "error_data": {"details": "d"}}}).encode()
    return CHANNEL.classify_response(status, body, httpx.Headers(headers or {}))


@pytest.mark.parametrize(
    ("code", "status", "kind", "throttled"),
    [
        (130429, 429, "retry", True),
        (131056, 400, "retry", False),
        (131000, 500, "retry", False),
        (131026, 400, "permanent", False),
        (131050, 400, "permanent", False),
        (132015, 400, "stop", False),
        *[(code, 400, "stop", False) for code in (132001, 132005, 132007, 132012, 132016)],
        (368, 400, "stop", False),
        (190, 401, "stop", False),
    ],
)
def test_meta_error_codes_are_classified(code, status, kind, throttled):
    outcome = _error(code, status)
    assert (outcome.kind, outcome.throttled, outcome.error_code) == (kind, throttled, str(code))


def test_131056_waits_for_that_recipient_only():
    outcome = _error(131056)
    assert outcome.kind == "retry" and not outcome.throttled and outcome.retry_after_s >= 6


def test_131049_is_deferred_a_day_and_retry_after_is_honoured():
    assert _error(131049).retry_after_s == 24 * 3600
    assert _error(130429, 429, {"Retry-After": "7"}).retry_after_s == 7.0


def test_success_and_malformed_answers():
    ok = json.dumps({"messaging_product": "whatsapp", "contacts": [{"input": "1", "wa_id": "1"}],
                     "messages": [{"id": "wamid.X", "message_status": "accepted"}]}).encode()
    assert CHANNEL.classify_response(200, ok, httpx.Headers()).provider_message_id == "wamid.X"
    assert CHANNEL.classify_response(200, b"{}", httpx.Headers()).kind == "permanent"
    assert CHANNEL.classify_response(502, b"<html>", httpx.Headers()).kind == "retry"
