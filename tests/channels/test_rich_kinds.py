"""Messenger, Instagram and Viber message kinds beyond text (pipeline/channels/rich.py): attachments and quick
replies on Meta's Send API, pictures and reply keyboards on Viber, each through the real dispatcher to its
sandbox, which refuses what the provider refuses; kinds a channel does not offer stop at the spec."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from pipeline.spec import SpecError, parse_spec
from pipeline.store import Store
from tests.helpers.channels import dispatch, queue
from tests.helpers.providers import MESSENGER, MESSENGER_ENV, MESSENGER_SPEC, VIBER, VIBER_ENV, VIBER_SPEC, set_env

IMAGE = {"kind": "image", "link": "https://cdn.acme.test/a.jpg"}
FILE = {"kind": "document", "link": "https://cdn.acme.test/a.pdf"}
BUTTONS = {"kind": "buttons", "buttons": [{"id": "YES", "title": "Yes please"}, {"id": "STOP", "title": "Stop"}]}


def _template(base: dict[str, Any], session: dict[str, Any]) -> dict[str, Any]:
    return {**base["template"], "session": session}


@pytest.mark.parametrize(("platform", "session", "expected"), [
    ("messenger", IMAGE, {"attachment": {"type": "image", "payload": {"url": IMAGE["link"], "is_reusable": True}}}),
    ("messenger", FILE, {"attachment": {"type": "file", "payload": {"url": FILE["link"], "is_reusable": True}}}),
    ("messenger", BUTTONS, {"text": "Hi n0, 20% off this week", "quick_replies": [
        {"content_type": "text", "title": "Yes please", "payload": "YES"},
        {"content_type": "text", "title": "Stop", "payload": "STOP"}]}),
    ("instagram", IMAGE, {"attachment": {"type": "image", "payload": {"url": IMAGE["link"], "is_reusable": True}}}),
    ("instagram", BUTTONS, None),
])
def test_meta_kinds_through_the_dispatcher(sqlite_db: Store, monkeypatch: pytest.MonkeyPatch, platform: str,
                                           session: dict, expected: dict | None) -> None:
    set_env(monkeypatch, MESSENGER_ENV)
    overrides = {"template": _template(MESSENGER_SPEC, session)}
    with MESSENGER.running(MESSENGER.config(platform=platform, fail_rate=0.0)) as (url, sandbox):
        channel = MESSENGER.channel(url, platform, **overrides)
        MESSENGER.queue(sqlite_db, channel, 3, **overrides)
        result = dispatch(sqlite_db, channel)
    assert result.sent == 3 and result.failed == 0
    first = json.loads(sqlite_db.rows("SELECT payload_json FROM outbox ORDER BY seq")[0][0])
    if expected is not None:
        assert first["message"] == expected
    assert sandbox.ledger.snapshot()["accepted"] == 3


def _post(channel: Any, body: dict) -> httpx.Response:
    request = channel.request_for(json.dumps(body))
    return httpx.post(request.url, content=request.content, headers=request.headers)


def test_the_sandbox_refuses_what_meta_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, MESSENGER_ENV)
    file = {"recipient": {"id": "7100000001"}, "messaging_type": "RESPONSE",
            "message": {"attachment": {"type": "file", "payload": {"url": FILE["link"]}}}}
    too_many = {**file, "message": {"text": "x", "quick_replies": [
        {"content_type": "text", "title": "t", "payload": str(i)} for i in range(14)]}}
    long_title = {**file, "message": {"text": "x", "quick_replies": [
        {"content_type": "text", "title": "T" * 21, "payload": "p"}]}}
    with MESSENGER.running(MESSENGER.config(fail_rate=0.0)) as (url, _):
        channel = MESSENGER.channel(url)
        assert _post(channel, file).status_code == 200  # Messenger takes files
        for body in (too_many, long_title):
            answer = _post(channel, body)
            assert answer.status_code == 400 and "quick_replies" in answer.json()["error"]["message"]
    with MESSENGER.running(MESSENGER.config(platform="instagram", fail_rate=0.0)) as (url, _):
        answer = _post(MESSENGER.channel(url, "instagram"), file)  # Instagram takes no file attachment
        assert answer.status_code == 400 and "attachment" in answer.json()["error"]["message"]


@pytest.mark.parametrize(("session", "fields"), [
    (IMAGE, {"type": "picture", "text": "Hi n0", "media": IMAGE["link"]}),
    (BUTTONS, {"type": "text", "text": "Hi n0", "keyboard": {"Type": "keyboard", "DefaultHeight": False, "Buttons": [
        {"ActionType": "reply", "ActionBody": "YES", "Text": "Yes please", "Columns": 3},
        {"ActionType": "reply", "ActionBody": "STOP", "Text": "Stop", "Columns": 3}]}}),
])
def test_viber_kinds_through_the_dispatcher(sqlite_db: Store, monkeypatch: pytest.MonkeyPatch, session: dict,
                                            fields: dict) -> None:
    set_env(monkeypatch, VIBER_ENV)
    spec = parse_spec({**VIBER_SPEC, "template": _template(VIBER_SPEC, session)})
    with VIBER.running(VIBER.config(fail_rate=0.0)) as (url, sandbox):
        channel = VIBER.channel(url, template=spec.template.model_dump(exclude_none=True))
        queue(sqlite_db, spec, channel, [f"01234567890A{i:03d}=" for i in range(2)], region="UA",
              texts=["Hi n0", "Hi n1"])
        result = dispatch(sqlite_db, channel)
    assert result.sent == 2 and result.failed == 0
    first = json.loads(sqlite_db.rows("SELECT payload_json FROM outbox ORDER BY seq")[0][0])
    assert {k: first[k] for k in fields} == fields
    assert sandbox.ledger.snapshot()["accepted"] == 2


@pytest.mark.parametrize(("base", "channel", "session"), [
    (MESSENGER_SPEC, "instagram", FILE), (VIBER_SPEC, "viber", {"kind": "video", "link": "https://a.test/v.mp4"}),
    (MESSENGER_SPEC, "messenger", {"kind": "list", "list_button": "Pick", "sections": [
        {"rows": [{"id": "a", "title": "A"}]}]}),
])
def test_a_kind_the_channel_does_not_offer_stops_at_the_spec(monkeypatch: pytest.MonkeyPatch, base: dict,
                                                              channel: str, session: dict) -> None:
    set_env(monkeypatch, {**MESSENGER_ENV, **VIBER_ENV})
    overrides = {"template": _template(base, session)}
    with pytest.raises(SpecError, match="template.session.kind"):
        if channel == "viber":
            VIBER.channel("http://127.0.0.1:1", **overrides)
        else:
            MESSENGER.channel("http://127.0.0.1:1", channel, **overrides)
