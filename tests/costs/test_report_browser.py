"""The HTML report opened in headless Chromium (tests/helpers/browser.py): the charts render with their bars, the
console shows no error, and the page asks for nothing from the network."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipeline import store
from pipeline.costs import costing as costs
from pipeline.costs.report import write_report
from pipeline.store import Store
from pipeline.store.bulk import insert_frame
from tests.costs.rows import add_campaign, ts
from tests.helpers.browser import Tab
from tests.helpers.stores import BACKENDS, new_store_url

CHECK_CHARTS = """JSON.stringify([...document.querySelectorAll('svg.chart')].map(s => ({
    id: s.id, bars: s.querySelectorAll('rect.bar').length, width: s.getBoundingClientRect().width,
    height: s.getBoundingClientRect().height, drawn: s.getBBox().width,
    widest: Math.max(0, ...[...s.querySelectorAll('rect.bar')].map(r => r.getBoundingClientRect().width))})))"""


def sample_campaign(db: Store) -> None:
    """A campaign over six countries with reads, failures (three codes), a re-categorised and a free message."""
    costs.load_prices(db)
    add_campaign(db, "autumn", name="Autumn offers", template="autumn_offer_v3")
    plan = [("GB", 40, 0.9, 0.5), ("DE", 25, 0.88, 0.4), ("BR", 30, 0.95, 0.6), ("IN", 35, 0.93, 0.55),
            ("US", 20, 0.8, 0.3), ("DO", 10, 0.9, 0.5)]
    codes = ["131049", "131026", "131050"]
    outbox, events = [], []
    for country, count, deliver, read in plan:
        for i in range(count):
            mid = f"m{len(outbox) + 1}"
            outbox.append((mid, f"+1555{len(outbox):07d}", country))
            billed, kind = ("utility", "regular") if i == 3 else (("marketing", "free_entry_point") if i == 4
                                                                  else ("marketing", "regular"))
            statuses = (["sent", "delivered", "read"] if i < count * read else ["sent", "delivered"]) \
                if i < count * deliver else ["sent", "failed"]
            events += [(f"{mid}:{status}", mid, status, codes[len(outbox) % 3] if status == "failed" else None,
                        billed if status == "sent" else None, kind if status == "sent" else None)
                       for status in statuses]
    # Bulk inserts: one load per table instead of hundreds of statements.
    messages = pl.DataFrame(outbox, orient="row", schema=["message_id", "recipient_key", "country"], strict=False)
    receipts = pl.DataFrame(events, orient="row", strict=False, schema=[
        "event_id", "message_id", "status", "error_code", "category", "pricing_type"])
    reasons = ["invalid_number", "duplicate", "duplicate", "not_mobile", "duplicate", "suppressed", "blocked_country",
               "invalid_number", "duplicate", "no_opt_in", "duplicate", "invalid_number", "not_mobile", "duplicate"]
    with db.write() as conn:
        insert_frame(conn, "outbox", messages.with_columns(
            pl.lit("autumn").alias("campaign_id"), pl.int_range(pl.len(), dtype=pl.Int64).alias("seq"),
            pl.lit("whatsapp").alias("channel"), pl.lit("s").alias("sender"), pl.lit("marketing").alias("category"),
            pl.lit("{}").alias("payload_json"), pl.lit("sent").alias("state"),
            pl.lit(ts("2026-10-12 09:00:00+00")).alias("queued_at"),
            pl.lit(ts("2026-10-12 10:00:00+00")).alias("sent_at")))
        insert_frame(conn, "events", receipts.with_columns(
            pl.lit("whatsapp").alias("provider"), pl.col("message_id").alias("provider_message_id"),
            pl.lit(ts("2026-10-12 10:01:00+00")).alias("occurred_at")))
        insert_frame(conn, "recipients", messages.select(
            pl.lit("autumn").alias("campaign_id"), pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("row_number"),
            "recipient_key", pl.col("recipient_key").alias("phone_e164"), "country"))
        insert_frame(conn, "rejects", pl.DataFrame({
            "campaign_id": "autumn", "row_number": range(200, 200 + len(reasons)), "reason": reasons}))


@pytest.fixture(scope="module", params=BACKENDS)
def report_html(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    with store.connect(new_store_url(request.param, folder, request)) as db:
        sample_campaign(db)
        costs.estimate_cost(db, "autumn")
        return write_report(db, "autumn", folder / "autumn").html


def test_report_charts_render_without_console_errors(tab: Tab, report_html: Path) -> None:
    page = tab.load(report_html.resolve().as_uri(), CHECK_CHARTS)
    assert page.errors == []
    assert [r for r in page.requests if not r.startswith("file://")] == []  # opens offline
    charts = {c["id"]: c for c in json.loads(page.value)}
    assert set(charts) == {"chart-cost-by-country", "chart-funnel", "chart-failures"}
    # Six countries x (platform, service) bars; sent, delivered, read; three error codes.
    assert {k: c["bars"] for k, c in charts.items()} == {
        "chart-cost-by-country": 12, "chart-funnel": 3, "chart-failures": 3}
    for chart in charts.values():
        assert chart["width"] > 300 and chart["height"] > 60 and chart["drawn"] > 200, chart
        assert chart["widest"] > 100, chart  # the bars have a real size on screen


def test_the_browser_check_catches_errors_and_network_requests(tab: Tab, tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><body><svg class="chart" id="x"></svg>'
                      '<script>console.error("chart failed"); undefinedFunction();</script>'
                      '<img src="http://127.0.0.1:9/logo.png"></body></html>')
    page = tab.load(broken.as_uri(), CHECK_CHARTS)
    assert any("chart failed" in e for e in page.errors)
    assert any("undefinedFunction" in e for e in page.errors)
    assert "http://127.0.0.1:9/logo.png" in page.requests
    assert json.loads(page.value) == [{"id": "x", "bars": 0, "width": 300, "height": 150, "drawn": 0, "widest": 0}]
