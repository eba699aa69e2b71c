"""Hostile or careless templates and values: a template without variables renders every row, rendered
messages stay within the channel's limit, and a template cannot spend unbounded memory or time (string
repetition, powers, huge ranges, nested loops and the like are refused before they allocate)."""

from __future__ import annotations

import argparse
import json
import secrets
from pathlib import Path

import polars as pl
import pytest
import yaml

from pipeline.cli.prepare import add_prepare_command
from pipeline.render.limits import RenderLimits
from pipeline.render.prepare import prepare_audience
from pipeline.render.prepare_chunks import prepare_chunk, prepare_in_chunks
from pipeline.render.prepare_ids import prepare_ids
from pipeline.render.templates import render_messages
from pipeline.spec import SpecError, TemplateSpec, parse_spec
from pipeline.upload.check import Staged, check

ROOT = Path(__file__).resolve().parents[2]
AUDIENCE = "phone,opt_in,first_name,notes\n" + "".join(f"+4474001234{i:02d},yes,Ann,n{i}\n" for i in range(5))
WHATSAPP = RenderLimits.for_channel("whatsapp", {})


def template(text: str, *, body: list[str] | None = None) -> TemplateSpec:
    return TemplateSpec(name="t", language="en", category="utility", text=text, body=body or [])


def frame(**columns: list[str]) -> pl.DataFrame:
    height = len(next(iter(columns.values())))
    return pl.DataFrame({"row_number": list(range(2, 2 + height)), **columns})


def reasons(rejects: pl.DataFrame) -> list[tuple[str, str]]:
    return rejects.select("reason", "detail").rows()


# --- a template without variables ---------------------------------------------------------------------------


def test_a_template_without_variables_renders_every_row(tmp_path: Path) -> None:
    audience = tmp_path / "a.csv"
    audience.write_text(AUDIENCE)
    prepared = prepare_audience(audience, channel="whatsapp", category="utility",
                                template=template("Your order has shipped."))  # fmt: skip
    assert prepared.accepted["text"].to_list() == ["Your order has shipped."] * 5
    assert json.loads(prepared.accepted["params_json"][0]) == {"header": [], "body": [], "buttons": []}


def test_campaign_prepare_with_a_plain_text_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    audience, text = tmp_path / "a.csv", tmp_path / "shipped.txt"
    audience.write_text(AUDIENCE)
    text.write_text("Your order has shipped.\n")
    parser = argparse.ArgumentParser(prog="campaign")
    add_prepare_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["prepare", str(audience), "--template", str(text), "--out", str(tmp_path / "o")])
    assert args.func(args) == 0
    assert pl.read_parquet(tmp_path / "o" / "accepted.parquet")["text"].to_list() == ["Your order has shipped."] * 5


def test_the_campaign_flows_prepare_task_with_a_plain_text_template(tmp_path: Path) -> None:
    from flows.campaign import prepare  # the task `campaign run` runs first

    audience = tmp_path / "a.csv"
    audience.write_text(AUDIENCE)
    spec = yaml.safe_load((ROOT / "campaigns" / "welcome.yaml").read_text())
    spec["template"] |= {"text": "Your order has shipped.", "body": []}
    spec |= {"variables": {}, "audience": str(audience)}
    prepared = prepare.fn(parse_spec(spec), "welcome", str(tmp_path / "campaigns.sqlite"), tmp_path / "prepared")
    assert prepared.accepted["text"].to_list() == ["Your order has shipped."] * 5


def test_the_upload_check_with_a_plain_text_template(tmp_path: Path) -> None:
    upload = Staged(tmp_path / secrets.token_hex(8))
    upload.root.mkdir()
    (upload.root / "spring.csv").write_text(AUDIENCE)
    spec = yaml.safe_load((ROOT / "campaigns" / "welcome.yaml").read_text())
    spec["template"] |= {"text": "Your order has shipped.", "body": []}
    spec["variables"] = {}
    upload.spec.write_text(yaml.safe_dump(spec))
    summary = check(upload, "welcome.yaml")
    assert (summary["rows_read"], summary["accepted"]) == (5, 5)


