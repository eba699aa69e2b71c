"""A message in flight at a crash (outbox `unknown` or `sending`) that a receipt names reached the provider: the
terminal summary and the report's Categories line count it as sent, as the bill does (reports/cost_report.sql);
one no receipt names does not count. The summary counts a failed message once, as the bill does, however it
failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.costs import costing as costs
from pipeline.costs.report import write_report
from pipeline.costs.summary import campaign_summary, format_summary
from pipeline.store import Store
from tests.costs.rows import add_campaign, add_outbox, add_receipt

DAY = "2026-10-10"


@pytest.fixture
def db(db: Store) -> Store:
    """Campaign `crash`: re-categorised from marketing to utility mid-send, then the dispatcher crashed."""
    costs.load_prices(db)
    add_campaign(db, "crash")
    messages = [  # id, state, category sent as, sent_at, a receipt names it
        ("m1", "sent", "marketing", f"{DAY} 10:00:00+00", True),
        ("m2", "sending", "marketing", None, True),
        ("m3", "sent", "utility", f"{DAY} 10:05:00+00", True),
        ("m4", "unknown", "utility", None, True),
        ("m5", "unknown", "utility", None, False),  # not known to have reached the provider
    ]
    for i, (mid, state, category, sent_at, receipt) in enumerate(messages):
        add_outbox(db, "crash", mid, recipient_key=f"+4477009001{i:02d}", state=state, country="GB",
                   category=category, sent_at=sent_at)
        if receipt:
            add_receipt(db, f"{mid}:delivered", mid, "delivered", f"{DAY} 10:06:00+00", category=category,
                        pricing_type="regular")
    return db


def test_the_summary_counts_sent_as_the_bill_does(db: Store) -> None:
    summary = campaign_summary(db, "crash")
    bill = costs.summary_totals(costs.cost_report(db, "crash"))
    assert (summary["sent"], bill["sent"]) == (4, 4)
    assert summary["unknown"] == 1  # m4 is sent now, not also unknown
    shown = {line.rsplit(None, 1)[0].strip(): line.split()[-1] for line in format_summary(summary).splitlines()[2:]}
    assert (shown["sent"], shown["unknown (in flight at a crash, no receipt)"]) == ("4", "1")


def test_the_categories_line_counts_sent_as_the_bill_does(db: Store, tmp_path: Path) -> None:
    html = write_report(db, "crash", tmp_path, settle=False).html.read_text(encoding="utf-8")
    assert "marketing (2 sent), then utility (2 sent)" in html


def test_a_category_sent_only_by_messages_in_flight_at_the_crash_is_named(db: Store, tmp_path: Path) -> None:
    db.execute("DELETE FROM outbox WHERE message_id = 'm3'")  # utility now has m4 (receipt) and m5 (none)
    html = write_report(db, "crash", tmp_path, settle=False).html.read_text(encoding="utf-8")
    assert "marketing (2 sent), then utility (1 sent)" in html


def test_the_summary_counts_each_failed_message_once_as_the_bill_does(db: Store) -> None:
    add_campaign(db, "fails")
    messages = [  # id, outbox state, its receipt's status (None: no receipt)
        ("f1", "failed", "failed"),  # refused at send, and a failed receipt too
        ("f2", "sent", "failed"),  # accepted, then failed by its receipt
        ("f3", "unknown", "failed"),  # in flight at a crash, then failed by its receipt
        ("f4", "sending", "failed"),
        ("f5", "failed", None),  # refused at send only
        ("f6", "failed", "delivered"),  # refused at send, yet a receipt says delivered
        ("f7", "sent", "delivered"),  # not failed
    ]
    for i, (mid, state, status) in enumerate(messages):
        add_outbox(db, "fails", mid, recipient_key=f"+4477009002{i:02d}", state=state, country="GB",
                   error_code="131026" if state == "failed" else None,
                   sent_at=f"{DAY} 10:00:00+00" if state == "sent" else None)
        if status:
            add_receipt(db, f"{mid}:{status}", mid, status, f"{DAY} 10:06:00+00", error_code=(
                "131049" if status == "failed" else None), category="marketing", pricing_type="regular")
    summary = campaign_summary(db, "fails")
    bill = costs.summary_totals(costs.cost_report(db, "fails"))
    assert (summary["failed"], bill["failed"]) == (6, 6)  # f1 to f6, f1 once
    assert (summary["send_failed"], summary["delivered"]) == (3, 2)
    shown = {line.rsplit(None, 1)[0].strip(): line.split()[-1] for line in format_summary(summary).splitlines()[2:]}
    assert shown["failed"] == "6"
