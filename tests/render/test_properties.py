"""Properties of rendering over generated templates and values: whatever the template (text, `{{ var }}`,
filters, string constants, `*` and `~`, numbers up to 10**9) and whatever the row's values, rendering
never raises, every row is rendered or rejected once, and what is rendered stays within the limits."""

from __future__ import annotations

import json

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.render.limits import RenderLimits
from pipeline.render.templates import render_messages
from pipeline.spec import TemplateSpec

# Each example compiles its templates and renders through Polars and Jinja2 (~0.1 s): 100 keep this under 15 s.
PROPERTY = settings(max_examples=100, deadline=None)
VARIABLES = {"name": "first_name", "city": "city"}
REASONS = {"missing_variable", "message_too_long", "bad_row"}

NUMBER = st.one_of(st.integers(-3, 40), st.sampled_from(["10**9", "10**6", "2**40", "1000000000"]))
CONSTANT = st.text(alphabet="ab é€\U0001f600", max_size=8).map(lambda t: f"'{t}'")
FILTER = st.one_of(
    st.sampled_from(["upper", "lower", "capitalize", "trim", "title", "e", "string", "first", "reverse|join"]),
    st.builds(lambda n: f"center({n})", NUMBER),
    st.builds(lambda n: f"indent({n})", NUMBER),
    st.builds(lambda old, new: f"replace({old}, {new})", CONSTANT, CONSTANT),
    st.builds(lambda c: f"default({c})", CONSTANT),
)


def _expression() -> st.SearchStrategy[str]:
    atom = st.one_of(st.sampled_from(["name", "city"]), CONSTANT)
    return st.recursive(
        atom,
        lambda inner: st.one_of(
            st.builds(lambda e, f: f"({e})|{f}", inner, FILTER),
            st.builds(lambda a, b: f"({a}) ~ ({b})", inner, inner),
            st.builds(lambda e, n: f"({e}) * {n}", inner, NUMBER),
        ),
        max_leaves=6,
    )


TEXT = st.text(alphabet="Hi, there!\n é", min_size=1, max_size=20)
PIECE = st.one_of(TEXT, _expression().map(lambda e: f"{{{{ {e} }}}}"))
TEMPLATE = st.lists(PIECE, min_size=1, max_size=5).map("".join)
VALUE = st.one_of(st.none(), st.text(max_size=60), st.text(alphabet="aé\0\u202e\U0001f600 ", min_size=50, max_size=400))


@PROPERTY
@given(
    text=TEMPLATE,
    body=st.lists(TEMPLATE, max_size=2),
    names=st.lists(VALUE, min_size=1, max_size=4),
    cities=st.lists(VALUE, min_size=4, max_size=4),
    max_chars=st.integers(1, 300),
)
def test_rendered_messages_stay_within_the_limits(
    text: str, body: list[str], names: list[str | None], cities: list[str | None], max_chars: int
) -> None:
    frame = pl.DataFrame(
        {"row_number": range(2, 2 + len(names)), "first_name": names, "city": cities[: len(names)]},
        schema={"row_number": pl.Int64, "first_name": pl.String, "city": pl.String},
    )
    limits = RenderLimits("sms", max_message_chars=max_chars, max_template_chars=20_000, max_template_steps=500)
    template = TemplateSpec(name="t", language="en", category="utility", text=text, body=body)
    rendered, rejects = render_messages(frame, template, VARIABLES, limits)
    assert sorted([*rendered["row_number"], *rejects["row_number"]]) == frame["row_number"].to_list()
    assert set(rejects["reason"]) <= REASONS
    for message, params in rendered.select("text", "params_json").iter_rows():
        assert len(message) <= max_chars
        assert all(len(value) <= max_chars for value in json.loads(params)["body"])
