"""prepare_audience end to end: every row accounted for, counts, output files, CSV-injection safety."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from pipeline import store
from pipeline.audience.load import AudienceError
from pipeline.audience.policy import blocked_policy
from pipeline.records import REJECT_REASONS
from pipeline.render.prepare import escape_formulas, prepare_audience
from pipeline.render.templates import TemplateProblem
from pipeline.spec import TemplateSpec, load_spec
from pipeline.store import run_many

ROOT = Path(__file__).resolve().parents[2]
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
    got = dict(prepared.rejects.select("row_number", "reason").iter_rows())
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
    # Every original value is reported as written, including for rows the loader rejected.
    assert prepared.rejects.columns == ["row_number", "reason", "detail", "phone", "country", "first_name", "coupon",
                                        "opt_in"]  # fmt: skip
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


def _big_csv(tmp_path: Path) -> Path:
    lines = ["phone,country,first_name,coupon,opt_in,opt_in_at"]
    for i in range(120):
        phone = f"+44 7400 {123400 + i % 45}" if i % 3 else f"07400 {123400 + i % 45}"
        name = "" if i % 17 == 5 else f"N{i}"
        opt_in = ["yes", "no", "maybe", "Y"][i % 4] if i % 11 else "yes"
        when = ["2025-06-01", "2019-01-01", "", "not a date"][i % 4]
        lines.append(f"{phone},GB,{name},=C{i},{opt_in},{when}")
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_batches_give_the_same_output_files_as_one_pass(tmp_path: Path) -> None:
    path = _big_csv(tmp_path)
    options = {"now": datetime(2026, 1, 1, tzinfo=UTC), "suppressed": {"+447400123404"}}
    whole = prepare(path, out_dir=tmp_path / "whole", **options)
    assert {"duplicate", "stale_opt_in", "bad_row", "no_opt_in", "suppressed", "missing_variable"} <= set(whole.counts)
    for size in (256, 1500):
        batched = prepare(path, out_dir=tmp_path / f"b{size}", batch_bytes=size, **options)
        assert batched.accepted.equals(whole.accepted) and batched.rejects.equals(whole.rejects)
        assert batched.counts == whole.counts
        for name in ("accepted.parquet", "rejects.parquet"):
            assert pl.read_parquet(tmp_path / f"b{size}" / name).equals(pl.read_parquet(tmp_path / "whole" / name))
        assert (tmp_path / f"b{size}" / "rejects.csv").read_bytes() == (tmp_path / "whole" / "rejects.csv").read_bytes()
    # A duplicate in a later batch names the first row, wherever it was.
    duplicates = whole.rejects.filter(pl.col("reason") == "duplicate")
    first = dict(whole.accepted.select("phone_e164", "row_number").iter_rows())
    for row_number, detail, phone in duplicates.select("row_number", "detail", "phone").rows():
        e164 = "+44" + phone.replace(" ", "").removeprefix("+44").removeprefix("0")
        assert detail == f"same number as row {first[e164]}" and first[e164] < row_number
    # Counts only, for files larger than memory: the same files.
    lean = prepare(path, out_dir=tmp_path / "lean", batch_bytes=256, keep_frames=False, **options)
    assert lean.accepted.height == 0 and lean.accepted_rows == whole.accepted.height and lean.counts == whole.counts
    assert pl.read_parquet(tmp_path / "lean" / "rejects.parquet").equals(whole.rejects)


def test_consent_age_and_dates(tmp_path: Path) -> None:
    content = (
        "phone,opt_in,opt_in_at\n"
        "+447400123401,yes,2025-12-01\n"
        "+447400123402,yes,2020-05-01T10:00:00Z\n"
        "+447400123403,yes,01/05/2020\n"
        "+447400123404,yes,2027-01-01\n"
        "+447400123405,yes,\n"
        "+447400123406,no,2020-05-01\n"
    )
    path = write(tmp_path, content)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    got = prepare(path, template=None, variables=None, now=now, suppressed=())
    assert dict(got.rejects.select("row_number", "reason").iter_rows()) == {
        3: "stale_opt_in", 4: "bad_row", 5: "bad_row", 7: "no_opt_in",
    }  # fmt: skip
    details = dict(got.rejects.select("row_number", "detail").iter_rows())
    assert details[3] == "opted in on 2020-05-01, more than 730 days ago"
    assert "'01/05/2020' is not a date" in details[4] and "future" in details[5]
    # Utility messages need no marketing consent; no age limit turns the check off.
    assert prepare(path, template=None, variables=None, now=now, category="utility", suppressed=()).counts == {}
    assert "stale_opt_in" not in prepare(path, template=None, variables=None, now=now, opt_in_max_age=None).counts


def test_frequency_cap_for_marketing_only(tmp_path: Path) -> None:
    path = write(tmp_path, "phone,opt_in\n+447400123401,yes\n+44 7400 123402,yes\n+447400123403,yes\n")
    options = {"template": None, "variables": None, "suppressed": (), "recently_messaged": {"447400123402"}}
    got = prepare(path, **options)
    assert got.rejects.select("row_number", "reason", "detail").rows() == [
        (3, "frequency_capped", "got a marketing message on whatsapp in the last 24 h")
    ]
    assert prepare(path, category="utility", **options).counts == {}


def test_recently_messaged_reads_the_outbox(db: store.Store) -> None:
    from pipeline.audience.frequency import recently_messaged

    now = datetime(2026, 1, 2, 12, tzinfo=UTC)
    rows = [
        ("m1", "c1", "+447400000001", "whatsapp", "marketing", "sent", now - timedelta(hours=2)),
        ("m2", "c1", "+447400000002", "whatsapp", "marketing", "sent", now - timedelta(hours=30)),  # too old
        ("m3", "c1", "+447400000003", "whatsapp", "utility", "sent", now - timedelta(hours=1)),  # not marketing
        ("m4", "c1", "+447400000004", "sms", "marketing", "sent", now - timedelta(hours=1)),  # other channel
        ("m5", "c1", "+447400000005", "whatsapp", "marketing", "failed", now - timedelta(hours=1)),  # not sent
        ("m6", "c2", "+447400000006", "whatsapp", "marketing", "sent", now - timedelta(hours=23)),
    ]
    with db.write() as conn:
        run_many(conn, "INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, category,"
                 " payload_json, state, queued_at, sent_at) VALUES (:m, :c, :seq, :key, :channel, 's', :category,"
                 " '{}', :state, :at, :at)",
                 [{"m": m, "c": c, "seq": seq, "key": key, "channel": channel, "category": category, "state": state,
                   "at": at} for seq, (m, c, key, channel, category, state, at) in enumerate(rows)])
    assert recently_messaged(db, "whatsapp", now=now) == {"+447400000001", "+447400000006"}
    assert recently_messaged(db, "whatsapp", now=now, window=timedelta(hours=48)) == {
        "+447400000001", "+447400000002", "+447400000006",
    }  # fmt: skip
    assert recently_messaged(db, "whatsapp", now=now, exclude_campaign="c2") == {"+447400000001"}


def test_header_only_file_writes_empty_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepared = prepare(write(tmp_path, "phone,country,first_name,coupon,opt_in\n"), out_dir=out)
    assert prepared.rows_read == 0 and prepared.counts == {}
    accepted = pl.read_parquet(out / "accepted.parquet")
    assert accepted.height == 0 and {"phone_e164", "text", "segments"} <= set(accepted.columns)
    assert (out / "rejects.csv").read_text().startswith("row_number,reason,detail,phone")


def test_a_file_failing_midway_leaves_no_output(tmp_path: Path) -> None:
    path = write(tmp_path, CSV)
    with path.open("ab") as handle:
        handle.write(b"+447400123499,,Z\xe9,W-99,yes\n")
    out = tmp_path / "out"
    with pytest.raises(AudienceError, match="line 14 is not valid UTF-8"):
        prepare(path, out_dir=out, batch_bytes=64)
    assert list(out.iterdir()) == []


def test_a_batch_failing_in_its_thread_stops_the_file_leaves_no_output_and_no_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches are checked and rendered in two threads while the next one is read: an error in
    one of them reaches the caller, no output stays and no batch after it is started."""
    import threading

    from pipeline.render import prepare as module

    rendered: list[int] = []
    real = module.Stages.rendered

    def failing(self: module.Stages, checked: module.Checked, columns: list[str]) -> module.Batch:
        rendered.append(int(checked.rows["row_number"][0]))
        if len(rendered) == 3:
            raise RuntimeError("the third batch breaks")
        return real(self, checked, columns)

    monkeypatch.setattr(module.Stages, "rendered", failing)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="the third batch breaks"):
        prepare(_big_csv(tmp_path), out_dir=out, batch_bytes=256)
    assert list(out.iterdir()) == []
    assert len(rendered) <= 3 + module.BATCHES_AHEAD  # those already started may end; none later starts
    assert not [t for t in threading.enumerate() if t.name.startswith("prepare")]


def test_segments_are_counted_for_the_rendered_text(tmp_path: Path) -> None:
    prepared = prepare(write(tmp_path))
    assert prepared.accepted.select("segments", "encoding").rows() == [(1, "gsm7"), (1, "gsm7")]


def test_a_row_that_cannot_be_rendered_does_not_hide_a_later_duplicate(tmp_path: Path) -> None:
    content = "phone,country,first_name,coupon,opt_in\n+44 7400 123456,GB,,W-1,yes\n07400 123456,GB,Ann,W-2,yes\n"
    prepared = prepare(write(tmp_path, content))
    assert prepared.accepted.select("row_number", "text").rows() == [(3, "Hi Ann, code W-2")]
    assert prepared.rejects.select("row_number", "reason").rows() == [(2, "missing_variable")]
