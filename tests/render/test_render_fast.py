"""Templates compiled to Polars render the same bytes as Jinja2 per row: the same rows, both ways."""

from __future__ import annotations

import random

import polars as pl
import pytest

import pipeline.render.templates as templates
from pipeline.render.fast import FastTemplate, NotCompilable, json_string
from pipeline.render.templates import render_messages
from pipeline.spec import ButtonSpec, TemplateSpec

VARIABLES = {"name": "first_name", "code": "coupon", "city": "city"}
VALUES = [
    "Ann", "José", "Zoë", "straße", "ǆemal", "ΟΔΥΣΣΕΑΣ", "İstanbul", "Σ", "ﬁnn", "O'Brien", 'say "hi"',
    "back\\slash", "tab\there", "new\nline", "bell\x07", "emoji 😀", "  padded  ", "", None, "ǅ", "x\u2028y",
    "{{ 7 * 7 }}", "%s", "mixed CASE Ünïcödé", "\u00a0nbsp\u00a0", "ŉ", "ﬃ", "ᾳ",
]  # fmt: skip


def frame(rows: int, seed: int) -> pl.DataFrame:
    rng = random.Random(seed)
    data = {c: [rng.choice(VALUES) for _ in range(rows)] for c in ("first_name", "coupon", "city")}
    return (
        pl.DataFrame(data, schema=dict.fromkeys(data, pl.String))
        .with_row_index("row_number", offset=2)
        .cast({"row_number": pl.Int64})
    )


def spec(text: str, body: list[str] | None = None, header: list[str] | None = None, url: str | None = None):
    buttons = [ButtonSpec(sub_type="quick_reply", payload='STOP "now"')]
    if url:
        buttons.insert(0, ButtonSpec(sub_type="url", text=url))
    return TemplateSpec(
        name="t", language="en", category="marketing", text=text, body=body or [], header=header or [], buttons=buttons
    )


def both_ways(template: TemplateSpec, rows: pl.DataFrame, monkeypatch: pytest.MonkeyPatch):
    fast = render_messages(rows, template, VARIABLES)
    with monkeypatch.context() as m:

        def refuse(*args, **kwargs):
            raise NotCompilable("forced")

        m.setattr(templates.FastTemplate, "compile", refuse)
        slow = render_messages(rows, template, VARIABLES)
    return fast, slow


TEMPLATES = [
    spec("Hi {{ name }}, show code {{ code }} in our {{ city }} store.\n", ["{{ name }}", "{{ code }}"]),
    spec("{{ name | upper }} / {{ city | lower }} / {{ code | capitalize }}", ["{{ name | trim }}"]),
    spec("Hi {{ name | default('there') }}! {{ city | d('-', true) | replace('a', 'ä') }}", ["{{ code ~ '!' }}"]),
    spec(
        "{{ 'Dear ' ~ name | trim('x') }} {{ code | replace('O', '0', 1) }}",
        ["{{ city | default('') }}"],
        header=["{{ name | lower }}"],
        url="offer/{{ code }}?c={{ city | default('none') }}",
    ),  # fmt: skip
]


@pytest.mark.parametrize("template", TEMPLATES, ids=range(len(TEMPLATES)))
def test_compiled_templates_render_byte_identical(template: TemplateSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    assert FastTemplate.compile(templates._ENV, template, VARIABLES) is not None
    rows = frame(600, seed=len(template.text))
    (fast_rendered, fast_rejects), (slow_rendered, slow_rejects) = both_ways(template, rows, monkeypatch)
    assert fast_rendered.equals(slow_rendered)
    assert fast_rejects.equals(slow_rejects)
    assert fast_rendered.height > 50 and fast_rejects.height > 20  # both outcomes are exercised


def test_control_flow_is_left_to_jinja(monkeypatch: pytest.MonkeyPatch) -> None:
    template = spec("{% if city %}Hi {{ name }} from {{ city }}{% else %}Hi{% endif %}", ["{{ name }}"])
    with pytest.raises(NotCompilable):
        FastTemplate.compile(templates._ENV, template, VARIABLES)
    rows = frame(200, seed=3)
    (fast_rendered, fast_rejects), (slow_rendered, slow_rejects) = both_ways(template, rows, monkeypatch)
    assert fast_rendered.equals(slow_rendered) and fast_rejects.equals(slow_rejects)


@pytest.mark.parametrize(
    "source",
    [
        "{{ name.upper() }}",
        "{{ name | title }}",
        "{{ name | replace('', 'x') }}",
        "{% for c in city %}{{ c }}{% endfor %}",
        "{{ name | default(code) }}",
        "{{ 7 }}",
        "{{ name | upper(1) }}",
    ],  # fmt: skip
)
def test_what_is_not_compiled(source: str) -> None:
    with pytest.raises(NotCompilable):
        FastTemplate.compile(templates._ENV, spec(source), VARIABLES)


def test_missing_variable_named_in_jinja_evaluation_order(monkeypatch: pytest.MonkeyPatch) -> None:
    template = spec("{{ city }} {{ name }}", ["{{ code }}", "{{ name }}"])
    rows = pl.DataFrame(
        {"row_number": [2, 3, 4], "first_name": [None, "Ann", None], "coupon": ["C", None, None], "city": [None] * 3}
    )
    (_, fast_rejects), (_, slow_rejects) = both_ways(template, rows, monkeypatch)
    assert fast_rejects.equals(slow_rejects)
    # body parameters render before the text: code, then name, then city
    assert fast_rejects["detail"].to_list() == [
        "name is empty (column first_name)",
        "code is empty (column coupon)",
        "code is empty (column coupon)",
    ]


def test_json_string_is_json_dumps() -> None:
    import json

    values = ["", 'a"b', "back\\", "\n\r\t\b\f", "\x00\x1f\x7f", "é😀\u2028", "</script>"]
    got = pl.select(json_string(pl.lit(pl.Series(values)))).to_series().to_list()
    assert got == [json.dumps(v, ensure_ascii=False) for v in values]
