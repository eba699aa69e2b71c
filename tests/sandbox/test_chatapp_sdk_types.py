"""Every Chat App request the project sends, checked against the *types* of Alibaba's SDK models
(`alibabacloud_cams20200606`), not only their names: each parameter's value has the type the model declares
(TemplateParams a Dict[str, str], Payload a List[str], FallBackDuration and Ttl integers, FlowAction and SenderList
items the nested models, recursively), and the model's from_map/to_map round trip keeps every key. Requests are
built by the channel through the dispatcher and read back from what the sandbox received: template sends with text
and media headers, URL / copy-code / quick-reply / flow buttons, carousel cards, fallback, Viber's label and TTL and
Messenger recipients by id, single and mass."""

from __future__ import annotations

import inspect
import json
import re
import typing
from typing import Any

import pytest
from alibabacloud_cams20200606 import models as sdk
from darabonba.model import DaraModel

from pipeline.sandbox.chatapp import create_chatapp_app
from pipeline.sandbox.whatsapp_templates import SandboxTemplate
from pipeline.servers import serve_in_thread
from pipeline.spec import SpecError, parse_spec
from pipeline.store import Store
from tests.helpers import providers
from tests.helpers.channels import dispatch, queue

BODY = ["{{ n }}", "{{ n }}"]
SPECS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "text header, buttons, fallback": ({"template": {
        "name": "promo_v1", "language": "en", "category": "marketing", "text": "Hi {{ n }}", "header": ["{{ n }}"],
        "body": BODY, "buttons": [{"sub_type": "url", "text": "{{ n }}"}, {"sub_type": "copy_code", "text": "{{ n }}"},
                                  {"sub_type": "quick_reply", "payload": "STOP_PROMOS", "opt_out": True},
                                  {"sub_type": "flow", "text": "{{ n }}", "flow_action_data": {"screen": "OFFER"}}]},
        "provider": {"options": {"channel_type": "whatsapp", "cust_space_id": "cams-8c8test", "fallback_id": "S00001",
                                 "fallback_content": "Offer inside", "fallback_duration_s": 600,
                                 "fallback_rule": "sentFailed"}}},
        {"header": ["Ann"], "body": ["Ann", "7"], "buttons": ["o/1", "C-1", "STOP_PROMOS", "tok-1"]}),
    "image header by link": ({"template": {
        "name": "promo_img", "language": "en", "category": "marketing", "text": "Hi {{ n }}", "body": BODY,
        "header_media": {"format": "document", "link": "{{ n }}", "filename": "offer.pdf"}}},
        {"header": ["https://cdn.acme.test/o.pdf"], "body": ["Ann", "7"]}),
    "carousel": ({"template": {
        "name": "cards", "language": "en", "category": "marketing", "text": "Hi {{ n }}", "body": ["{{ n }}"],
        "cards": [{"header_media": {"format": "image", "link": "{{ n }}"}, "body": ["{{ n }}"],
                   "buttons": [{"sub_type": "url", "text": "{{ n }}"}]},
                  {"header_media": {"format": "video", "link": "{{ n }}"}, "body": ["{{ n }}"]}]}},
        {"body": ["Ann"], "cards": ["https://cdn.acme.test/a.jpg", "C-1", "u/1", "https://cdn.acme.test/v.mp4", "x"]}),
    "viber label and ttl": ({"provider": {"options": {"channel_type": "viber", "template_code": "1119001",
                                                      "viber_ttl_s": 3600}}}, {"body": ["Ann"]}),
    "messenger by id": ({"provider": {"options": {"channel_type": "messenger"}}}, {"body": ["Ann"]}),
}


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    providers.set_env(monkeypatch, providers.CHATAPP_ENV)


def _fields(model: type[DaraModel]) -> dict[str, Any]:
    """Wire name -> declared type, as the model's own to_map names them."""
    source = inspect.getsource(model.to_map)
    names = dict(re.findall(r"result\['(\w+)'\] = self\.(\w+)", source))  # plain values and nested models
    names |= dict(re.findall(r"result\['(\w+)'\] = \[\]\s+if self\.(\w+) is not None", source))  # model lists
    hints = typing.get_type_hints(model.__init__)
    return {wire: hints[attribute] for wire, attribute in names.items()}


