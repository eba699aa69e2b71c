"""The report files: CSV numbers, a self-contained HTML page with the table and totals, no phone numbers."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pytest

from pipeline import costs, store
from pipeline.report import write_report

PHONES = ["+447700900123", "+447700900456", "+491701234567", "+18095550199"]


@pytest.fixture
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    con = store.connect(tmp_path / "campaigns.duckdb")
    costs.load_prices(con)
    con.execute(
        "INSERT INTO campaigns VALUES ('spring', 'Spring sale', 'whatsapp', 'spring_sale_v2', 'marketing', "
        "TIMESTAMPTZ '2026-10-01 09:00:00+00', '{}')"
    )
    countries = ["GB", "GB", "DE", "DO"]
    for i, (phone, country) in enumerate(zip(PHONES, countries, strict=True), start=1):
        con.execute(
            "INSERT INTO recipients (campaign_id, row_number, recipient_key, phone_e164, country) "
            "VALUES ('spring', ?, ?, ?, ?)",
            [i, phone, phone, country],
        )
        con.execute(
            """INSERT INTO outbox (message_id, campaign_id, recipient_key, channel, sender, country, category,
                   payload_json, state, provider_message_id, queued_at, sent_at)
               VALUES (?, 'spring', ?, 'whatsapp', '15550001111', ?, 'marketing', ?, 'sent', ?,
                   TIMESTAMPTZ '2026-10-10 09:00:00+00', TIMESTAMPTZ '2026-10-10 10:00:00+00')""",
            [f"m{i}", phone, country, f'{{"to": "{phone}"}}', f"wamid.m{i}"],
        )
    events = [
        ("m1", "read", "marketing", "regular"),  # GB: delivered + read
        ("m2", "delivered", "marketing", "regular"),  # GB: delivered
        ("m3", "delivered", "utility", "regular"),  # DE: billed as utility
        ("m4", "failed", None, None),  # DO: failed
    ]
    for mid, status, category, pricing_type in events:
        con.execute(
            """INSERT INTO events (event_id, provider, provider_message_id, message_id, status, category,
                   pricing_type, recipient, occurred_at, raw_json)
               VALUES (?, 'whatsapp', ?, ?, ?, ?, ?, ?, TIMESTAMPTZ '2026-10-10 10:01:00+00', '{}')""",
            [f"{mid}:{status}", f"wamid.{mid}", mid, status, category, pricing_type, PHONES[int(mid[1:]) - 1]],
        )
    con.executemany(
        "INSERT INTO rejects VALUES ('spring', ?, ?, ?)",
        [[5, "invalid_number", "+44 7700 900999 is not a number"], [6, "duplicate", "row 1"],
         [7, "duplicate", "row 2"]],
    )
    yield con
    con.close()


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def test_csv_has_the_report_rows(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    files = write_report(con, "spring", tmp_path / "out")
    df = pl.read_csv(files.csv, infer_schema=False)
    assert df.columns == ["channel", "country", "market", "category", "sent", "delivered", "read", "failed",
                          "delivery_rate", "read_rate", "platform_fee_usd", "service_fee_usd", "total_usd",
                          "unpriced"]
    rows = {(r["country"], r["category"]): r for r in df.iter_rows(named=True)}
    assert set(rows) == {("DE", "utility"), ("DO", "marketing"), ("GB", "marketing")}
    gb = rows[("GB", "marketing")]
    assert (gb["sent"], gb["delivered"], gb["read"], gb["failed"]) == ("2", "2", "1", "0")
    assert (gb["delivery_rate"], gb["read_rate"]) == ("1.0", "0.5")
    # 2 x 0.0635 platform + 2 x 0.005 service, exact to six places.
    assert (gb["platform_fee_usd"], gb["service_fee_usd"], gb["total_usd"]) == ("0.127000", "0.010000", "0.137000")
    assert rows[("DE", "utility")]["total_usd"] == "0.060000"
    assert rows[("DO", "marketing")]["total_usd"] == "0.005000"
    assert rows[("DO", "marketing")]["market"] == "Rest of Latin America"


def test_html_is_self_contained_with_table_totals_and_summary(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    files = write_report(con, "spring", tmp_path / "out")
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
    assert "no price row" not in html  # every message was priced
    # Works offline: no external stylesheet, script, font or image.
    assert not re.search(r"<(script|link|img)\b|https?://|@import", html)


def test_summary_passed_in_is_shown(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    summary = {"campaign_id": "spring", "rows_read": 10, "accepted": 8, "rejected": {"not_mobile": 2}, "sent": 4,
               "cost_usd": Decimal("0.202"), "note": "retry of +447700900123 skipped"}
    html = write_report(con, "spring", tmp_path, summary=summary).html.read_text(encoding="utf-8")
    assert "Rows read</dt><dd>10" in html and "not_mobile: 2" in html and "0.202000" in html
    assert "+447700900123" not in html  # free text is masked too
    assert "Campaign id" not in html  # already in the header


def test_no_phone_number_in_any_report_file(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    files = write_report(con, "spring", tmp_path / "out")
    for path in (files.csv, files.html):
        text = path.read_text(encoding="utf-8")
        flat = digits(text)
        for phone in PHONES:
            assert phone not in text, path.name
            assert digits(phone)[-9:] not in flat, path.name  # not even without the country code


def test_unknown_campaign_is_an_error(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    with pytest.raises(LookupError):
        write_report(con, "nope", tmp_path)
