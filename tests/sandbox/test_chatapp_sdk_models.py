"""Chat App requests against Alibaba's own SDK models (`alibabacloud_cams20200606`): the sandbox's parameter
sets are the models' own; every request the project sends (single and mass sends with header, body, URL and
quick-reply values, fallback settings, template sync and submit) names only parameters its model has and
reads back through the model unchanged; and the official client's own mass send is accepted by the sandbox."""

from __future__ import annotations

import inspect
import json
import re
from typing import Any

import pytest
from alibabacloud_cams20200606 import models as sdk
from alibabacloud_cams20200606.client import Client
from alibabacloud_tea_openapi import models as openapi

from pipeline.channels.template_sync import submit, sync
from pipeline.sandbox.chatapp import create_chatapp_app
from pipeline.sandbox.chatapp_params import PARAMETERS, SENDER_LIST_ITEM
from pipeline.sandbox.whatsapp_templates import SandboxTemplate
from pipeline.servers import serve_in_thread
from pipeline.spec import parse_spec
from pipeline.store import Store
from tests.helpers.channels import dispatch, queue
from tests.helpers.providers import (
    CHATAPP_ENV,
    CHATAPP_KEY_ID,
    CHATAPP_KEY_SECRET,
    CHATAPP_SPEC,
    chatapp_channel,
    chatapp_config,
    chatapp_single_and_mass,
    set_env,
)

HEADER = {"type": "HEADER", "format": "TEXT", "text": "Hello {{1}}"}
BODY = {"type": "BODY", "text": "Hi {{1}}, your code is {{2}}."}
BUTTONS = {"type": "BUTTONS", "buttons": [{"type": "URL", "text": "Open", "url": "https://acme.test/o/{{1}}"},
                                          {"type": "QUICK_REPLY", "text": "Stop promotions"}]}
TEMPLATE = {"name": "promo_v1", "language": "en", "category": "marketing", "text": "Hi {{ n }}",
            "header": ["{{ n }}"], "body": ["{{ n }}", "{{ n }}"],
            "buttons": [{"sub_type": "url", "text": "{{ n }}"},
                        {"sub_type": "quick_reply", "payload": "STOP_PROMOS", "opt_out": True},
                        {"sub_type": "flow", "text": "{{ n }}", "flow_action_data": {"screen": "OFFER"}}]}
OPTIONS = {"channel_type": "whatsapp", "cust_space_id": "cams-8c8test", "fallback_id": "S00001",
           "fallback_duration_s": 600, "fallback_rule": "undelivered"}


def _wire_names(model: type) -> set[str]:
    return set(re.findall(r"result\['(\w+)'\]", inspect.getsource(model.to_map)))


def _request_model(action: str) -> type:
    return getattr(sdk, f"{action}ShrinkRequest", None) or getattr(sdk, f"{action}Request")


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, CHATAPP_ENV)


def test_the_sandboxs_parameter_sets_are_the_sdks() -> None:
    for action, names in PARAMETERS.items():
        assert names == _wire_names(_request_model(action)), action
    assert SENDER_LIST_ITEM == _wire_names(sdk.SendChatappMassMessageRequestSenderList)


def _check(action: str, params: dict[str, str]) -> None:
    model = _request_model(action)()
    model.from_map(params)
    assert model.to_map() == params, f"{action}: a parameter the SDK model lacks or reads differently"
    if action == "SendChatappMassMessage":
        for item in json.loads(params["SenderList"]):
            assert sdk.SendChatappMassMessageRequestSenderList().from_map(item).to_map() == item


