"""Free-form messages inside the 24-hour window: who gets one (the store's last inbound), every kind's body valid
to Meta's schema and sent through the dispatcher to the sandbox, the template (or an `outside_window` reject)
for the rest, and the same through Chat App as `Type=message` with `MessageType` and `Content`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from alibabacloud_cams20200606 import models as sdk

from pipeline.audience.windows import session_window
from pipeline.channels.base import Outgoing
from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.dispatch.outbox import enqueue_messages, register_campaign
from pipeline.render.prepare import Prepared
from pipeline.render.sessions import with_sessions
from pipeline.sandbox.chatapp import create_chatapp_app
from pipeline.sandbox.schema import validate_message
from pipeline.servers import serve_in_thread
from pipeline.spec import SpecError, TemplateSpec, parse_spec
from pipeline.store import Store, run_many
from tests.helpers.channels import dispatch
from tests.helpers.providers import CHATAPP_ENV, CHATAPP_SPEC, chatapp_channel, chatapp_config, set_env
from tests.helpers.whatsapp import SPEC, TOKEN, config, running
from tests.helpers.whatsapp import channel as whatsapp_channel

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
SESSIONS = {
    "text": {"kind": "text"},
    "image": {"kind": "image", "link": "https://cdn.acme.test/a.jpg"},
    "video": {"kind": "video", "link": "https://cdn.acme.test/a.mp4"},
    "document": {"kind": "document", "link": "https://cdn.acme.test/a.pdf", "filename": "offer.pdf"},
    "buttons": {"kind": "buttons", "buttons": [{"id": "YES", "title": "Yes please"}, {"id": "STOP", "title": "Stop"}]},
    "list": {"kind": "list", "list_button": "Choose", "sections": [
        {"title": "Stores", "rows": [{"id": "LON", "title": "London", "description": "Oxford St"},
                                     {"id": "PAR", "title": "Paris"}]}]},
}
FRAME = pl.DataFrame({"row_number": [2, 3, 4], "phone_e164": ["+447700900001", "+447700900002", "+447700900003"],
                      "region": ["GB"] * 3, "number_type": ["mobile"] * 3, "text": ["Hi Ann", "Hi Bo", "Hi Cy"],
                      "params_json": ['{"header": [], "body": ["Ann"], "buttons": []}', "{}",
                                      '{"header": [], "body": ["Cy"], "buttons": []}']})
LAST = {"+447700900001": NOW - timedelta(hours=2), "+447700900002": NOW - timedelta(hours=23),
        "+447700900003": NOW - timedelta(hours=25)}


def spec_with(kind: str, outside: str = "template"):  # noqa: ANN201
    template = {**SPEC["template"], "session": {**SESSIONS[kind], "outside_window": outside}}
    return parse_spec({**SPEC, "senders": [], "template": template})


def test_open_windows_get_the_session_message_the_rest_the_template_or_a_reject() -> None:
    queued, none = session_window(FRAME, last_inbound=LAST, now=NOW, outside="template")
    assert none.is_empty() and queued["row_number"].to_list() == [2, 3, 4]
    assert [json.loads(p).get("session") for p in queued["params_json"]] == [["1"], ["1"], None]
    assert json.loads(queued["params_json"][0])["body"] == ["Ann"]  # the rest of the params kept
    queued, rejects = session_window(FRAME, last_inbound=LAST, now=NOW, outside="reject")
    assert queued["row_number"].to_list() == [2, 3]
    assert rejects.select("row_number", "reason").rows() == [(4, "outside_window")]


@pytest.mark.parametrize("kind", sorted(SESSIONS))
def test_each_kind_is_valid_to_metas_schema(kind: str) -> None:
    spec = spec_with(kind)
    payload = whatsapp_channel().build_payload(Outgoing(message_id="m-1", to="+447700900001", text="Hi Ann",
                                                        params={"session": ["1"]}, template=spec.template))
    assert validate_message(payload) == [], payload
    assert payload["type"] == ("interactive" if kind in ("buttons", "list") else kind)
    assert payload["biz_opaque_callback_data"] == "m-1"
    # Without the mark the same spec sends its template.
    template = whatsapp_channel().build_payload(Outgoing(message_id="m-2", to="+447700900003", text="Hi Cy",
                                                         params={"body": ["Cy"]}, template=spec.template))
    assert template["type"] == "template" and validate_message(template) == []


def _inbound(db: Store, *senders: str, at: datetime) -> None:
    with db.write() as conn:
        run_many(conn, "INSERT INTO inbound (event_id, provider, sender, text, occurred_at, raw_json) "
                       "VALUES (:e, 'whatsapp', :s, 'hi', :at, '{}')",
                 [{"e": f"in-{s}", "s": s, "at": at} for s in senders])


@pytest.mark.parametrize("kind", ["text", "buttons", "list", "document"])
def test_through_the_dispatcher_to_the_sandbox(sqlite_db: Store, kind: str) -> None:
    spec = spec_with(kind)
    _inbound(sqlite_db, "447700900001", at=datetime.now(UTC) - timedelta(hours=1))  # Meta names senders by digits
    frame = FRAME.with_columns(pl.lit('{"header": [], "body": ["x"], "buttons": []}').alias("params_json"))
    prepared = with_sessions(sqlite_db, spec, Prepared(accepted=frame, rejects=FRAME.clear().select("row_number")
                                                       .with_columns(reason=pl.lit(""), detail=pl.lit("")),
                                                       rows_read=3, counts={}))
    register_campaign(sqlite_db, spec, "t")
    with running(config(fail_rate=0.0)) as client:
        channel = WhatsAppChannel(base_url=str(client.base_url), api_version="v23.0", phone_number_id="111",
                                  access_token=TOKEN)
        enqueue_messages(sqlite_db, spec, "t", channel, prepared.accepted)
        result = dispatch(sqlite_db, channel)
        stats = client.get("/_sandbox/stats").json()
    assert result.sent == 3 and stats["accepted"] == 3 and not stats.get("rejected")
    kinds = sorted(json.loads(p)["type"] for (p,) in sqlite_db.rows("SELECT payload_json FROM outbox"))
    assert kinds == sorted([("interactive" if kind in ("buttons", "list") else kind), "template", "template"])


def test_reject_outside_the_window_and_only_whatsapp(sqlite_db: Store) -> None:
    spec = spec_with("text", outside="reject")
    _inbound(sqlite_db, "447700900002", at=datetime.now(UTC) - timedelta(hours=3))
    empty = FRAME.clear().select("row_number").with_columns(reason=pl.lit(""), detail=pl.lit(""))
    prepared = with_sessions(sqlite_db, spec, Prepared(accepted=FRAME, rejects=empty, rows_read=3, counts={}))
    assert prepared.accepted["row_number"].to_list() == [3]
    assert prepared.counts == {"outside_window": 2} and prepared.rejects["row_number"].to_list() == [2, 4]
    sms = parse_spec({**SPEC, "channel": "sms", "template": {**SPEC["template"], "session": {"kind": "text"}}})
    with pytest.raises(SpecError, match="free-form session messages go to WhatsApp"):
        with_sessions(sqlite_db, sms, prepared)


def test_the_spec_refuses_incomplete_session_messages() -> None:
    for bad in ({"kind": "image"}, {"kind": "buttons"}, {"kind": "list", "list_button": "x"},
                {"kind": "text", "link": "https://a.test/x"}):
        with pytest.raises(ValueError):
            TemplateSpec.model_validate({"name": "t", "language": "en", "category": "utility", "text": "x",
                                         "session": bad})


@pytest.mark.parametrize("kind", ["text", "image", "document", "buttons"])
def test_through_chat_app_as_type_message(sqlite_db: Store, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    set_env(monkeypatch, CHATAPP_ENV)
    template = {**CHATAPP_SPEC["template"], "session": SESSIONS[kind]}
    app = create_chatapp_app(chatapp_config())
    with serve_in_thread(app) as url:
        channel = chatapp_channel(url, template=template)
        spec = parse_spec({**CHATAPP_SPEC, "template": template})
        payload = channel.build_payload(Outgoing(message_id="m-1", to="+6591000001", text="Hi Ann",
                                                 params={"session": ["1"]}, template=spec.template))
        frame = pl.DataFrame({"row_number": [2], "phone_e164": ["+6591000001"], "region": ["SG"],
                              "number_type": ["mobile"], "text": ["Hi Ann"], "params_json": ['{"session": ["1"]}']})
        register_campaign(sqlite_db, spec, "t")
        enqueue_messages(sqlite_db, spec, "t", channel, frame)
        assert dispatch(sqlite_db, channel).sent == 1
    ((action, sent),) = list(app.state.sandbox.requests)
    assert action == "SendChatappMessage" and sent["Type"] == "message"
    assert sent["MessageType"] == ("interactive" if kind == "buttons" else kind)
    content = json.loads(sent["Content"])
    assert content.get("text") == "Hi Ann" or content.get("caption") == "Hi Ann" or content["body"]["text"] == "Hi Ann"
    model = sdk.SendChatappMessageShrinkRequest().from_map(sent)
    assert model.to_map() == sent and "TemplateParams" not in payload
