"""render_messages, check_template and build_whatsapp_components."""

from __future__ import annotations

import json

import polars as pl
import pytest

import pipeline.render.templates as templates
from pipeline.records import REJECTS_SCHEMA
from pipeline.render.templates import TemplateProblem, build_whatsapp_components, check_template, render_messages
from pipeline.spec import ButtonSpec, TemplateSpec

WELCOME = TemplateSpec(
    name="welcome_offer",
    language="en_US",
    category="marketing",
    text="Hi {{ first_name }}, show code {{ code }} in our {{ city }} store.",
    body=["{{ first_name }}", "{{ code }}", "{{ city }}"],
    buttons=[{"sub_type": "quick_reply", "payload": "STOP_PROMOS"}],
)
VARIABLES = {"first_name": "first_name", "code": "coupon", "city": "city"}


def frame(rows: list[tuple]) -> pl.DataFrame:
    columns = ("first_name", "coupon", "city")
    data = pl.DataFrame([list(r) for r in rows], schema=dict.fromkeys(columns, pl.String), orient="row")
    return data.with_row_index("row_number", offset=2).with_columns(pl.col("row_number").cast(pl.Int64))


def test_renders_text_and_params() -> None:
    rendered, rejects = render_messages(
        frame([("Ann", "W-1", "Leeds"), ("José & Zoë", "W-2", "São Paulo")]), WELCOME, VARIABLES
    )
    assert rejects.height == 0 and rejects.schema == pl.Schema(REJECTS_SCHEMA)
    assert rendered.columns == ["row_number", "first_name", "coupon", "city", "text", "params_json"]
    # No HTML escaping: these are chat messages, not web pages.
    assert rendered["text"].to_list() == [
        "Hi Ann, show code W-1 in our Leeds store.",
        "Hi José & Zoë, show code W-2 in our São Paulo store.",
    ]
    assert json.loads(rendered["params_json"][1]) == {
        "header": [],
        "body": ["José & Zoë", "W-2", "São Paulo"],
        "buttons": ["STOP_PROMOS"],
    }


def test_missing_value_rejects_only_that_row_and_names_the_variable() -> None:
    rows = [("Ann", "W-1", "Leeds"), ("", "W-2", "York"), ("Bo", None, "Hull"), ("   ", "W-4", "Bath")]
    rendered, rejects = render_messages(frame(rows), WELCOME, VARIABLES)
    assert rendered["row_number"].to_list() == [2]
    assert rejects.rows() == [
        (3, "missing_variable", "first_name is empty"),
        (4, "missing_variable", "code is empty (column coupon)"),
        (5, "missing_variable", "first_name is empty"),
    ]


def test_default_filter_still_covers_a_missing_value() -> None:
    spec = WELCOME.model_copy(update={"text": "Hi {{ first_name | default('there') }}", "body": ["{{ code }}"]})
    rendered, rejects = render_messages(frame([("", "W-1", "Leeds")]), spec, VARIABLES)
    assert rejects.height == 0 and rendered["text"].to_list() == ["Hi there"]


def test_parameter_rendering_empty_is_rejected() -> None:
    spec = WELCOME.model_copy(update={"body": ["{{ first_name | default('') }}"], "text": "Hi"})
    rendered, rejects = render_messages(frame([("", "W-1", "Leeds")]), spec, VARIABLES)
    assert rendered.height == 0
    assert rejects.rows() == [(2, "missing_variable", "body parameter {{1}} renders empty")]


def test_values_are_data_never_template_code() -> None:
    rendered, _ = render_messages(frame([("{{ 7 * 7 }}", "{% raw %}", "Leeds")]), WELCOME, VARIABLES)
    assert rendered["text"][0] == "Hi {{ 7 * 7 }}, show code {% raw %} in our Leeds store."