def test_every_request_the_project_sends_is_one_the_sdk_models(sqlite_db: Store) -> None:
    template = SandboxTemplate(name="promo_v1", language="en", components=[HEADER, BODY, BUTTONS])
    spec = {"template": TEMPLATE, "provider": {"options": OPTIONS}}
    params = [json.dumps({"header": [f"n{i}"], "body": [f"n{i}", "7"],
                          "buttons": [f"c{i}", "STOP_PROMOS", f"f{i}"]}) for i in range(3)]
    app = create_chatapp_app(chatapp_config(template_set=[template]))
    with serve_in_thread(app) as url:
        chatapp_single_and_mass(sqlite_db, url, spec, ["+6591000001", "+6591000002", "+6591000003"], params)
        full = parse_spec({**CHATAPP_SPEC, **spec, "provider": {"options": {**OPTIONS, "template_registry": True}}})
        sync(sqlite_db, full, base_url=url)
        submit(sqlite_db, full, {"name": "promo_v9", "language": "en", "category": "MARKETING",
                                 "components": [{"type": "BODY", "text": "Hi {{1}}, welcome.",
                                                 "example": {"body_text": [["Ann"]]}}]}, base_url=url)
    seen = list(app.state.sandbox.requests)
    actions = [action for action, _ in seen]
    assert actions.count("SendChatappMessage") == 3 and actions.count("SendChatappMassMessage") == 1
    assert {"ListChatappTemplate", "GetChatappTemplateDetail", "QueryChatappPhoneNumbers",
            "CreateChatappTemplate"} <= set(actions)
    for action, sent in seen:
        _check(action, sent)
    # The three single sends leave concurrently, in any order: the first recipient's is the one naming n0.
    single = next(p for a, p in seen if a == "SendChatappMessage" and '"n0"' in p["TemplateParams"])
    # Header, body and button values reach the provider, with the quick reply's payload and the fallback.
    assert json.loads(single["TemplateParams"]) == {"1": "n0", "2": "7", "header.1": "n0", "button.0": "c0"}
    assert json.loads(single["Payload"]) == ["STOP_PROMOS"]
    assert json.loads(single["FlowAction"]) == {"FlowToken": "f0", "FlowActionData": {"screen": "OFFER"}}
    assert (single["FallBackId"], single["FallBackDuration"], single["FallBackRule"]) == ("S00001", "600",
                                                                                        "undelivered")
    mass_call = next(p for a, p in seen if a == "SendChatappMassMessage")
    assert "Type" not in mass_call
    assert json.loads(mass_call["SenderList"])[2] == {
        "To": "6591000003", "Payload": ["STOP_PROMOS"], "FlowAction": {"FlowToken": "f2",
                                                                       "FlowActionData": {"screen": "OFFER"}},
        "TemplateParams": {"1": "n2", "2": "7", "header.1": "n2", "button.0": "c2"}}


def test_a_template_send_missing_its_header_or_button_values_is_refused(sqlite_db: Store) -> None:
    template = SandboxTemplate(name="promo_v1", language="en", components=[HEADER, BODY, BUTTONS])
    with serve_in_thread(create_chatapp_app(chatapp_config(template_set=[template]))) as url:
        channel = chatapp_channel(url)
        queue(sqlite_db, parse_spec(CHATAPP_SPEC), channel, ["+6591000001"], params=[json.dumps({"body": ["n"]})])
        result = dispatch(sqlite_db, channel)
    assert result.failed == 1
    assert sqlite_db.rows("SELECT error_code FROM outbox") == [("InvalidParameter.TemplateParams",)]


def test_the_official_clients_mass_send_is_accepted() -> None:
    app = create_chatapp_app(chatapp_config())
    with serve_in_thread(app) as url:
        config = openapi.Config(access_key_id=CHATAPP_KEY_ID, access_key_secret=CHATAPP_KEY_SECRET,
                                endpoint=url.removeprefix("http://"), protocol="http", region_id="ap-southeast-1")
        request = sdk.SendChatappMassMessageRequest(
            channel_type="whatsapp", from_="8613100000001", template_name="promo_v1", language="en",
            cust_space_id="cams-8c8test", task_id="sdk-1",
            sender_list=[sdk.SendChatappMassMessageRequestSenderList(to="6591000001", template_params={"1": "Ann"})])
        answer: Any = Client(config).send_chatapp_mass_message(request)
    assert answer.body.code == "OK" and answer.body.group_message_id
    assert [a for a, _ in app.state.sandbox.requests] == ["SendChatappMassMessage"]