# --- rendered messages within the channel's limit -----------------------------------------------------------


@pytest.mark.parametrize("source", ["{{ notes }}", "{% if notes %}{{ notes }}{% endif %}"])  # compiled, Jinja2
def test_text_longer_than_the_channel_takes_is_rejected(source: str) -> None:
    cells = frame(notes=["x" * 1024, "y" * 1025, "z" * 5000])
    rendered, rejects = render_messages(cells, template(source), {"notes": "notes"}, WHATSAPP)
    assert rendered["row_number"].to_list() == [2]
    assert reasons(rejects) == [
        ("message_too_long", "text renders 1,025 characters, over the 1,024 a whatsapp message may hold"),
        ("message_too_long", "text renders 5,000 characters, over the 1,024 a whatsapp message may hold"),
    ]


def test_each_template_parameter_is_bounded_too() -> None:
    cells = frame(notes=["short", "w" * 2000])
    rendered, rejects = render_messages(cells, template("Hi", body=["{{ notes }}"]), {"notes": "notes"}, WHATSAPP)
    assert rendered["row_number"].to_list() == [2]
    too_long = "body parameter {{1}} renders 2,000 characters, over the 1,024 a whatsapp message may hold"
    assert reasons(rejects) == [("message_too_long", too_long)]


def test_every_channel_has_its_limit_and_the_environment_overrides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {c: RenderLimits.for_channel(c, {}).max_message_chars for c in ("whatsapp", "sms", "viber", "messenger")}
    assert limits == {"whatsapp": 1024, "sms": 1600, "viber": 7000, "messenger": 2000}
    monkeypatch.setenv("CAMPAIGN_MAX_MESSAGE_CHARS", "10")
    cells = frame(notes=["0123456789", "0123456789a"])
    rendered, rejects = render_messages(cells, template("{{ notes }}"), {"notes": "notes"},
                                        RenderLimits.for_channel("sms"))  # fmt: skip
    assert rendered["row_number"].to_list() == [2] and rejects["row_number"].to_list() == [3]
    monkeypatch.setenv("CAMPAIGN_MAX_MESSAGE_CHARS", "-1")
    with pytest.raises(SpecError, match="CAMPAIGN_MAX_MESSAGE_CHARS"):
        RenderLimits.for_channel("sms")


def test_a_replacement_cannot_blow_a_long_value_up_on_the_compiled_path() -> None:
    # Compiled to Polars, this would make 60,000 * 500 characters per row before anything checked them.
    source = "{{ notes|replace('a', '" + "b" * 500 + "') }}"
    rendered, rejects = render_messages(frame(notes=["a" * 60_000, "ab"]), template(source), {"notes": "notes"},
                                        WHATSAPP)  # fmt: skip
    assert rendered["text"].to_list() == ["b" * 500 + "b"]
    assert rejects["reason"].to_list() == ["message_too_long"]
    assert "the filter replace would build 30,000,000 characters" in rejects["detail"][0]


def test_id_channels_are_bounded_by_their_limit(tmp_path: Path) -> None:
    audience = tmp_path / "v.csv"
    audience.write_text("user_id,opt_in,notes\nViberUser01,yes,short\nViberUser02,yes," + "v" * 7001 + "\n")
    prepared = prepare_ids(audience, channel="viber", category="utility", template=template("{{ notes }}"),
                           variables={"notes": "notes"})  # fmt: skip
    assert prepared.accepted["text"].to_list() == ["short"]
    assert prepared.rejects.select("row_number", "reason").rows() == [(3, "message_too_long")]


