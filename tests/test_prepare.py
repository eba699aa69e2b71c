"""prepare_audience end to end: every row accounted for, counts, output files, CSV-injection safety."""

from __future__ import annotations

import csv
from pathlib import Path

import polars as pl
import pytest

from pipeline.audience import AudienceError
from pipeline.policy import blocked_policy
from pipeline.prepare import escape_formulas, prepare_audience
from pipeline.records import REJECT_REASONS
from pipeline.spec import TemplateSpec, load_spec
from pipeline.templates import TemplateProblem

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = TemplateSpec(
    name="welcome_offer",
    language="en_US",
    category="marketing",
    text="Hi {{ first_name }}, code {{ code }}",
    body=["{{ first_name }}", "{{ code }}"],
    buttons=[{"sub_type": "quick_reply", "payload": "STOP_PROMOS"}],
)
VARIABLES = {"first_name": "first_name", "code": "coupon"}

CSV = """phone,country,first_name,coupon,opt_in
+44 7400 123456,GB,Ann,W-1,yes
07400 123457,GB,Bob,W-2,y
,GB,Cy,W-3,yes
12345,GB,Di,W-4,yes
+44 20 7946 0000,,Ed,W-5,yes
+98 912 345 6789,,Fa,W-6,yes
+44 7400 123458,,Gus,W-7,no
+44 7400 123459,,Hal,W-8,yes
0044 7400 123456,,Ann,W-1,yes
+44 7400 123460,,,W-10,yes
+44 7400 123461,,Ivy,W-11,perhaps
=HYPERLINK(1),,Jo,W-12,yes
"""


def write(tmp_path: Path, content: str = CSV) -> Path:
    path = tmp_path / "audience.csv"
    path.write_text(content, encoding="utf-8")
    return path


def prepare(path: Path, **kwargs):
    options = {
        "channel": "whatsapp",
        "category": "marketing",
        "template": TEMPLATE,
        "variables": VARIABLES,
        "suppressed": {"+447400123459"},
    }
    options.update(kwargs)
    return prepare_audience(path, **options)


def test_every_stage_and_reason(tmp_path: Path) -> None:
    prepared = prepare(write(tmp_path))
    assert prepared.rows_read == 12
    assert prepared.accepted["row_number"].to_list() == [2, 3]
    assert prepared.accepted["text"].to_list() == ["Hi Ann, code W-1", "Hi Bob, code W-2"]
    got = {row: reason for row, reason, _, _ in prepared.rejects.rows()}
    assert got == {
        4: "bad_row",
        5: "invalid_number",
        6: "not_mobile",
        7: "blocked_country",
        8: "no_opt_in",
        9: "suppressed",
        10: "duplicate",
        11: "missing_variable",
        12: "bad_row",
        13: "invalid_number",
    }
    assert prepared.counts == {
        "bad_row": 2, "blocked_country": 1, "duplicate": 1, "invalid_number": 2, "missing_variable": 1,
        "no_opt_in": 1, "not_mobile": 1, "suppressed": 1,
    }  # fmt: skip
    assert prepared.rejects.columns == ["row_number", "reason", "detail", "phone"]
    # The phone is reported as written, including rows the loader rejected.
    phones = dict(prepared.rejects.select("row_number", "phone").iter_rows())
    assert phones[10] == "0044 7400 123456" and phones[4] is None and phones[13] == "=HYPERLINK(1)"
    assert prepared.accepted.height + prepared.rejects.height == prepared.rows_read


def test_without_a_template_nothing_is_rendered(tmp_path: Path) -> None:
    prepared = prepare(write(tmp_path), template=None, variables=None)
    assert "text" not in prepared.accepted.columns
    assert "missing_variable" not in prepared.counts
    assert prepared.accepted["row_number"].to_list() == [2, 3, 11]


def test_policy_override_and_non_marketing(tmp_path: Path) -> None:
    prepared = prepare(write(tmp_path), category="utility", policy=blocked_policy("whatsapp", []))
    assert "blocked_country" not in prepared.counts and "no_opt_in" not in prepared.counts
    assert 7 in prepared.accepted["row_number"].to_list() and 8 in prepared.accepted["row_number"].to_list()


def test_template_problems_fail_before_any_row_is_processed(tmp_path: Path) -> None:
    with pytest.raises(TemplateProblem, match="city"):
        prepare(write(tmp_path), variables={**VARIABLES, "city": "city"})
    with pytest.raises(TemplateProblem, match="code"):
        prepare(write(tmp_path), variables={"first_name": "first_name"})


def test_unusable_file_raises_audience_error(tmp_path: Path) -> None:
    with pytest.raises(AudienceError, match="opt_in"):
        prepare(write(tmp_path, "phone,first_name\n+447400123456,Ann\n"))


def test_output_files_and_formula_escaping(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepared = prepare(write(tmp_path), out_dir=out)
    assert pl.read_parquet(out / "accepted.parquet").equals(prepared.accepted)
    assert pl.read_parquet(out / "rejects.parquet").equals(prepared.rejects)
    with (out / "rejects.csv").open(encoding="utf-8", newline="") as handle:
        rows = {int(r["row_number"]): r for r in csv.DictReader(handle)}
    assert set(rows) == set(prepared.rejects["row_number"].to_list())
    assert rows[13]["phone"] == "'=HYPERLINK(1)"
    assert rows[7]["phone"] == "'+98 912 345 6789"
    assert rows[5]["phone"] == "12345"
    assert all(not v.startswith(("=", "+", "-", "@")) for r in rows.values() for v in r.values())


def test_escape_formulas_only_touches_text_cells() -> None:
    frame = pl.DataFrame({"n": [1, -2], "s": ["-1+2", "ok"], "t": ["@SUM(A1)", "\tx"]})
    assert escape_formulas(frame).to_dict(as_series=False) == {
        "n": [1, -2],
        "s": ["'-1+2", "ok"],
        "t": ["'@SUM(A1)", "'\tx"],
    }


def test_sample_audience_with_the_welcome_campaign(tmp_path: Path) -> None:
    spec = load_spec(ROOT / "campaigns" / "welcome.yaml")
    audience = ROOT / "audiences" / "sample.csv"
    prepared = prepare_audience(
        audience,
        channel=spec.channel,
        category=spec.template.category,
        template=spec.template,
        variables=spec.variables,
        policy=blocked_policy(spec.channel, spec.blocked_countries),
        out_dir=tmp_path,
    )
    assert prepared.rows_read == 3000
    assert prepared.accepted.height + sum(prepared.counts.values()) == 3000
    assert set(prepared.counts) <= set(REJECT_REASONS)
    for reason in (
        "invalid_number",
        "not_mobile",
        "blocked_country",
        "no_opt_in",
        "duplicate",
        "missing_variable",
        "bad_row",
    ):
        assert prepared.counts.get(reason, 0) > 0, reason
    assert 2400 < prepared.accepted.height < 2800
    assert prepared.accepted["phone_e164"].is_unique().all()