def _problems(value: Any, hint: Any, where: str, wire: bool) -> list[str]:
    """Why `value` is not of the SDK's declared type `hint` (a form parameter on the wire is text: a number as its
    digits, a list or object as JSON)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if wire and isinstance(value, str) and hint is not str:
        if hint is int:
            return [] if re.fullmatch(r"-?\d+", value) else [f"{where}: {value!r} is not an integer"]
        try:
            value = json.loads(value)
        except ValueError:
            return [f"{where}: {value!r} is not JSON for {hint}"]
    if isinstance(hint, type) and issubclass(hint, DaraModel):
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not an object ({hint.__name__})"]
        return _check(hint, value, where, wire=False)
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not a list"]
        return [p for i, item in enumerate(value) for p in _problems(item, args[0], f"{where}[{i}]", wire=False)]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not an object"]
        return [p for k, v in value.items() for p in
                (_problems(k, args[0], f"{where} key", False) + _problems(v, args[1], f"{where}.{k}", False))]
    if hint is Any:
        return []
    expected = {str: str, int: int, bool: bool}[hint]
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    return [] if ok else [f"{where}: {value!r} is not {expected.__name__}"]


def _check(model: type[DaraModel], params: dict[str, Any], where: str, wire: bool) -> list[str]:
    fields = _fields(model)
    problems = [f"{where}.{name}: not in {model.__name__}" for name in params if name not in fields]
    problems += [p for name, value in params.items() if name in fields
                 for p in _problems(value, fields[name], f"{where}.{name}", wire)]
    decoded = {k: (json.loads(v) if wire and isinstance(v, str) and fields.get(k) not in (str, int) else v)
               for k, v in params.items()}
    if not problems and model().from_map(decoded).to_map() != decoded:
        problems.append(f"{where}: the SDK's from_map/to_map round trip changes it")
    return problems


def test_the_checker_finds_what_the_models_refuse() -> None:
    request = sdk.SendChatappMessageRequest
    assert _check(request, {"TemplateParams": '{"1": 7}'}, "x", wire=True) == ["x.TemplateParams.1: 7 is not str"]
    assert _check(request, {"Payload": '"STOP"'}, "x", wire=True) == ["x.Payload: 'STOP' is not a list"]
    assert _check(request, {"Ttl": "an hour"}, "x", wire=True) == ["x.Ttl: 'an hour' is not an integer"]
    assert _check(request, {"FlowAction": '{"Token": "t"}'}, "x", wire=True) == [
        "x.FlowAction.Token: not in SendChatappMessageRequestFlowAction"]
    assert _check(request, {"Priority": "1"}, "x", wire=True) == ["x.Priority: not in SendChatappMessageRequest"]


@pytest.mark.parametrize("kind", SPECS)
def test_every_request_has_the_sdk_models_types(sqlite_db: Store, kind: str) -> None:
    spec, values = SPECS[kind]
    app = create_chatapp_app(providers.chatapp_config())
    with serve_in_thread(app) as url:
        to = ["7100000000000001", "7100000000000002"] if "messenger" in kind else ["+6591000001", "+6591000002"]
        providers.chatapp_single_and_mass(sqlite_db, url, spec, to, [json.dumps(values)] * 2)
    seen = [(action, params) for action, params in app.state.sandbox.requests if action.startswith("SendChatapp")]
    assert [a for a, _ in seen] == ["SendChatappMessage"] * 2 + ["SendChatappMassMessage"]
    problems = [p for action, params in seen
                for p in _check(getattr(sdk, f"{action}Request"), params, action, wire=True)]
    assert problems == []


# --- a copy-code button's coupon: under the template's own variable -------------------------------------------------

COUPON_BODY = {"type": "BODY", "text": "Hi {{1}}, here is your code."}


def _coupon_template(variable: str) -> SandboxTemplate:
    return SandboxTemplate(name="coupon_v1", language="en", components=[COUPON_BODY, {
        "type": "BUTTONS", "buttons": [{"type": "COPY_CODE", "text": "Copy code", "coupon_code": f"$({variable})"}]}])


def _coupon_spec(variable: str | None) -> dict[str, Any]:
    button = {"sub_type": "copy_code", "text": "{{ n }}", **({"variable": variable} if variable else {})}
    return {"template": {"name": "coupon_v1", "language": "en", "category": "marketing", "text": "Hi {{ n }}",
                         "body": ["{{ n }}"], "buttons": [button]}}


def test_the_sdk_names_a_coupon_as_a_template_variable_given_when_sending() -> None:
    # What the key rests on (CreateChatappTemplate's COPY_CODE button): if Alibaba changes it, this fails.
    doc = inspect.getsource(sdk.CreateChatappTemplateRequestComponentsButtons.__init__)
    assert "$(couponCode) and provide the actual coupon code when sending" in doc


@pytest.mark.parametrize(("declared", "spec_variable"), [("couponCode", None), ("promo", "promo")])
def test_a_coupon_travels_under_the_templates_variable(sqlite_db: Store, declared: str, spec_variable: str | None,
                                                       ) -> None:
    app = create_chatapp_app(providers.chatapp_config(template_set=[_coupon_template(declared)]))
    params = [json.dumps({"body": [f"n{i}"], "buttons": [f"SPRING-{i}"]}) for i in range(2)]
    with serve_in_thread(app) as url:
        providers.chatapp_single_and_mass(sqlite_db, url, _coupon_spec(spec_variable), ["+6591000001", "+6591000002"],
                                          params)
    single = [json.loads(p["TemplateParams"]) for a, p in app.state.sandbox.requests if a == "SendChatappMessage"]
    # The two sends leave concurrently: in either order, each with its own row's coupon.
    expected = [{"1": "n0", declared: "SPRING-0"}, {"1": "n1", declared: "SPRING-1"}]
    assert sorted(single, key=lambda p: p["1"]) == expected


def test_a_coupon_under_another_name_is_refused(sqlite_db: Store) -> None:
    app = create_chatapp_app(providers.chatapp_config(template_set=[_coupon_template("promo")]))
    with serve_in_thread(app) as url:
        channel = providers.chatapp_channel(url, **_coupon_spec(None))
        queue(sqlite_db, parse_spec({**providers.CHATAPP_SPEC, **_coupon_spec(None)}), channel, ["+6591000001"],
              params=[json.dumps({"body": ["n"], "buttons": ["SPRING-1"]})])
        assert dispatch(sqlite_db, channel).failed == 1
    assert sqlite_db.rows("SELECT error_detail FROM outbox") == [("TemplateParams lacks promo.",)]
    with pytest.raises(SpecError, match="only a copy_code button takes 'variable'"):
        parse_spec({**providers.CHATAPP_SPEC, "template": {**providers.CHATAPP_SPEC["template"], "buttons": [
            {"sub_type": "url", "text": "{{ n }}", "variable": "x"}]}})
