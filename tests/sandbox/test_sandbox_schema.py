"""Send-body validation against Meta's published `Message` schema (plus recorded deviations)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from pipeline.sandbox import schema as sch
from pipeline.sandbox.schema import validate_message
from pipeline.sandbox.shapes import ShapeMasker


def template_body(**overrides: Any) -> dict[str, Any]:
    """docs/providers.md §1.2, with the fields the published spec requires."""
    body = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "15551234567",
        "type": "template",
        "template": {
            "name": "order_update",
            "language": {"code": "en_US", "policy": "deterministic"},
            "components": [
                {"type": "header", "parameters": [{"type": "text", "text": "Jane"}]},
                {"type": "body", "parameters": [
                    {"type": "text", "text": "A-1001"}, {"type": "text", "text": "tomorrow"},
                ]},
                {"type": "button", "sub_type": "url", "index": "0",
                 "parameters": [{"type": "text", "text": "A-1001"}]},
                {"type": "button", "sub_type": "quick_reply", "index": "1",
                 "parameters": [{"type": "payload", "payload": "STOP_PROMOS"}]},
            ],
        },
        "biz_opaque_callback_data": "campaign42:recipient9001",
    }
    body.update(overrides)
    return body


def text_body(**overrides: Any) -> dict[str, Any]:
    body = {"messaging_product": "whatsapp", "to": "15551234567", "type": "text",
            "text": {"preview_url": False, "body": "Hello"}}
    body.update(overrides)
    return body


def test_template_message_from_providers_md_is_valid() -> None:
    assert validate_message(template_body()) == []


def test_examples_without_recipient_type_or_policy_are_valid() -> None:
    body = template_body()
    del body["recipient_type"]
    del body["template"]["language"]["policy"]
    assert validate_message(body) == []


def test_text_message_is_valid_despite_the_published_allof() -> None:
    assert validate_message(text_body(biz_opaque_callback_data="c1", context={"message_id": "wamid.X"})) == []


def test_published_spec_alone_refuses_a_correct_text_message() -> None:
    # Why the deviations exist: without them Meta's own text example fails validation.
    extracted = json.loads(sch.SCHEMA_JSON.read_text(encoding="utf-8"))
    raw = copy.deepcopy(extracted)
    sch._translate_discriminators(raw["$defs"])
    errors = list(Draft202012Validator(raw).iter_errors(text_body(recipient_type="individual")))
    assert errors, "the published TextMessage schema was expected to refuse Meta's example"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda b: b.pop("to"), "$: 'to' is a required property"),
        (lambda b: b.update(to=15551234567), "$.to: 15551234567 is not of type 'string'"),
        (lambda b: b.update(type="templat"), "$.type: 'templat' is not one of"),
        (lambda b: b.pop("type"), "$: 'type' is a required property"),
        (lambda b: b.update(recipient_type="person"), "$.recipient_type: 'person' is not one of"),
        (lambda b: b["template"].pop("name"), "$.template: 'name' is a required property"),
        (lambda b: b["template"]["language"].update(policy="fallback"), "$.template.language.policy:"),
        (lambda b: b["template"]["components"].append({"type": "footer"}),
         "$.template.components[4].type: 'footer' is not one of"),
        (lambda b: b["template"]["components"][2].pop("sub_type"),
         "$.template.components[2]: 'sub_type' is a required property"),
        (lambda b: b["template"]["components"][2].update(index="10"),
         "$.template.components[2].index: '10' does not match"),
        (lambda b: b["template"]["components"][1]["parameters"][0].pop("text"),
         "$.template.components[1].parameters[0]: 'text' is a required property"),
        (lambda b: b["template"]["components"][3]["parameters"][0].update(type="text"),
         "$.template.components[3].parameters[0]: 'text' is a required property"),
        (lambda b: b["template"]["components"][0]["parameters"].__setitem__(0, {"type": "image", "image": {}}),
         "$.template.components[0].parameters[0].image: 'id' is a required property or 'link'"),
        (lambda b: b.update(biz_opaque_callback_data="x" * 513),
         "$.biz_opaque_callback_data: is longer than 512 characters (513)"),
    ],
)
def test_malformed_template_messages_name_path_and_problem(mutate: Any, expected: str) -> None:
    body = template_body()
    mutate(body)
    problems = validate_message(body)
    assert any(p.startswith(expected) for p in problems), problems


def test_text_message_with_unknown_field_or_template_is_refused() -> None:
    assert validate_message(text_body(foo=1)) == ["$: Unevaluated properties are not allowed ('foo' was unexpected)"]
    problems = validate_message(text_body(template={"name": "x"}))
    assert "$: Unevaluated properties are not allowed ('template' was unexpected)" in problems


def test_non_object_bodies_are_refused() -> None:
    assert validate_message([]) == ["$: [] is not of type 'object'"]  # type: ignore[arg-type]
    assert validate_message({"status": "read"}) == ["$: 'type' is a required property"]


def test_shape_cache_never_hides_an_invalid_value() -> None:
    assert validate_message(template_body(biz_opaque_callback_data="a" * 10)) == []
    # Same shape as the cached valid body, but values the schema judges by content or length.
    assert validate_message(template_body(biz_opaque_callback_data="a" * 600))
    bad_index = template_body()
    bad_index["template"]["components"][2]["index"] = "x"
    assert validate_message(bad_index)
    bad_policy = template_body()
    bad_policy["template"]["language"]["policy"] = "latest"
    assert validate_message(bad_policy)


def test_shape_masker_keeps_judged_values_and_masks_free_text() -> None:
    masker = ShapeMasker.for_schema(sch.build_schema(json.loads(sch.SCHEMA_JSON.read_text())))
    assert masker is not None
    one = template_body(to="15550000001", biz_opaque_callback_data="c:1")
    two = template_body(to="4477009000", biz_opaque_callback_data="c:2")
    two["template"]["components"][1]["parameters"][0]["text"] = "B-2002"
    assert masker.key(one) == masker.key(two)
    three = copy.deepcopy(one)
    three["template"]["components"][2]["index"] = "2"  # `index` has a pattern: kept verbatim
    assert masker.key(one) != masker.key(three)
    assert masker.key(one) != masker.key(template_body(biz_opaque_callback_data="c" * 513))


def test_committed_json_matches_extraction_from_the_yaml() -> None:
    yaml = pytest.importorskip("yaml")
    spec = yaml.load(sch.SPEC_YAML.read_bytes(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    fresh = sch.extract(spec)
    committed = json.loads(sch.SCHEMA_JSON.read_text(encoding="utf-8"))
    assert committed["$defs"] == fresh["$defs"]
    assert committed["$ref"] == "#/$defs/Message"
    Draft202012Validator.check_schema(sch.build_schema(committed))