def test_sandbox_refuses_unsafe_attribute_access() -> None:
    spec = WELCOME.model_copy(update={"text": "{{ first_name.__class__.__mro__ }}", "body": []})
    with pytest.raises(TemplateProblem, match="unsafe"):
        render_messages(frame([("Ann", "W-1", "Leeds")]), spec, VARIABLES)


def test_a_filter_failing_on_one_value_rejects_that_row() -> None:
    spec = WELCOME.model_copy(update={"text": "{{ (100 / (code | int)) | round }}", "body": []})
    rendered, rejects = render_messages(frame([("Ann", "4", "Leeds"), ("Bo", "0", "Hull")]), spec, VARIABLES)
    assert rendered["text"].to_list() == ["25.0"]
    assert rejects["reason"].to_list() == ["bad_row"] and "ZeroDivisionError" in rejects["detail"][0]


def test_templates_are_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[str] = []
    real = templates._ENV.from_string

    def counting(source, *args, **kwargs):
        compiled.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(templates._ENV, "from_string", counting)
    render_messages(frame([("Ann", "W-1", "Leeds")] * 200), WELCOME, VARIABLES)
    assert len(compiled) == 4  # text + three body parameters


def test_check_template_finds_every_problem_up_front() -> None:
    spec = WELCOME.model_copy(
        update={"text": "Hi {{ first_name }} {{ surname }}", "header": ["{{ oops"], "buttons": []}
    )
    problems = check_template(
        spec, {"first_name": "first_name", "code": "coupon", "city": "town"}, ["first_name", "coupon"]
    )
    joined = "\n".join(problems)
    assert "'surname'" in joined
    assert "syntax error" in joined and "header parameter {{1}}" in joined
    assert "'town'" in joined and "'city'" in joined
    assert check_template(WELCOME, VARIABLES, ["first_name", "coupon", "city"]) == []


def test_render_refuses_a_broken_template_instead_of_rejecting_every_row() -> None:
    spec = WELCOME.model_copy(update={"text": "Hi {{ nickname }}"})
    with pytest.raises(TemplateProblem, match="nickname"):
        render_messages(frame([("Ann", "W-1", "Leeds")]), spec, VARIABLES)


def test_url_button_is_rendered_and_quick_reply_payload_is_fixed() -> None:
    spec = WELCOME.model_copy(
        update={
            "header": ["{{ first_name }}"],
            "buttons": [
                ButtonSpec(sub_type="url", text="offer/{{ code }}"),
                ButtonSpec(sub_type="quick_reply", payload="STOP_PROMOS"),
            ],
        }
    )
    rendered, _ = render_messages(frame([("Ann", "W-1", "Leeds")]), spec, VARIABLES)
    params = json.loads(rendered["params_json"][0])
    assert params["header"] == ["Ann"] and params["buttons"] == ["offer/W-1", "STOP_PROMOS"]

    assert build_whatsapp_components(spec, rendered["params_json"][0]) == [
        {"type": "header", "parameters": [{"type": "text", "text": "Ann"}]},
        {
            "type": "body",
            "parameters": [
                {"type": "text", "text": "Ann"},
                {"type": "text", "text": "W-1"},
                {"type": "text", "text": "Leeds"},
            ],
        },
        {"type": "button", "sub_type": "url", "index": "0", "parameters": [{"type": "text", "text": "offer/W-1"}]},
        {
            "type": "button",
            "sub_type": "quick_reply",
            "index": "1",
            "parameters": [{"type": "payload", "payload": "STOP_PROMOS"}],
        },
    ]


def test_components_leave_out_empty_parts() -> None:
    spec = WELCOME.model_copy(update={"body": [], "buttons": []})
    assert build_whatsapp_components(spec, {"header": [], "body": [], "buttons": []}) == []


def test_empty_frame_renders_nothing() -> None:
    rendered, rejects = render_messages(frame([]), WELCOME, VARIABLES)
    assert rendered.height == 0 and rejects.height == 0 and "params_json" in rendered.columns