def test_chunked_preparation_bounds_rows_as_one_process_does(tmp_path: Path) -> None:
    rows = "".join(f"+4474001234{i:02d},yes,Ann,{'n' * 70_000 if i == 7 else 'ok'}\n" for i in range(20)).encode()
    options = {"channel": "whatsapp", "category": "utility", "template": template("Hi {{ name }}"),
               "variables": {"name": "first_name"}}  # fmt: skip
    nul_line = b"\0" * (2 << 20) + b"\n"
    for name, content, chunks in (("fields", rows, True), ("nul", rows + nul_line + rows, False)):
        audience = tmp_path / f"{name}.csv"
        audience.write_bytes(b"phone,opt_in,first_name,notes\n" + content)
        ran: list[int] = []

        def run(jobs: list, ran: list[int] = ran) -> list:
            ran.append(len(jobs))
            return [prepare_chunk(job) for job in jobs]

        single = prepare_audience(audience, **options)
        chunked = prepare_in_chunks(audience, run=run, chunk_bytes=4096, out_dir=tmp_path / name, **options)
        assert chunked.rejects.equals(single.rejects) and chunked.accepted.equals(single.accepted)
        # A record over the row bound is skipped unread by the single process, which then prepares the file.
        assert bool(ran) is chunks
    assert single.counts == {"duplicate": 19, "field_too_long": 2, "row_too_long": 1}


# --- bounded evaluation ---------------------------------------------------------------------------------------

EXPENSIVE = [
    "{{ first_name * 100000000 }}",
    "{{ 'a' * 10**9 }}",
    "{{ [first_name] * 10**8 }}",
    "{{ 2 ** (10**9) }}",
    "{{ '%0999999999d' % 1 }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ 'x'|center(10**9) }}",
    "{{ first_name.ljust(10**9) }}",
    "{{ first_name|indent(10**8) }}",
    "{{ range(10**9)|list }}",
    "{{ range(100000)|join(first_name * 1000) }}",
    "{{ ('a' * 4000)|replace('a', first_name * 2000) }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{{ first_name * 1000 }}{% endfor %}",
    "{% set ns = namespace(s=first_name) %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% macro twice(s, n) %}{% if n %}{{ twice(s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}{% endmacro %}"
    "{{ twice(first_name, 60) }}",
    "{% set a = first_name * 1000000 %}{% set b = a ~ a %}{% set c = b ~ b %}{% set d = c ~ c %}{{ d ~ d }}",
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("source", EXPENSIVE)
def test_a_template_cannot_spend_unbounded_memory_or_time(source: str) -> None:
    rendered, rejects = render_messages(frame(first_name=["Ann", "Bob"]), template(source),
                                        {"first_name": "first_name"}, WHATSAPP)  # fmt: skip
    assert rendered.height == 0
    assert rejects["reason"].to_list() == ["message_too_long"] * 2


ORDINARY = (
    "{% for part in notes.split(',') %}{{ loop.index }}:{{ part|trim|upper }} {% endfor %}"
    "{{ '%05d' % 42 }} {{ '{:>6}'.format(first_name) }} {{ first_name|center(7) }}|"
    "{{ (first_name ~ '-') * 2 }}{{ [1, 2]|join('+') }}"
)


def test_ordinary_templates_render_and_the_budget_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    cells, variables = frame(first_name=["Ann"], notes=["a, b,c"]), {"first_name": "first_name", "notes": "notes"}
    loop, repeat = template("{% for i in range(40) %}.{% endfor %}"), template("{{ first_name * 40 }}")
    rendered, rejects = render_messages(cells, template(ORDINARY), variables, RenderLimits.for_channel("sms"))
    assert rejects.height == 0
    assert rendered["text"].to_list() == ["1:A 2:B 3:C 00042    Ann   Ann  |Ann-Ann-1+2"]
    assert render_messages(cells, loop, variables, RenderLimits.for_channel("sms"))[0].height == 1
    monkeypatch.setenv("CAMPAIGN_MAX_TEMPLATE_STEPS", "30")
    monkeypatch.setenv("CAMPAIGN_MAX_TEMPLATE_CHARS", "100")
    _, rejects = render_messages(cells, loop, variables, RenderLimits.for_channel("sms"))
    assert reasons(rejects) == [("message_too_long", "the template takes more than 30 steps (loop turns, calls, "
                                 "values) per message")]  # fmt: skip
    _, rejects = render_messages(cells, repeat, variables, RenderLimits.for_channel("sms"))
    assert reasons(rejects) == [("message_too_long", "the operator '*' would build 120 characters; a template may "
                                 "build 100 per message")]  # fmt: skip


# --- Alibaba SMS: the signature counts towards its 500 characters ---------------------------------------------


def _alibaba_spec(audience: Path | str = "x.csv", **options: object):
    return parse_spec({
        "name": "ali", "audience": str(audience), "channel": "sms", "sender": "Acme",
        "template": {"name": "SMS_1", "language": "en", "category": "utility", "text": "{{ notes }}"},
        "variables": {"notes": "notes"},
        "provider": {"options": {"provider": "alibaba_sms", "sender_ids": {"cn": "阿里云"}, **options}},
    })


def test_alibaba_sms_rejects_a_row_whose_signature_and_text_pass_500_characters() -> None:
    # [Acme] is 6 characters, 【阿里云】 5: the bound is per row, by the signature its country is sent with.
    limits = RenderLimits.for_spec(_alibaba_spec())
    cells = frame(notes=["a" * 494, "a" * 495, "a" * 495, "a" * 496]).with_columns(
        region=pl.Series(["GB", "GB", "CN", "CN"]))
    rendered, rejects = render_messages(cells, template("{{ notes }}"), {"notes": "notes"}, limits)
    assert rendered["row_number"].to_list() == [2, 4]
    assert rejects.select("row_number", "reason").rows() == [(3, "message_too_long"), (5, "message_too_long")]
    assert rejects["detail"].to_list() == [
        "text with its signature [Acme] renders 501 characters, over the 500 an Alibaba SMS may hold",
        "text with its signature [阿里云] renders 501 characters, over the 500 an Alibaba SMS may hold"]
    # Twilio's bound stays 1,600, and so does Alibaba's own for the text alone.
    assert RenderLimits.for_spec(_alibaba_spec(provider="twilio")).signed_sms is None
    assert limits.max_message_chars == 1600


def test_a_campaigns_preparation_applies_the_alibaba_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.dispatch.preparation import prepare_campaign

    monkeypatch.chdir(tmp_path)
    audience = tmp_path / "a.csv"
    audience.write_text("phone,opt_in,notes\n+447400123400,yes,short\n+447400123401,yes," + "n" * 495 + "\n")
    prepared = prepare_campaign(_alibaba_spec(audience), "ali", str(tmp_path / "store.sqlite"), tmp_path / "out")
    assert prepared.accepted["text"].to_list() == ["short"]
    assert prepared.rejects.select("row_number", "reason").rows() == [(3, "message_too_long")]


# --- WhatsApp template parameters: no newline, tab or five spaces in a row (Meta: 132018) -----------------------


@pytest.mark.parametrize("channel", ["whatsapp", "chatapp"])
def test_a_parameter_with_a_newline_tab_or_five_spaces_is_rejected_naming_it(channel: str) -> None:
    cells = frame(code=["A\tB", "ok", "ok", "ok", "ok"], city=["Paris", "New\nYork", "York     City", "York    City",
                                                               "Lyon"])
    spec = template("Hi {{ code }} {{ city }}", body=["{{ code }}", "{{ city|upper }}"])
    rendered, rejects = render_messages(cells, spec, {"code": "code", "city": "city"},
                                        RenderLimits.for_channel(channel, {}))
    assert rendered["row_number"].to_list() == [5, 6]  # four spaces are allowed
    tail = "which Meta refuses in a template parameter (132018)"
    assert rejects.select("row_number", "reason", "detail").rows() == [
        (2, "bad_row", f"body parameter {{{{1}}}} (column code) holds a tab, {tail}"),
        (3, "bad_row", f"body parameter {{{{2}}}} (column city) holds a newline, {tail}"),
        (4, "bad_row", f"body parameter {{{{2}}}} (column city) holds more than four consecutive spaces, {tail}"),
    ]
    # SMS carries the same text: nothing to refuse there.
    sms, _ = render_messages(cells, spec, {"code": "code", "city": "city"}, RenderLimits.for_channel("sms", {}))
    assert sms.height == 5


def test_the_parameter_rule_is_the_generated_values_rule() -> None:
    from pipeline.render.generated_checks import refusal

    for value in ("New\nYork", "A\tB", "York     City"):
        assert refusal(value, channel="whatsapp", max_chars=None) == "control_character"
    assert refusal("York    City", channel="whatsapp", max_chars=None) is None
