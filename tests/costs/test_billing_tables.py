"""The incremental billing tables and period bills, against hand-computed figures: what a refresh counts again,
receipts below the watermark, campaigns whose rows are gone, messages in flight at a crash."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from pipeline.costs import costing as costs
from pipeline.costs.billing import RECOUNT_IN_FLIGHT_S, refresh_billing
from pipeline.store import Store
from tests.costs import rows as store_rows
from tests.costs.costed import add_campaign, add_event, add_message, delivered, report_rows, spring_campaign

D = Decimal


@pytest.fixture
def db(db: Store) -> Store:
    costs.load_prices(db)
    return db


def test_billing_tables_follow_new_receipts_and_outbox_changes(db: Store) -> None:
    spring_campaign(db)
    assert report_rows(db, "c1")[("US", "marketing")]["delivered"] == 0
    add_event(db, "m6", "delivered", "2026-10-10 11:00:00+00", "marketing", "regular")  # a late receipt
    assert report_rows(db, "c1")[("US", "marketing")]["delivered"] == 1
    # A resend of the refused m7 (the ledger stamps updated_at) shows without any receipt.
    db.execute("UPDATE outbox SET state = 'sent', error_code = NULL, sent_at = :sent, updated_at = :now "
               "WHERE message_id = 'm7'", sent=store_rows.ts("2026-10-10 12:00:00+00"), now=datetime.now(UTC))
    us = report_rows(db, "c1")[("US", "marketing")]
    assert (us["sent"], us["failed"]) == (3, 1)
    # Receipts removed behind the watermark (never done, but possible): the fold is rebuilt, not trusted.
    db.execute("DELETE FROM events WHERE message_id = 'm6'")
    assert report_rows(db, "c1")[("US", "marketing")]["delivered"] == 0


def test_period_bill_across_campaigns(db: Store) -> None:
    add_campaign(db, "a")
    add_campaign(db, "b")
    delivered(db, "a", "a1", "GB", "2026-11-02")
    delivered(db, "a", "a2", "GB", "2026-11-30")
    delivered(db, "b", "b1", "DE", "2026-11-02")
    delivered(db, "b", "b2", "DE", "2026-12-01")  # next month
    month = costs.period_costs(db, date(2026, 11, 1), date(2026, 11, 30)).rows
    assert month.select("campaign_id", "country", "delivered", "total_usd").rows() == [
        ("a", "GB", 2, D("0.137")), ("b", "DE", 1, D("0.1415"))]
    day = costs.period_costs(db, date(2026, 11, 2), date(2026, 11, 2)).rows
    assert day.select("campaign_id", "delivered").rows() == [("a", 1), ("b", 1)]


def test_billing_counts_again_only_what_changed(db: Store) -> None:
    spring_campaign(db)
    add_campaign(db, "other")
    delivered(db, "other", "x1", "GB", "2026-10-10")
    assert refresh_billing(db) == {"events": 11, "regrouped": 2}
    assert refresh_billing(db) == {"events": 0, "regrouped": 0}  # nothing new: nothing counted
    add_event(db, "m6", "delivered", "2026-10-10 11:00:00+00", "marketing", "regular")
    assert refresh_billing(db) == {"events": 1, "regrouped": 1}  # only the campaign the receipt touched
    # The outbox triggers mark a campaign whose rows change, in the writer's own transaction.
    db.execute("UPDATE outbox SET state = 'failed', error_code = '131026' WHERE message_id = 'x1'")
    assert refresh_billing(db, "c1") == {"events": 0, "regrouped": 0}  # another campaign's change waits
    assert refresh_billing(db) == {"events": 0, "regrouped": 1}
    # An outbox that changes again soon after a count caused by a change keeps changing (a campaign being sent):
    # a refresh of every campaign counts it again once that count is RECOUNT_IN_FLIGHT_S old; its own refresh
    # counts it at once.
    db.execute("UPDATE outbox SET state = 'sent', error_code = NULL WHERE message_id = 'x1'")
    assert refresh_billing(db) == {"events": 0, "regrouped": 0}
    db.execute("UPDATE billing_sync SET synced_at = :at WHERE source = 'outbox:other'",
               at=datetime.now(UTC) - timedelta(seconds=RECOUNT_IN_FLIGHT_S + 1))
    assert refresh_billing(db) == {"events": 0, "regrouped": 1}
    db.execute("UPDATE outbox SET state = 'failed', error_code = '131026' WHERE message_id = 'x1'")
    assert costs.cost_report(db, "other").select("sent", "failed").rows() == [(0, 1)]
    # A count that did not finish (a crash between taking the campaign and writing its groups) is done again.
    db.execute("UPDATE billing_sync SET fingerprint = 'a token of a count that died' WHERE source = 'outbox:c1'")
    assert refresh_billing(db, "c1")["regrouped"] == 1
    assert db.scalar("SELECT fingerprint FROM billing_sync WHERE source = 'outbox:c1'") == "counted"
    # Receipts always count again at once, even a campaign that keeps changing.
    db.execute("UPDATE outbox SET state = 'sent', error_code = NULL WHERE message_id = 'x1'")
    add_event(db, "x1", "failed", "2026-10-10 11:00:00+00", error_code="131049")
    assert refresh_billing(db) == {"events": 1, "regrouped": 1}


def test_receipts_committed_below_the_watermark_are_folded(db: Store) -> None:
    """On PostgreSQL a transaction can commit a lower events.seq after a higher one was folded: the window below
    the watermark is counted again and folded again (simulated here with explicit seqs)."""
    add_campaign(db, "late")
    for mid in ("l1", "l2"):
        add_message(db, "late", mid, "GB", "sent", "2026-10-10 10:00:00+00")
    db.execute("""INSERT INTO events (seq, event_id, provider, provider_message_id, message_id, status, category,
                      pricing_type, occurred_at) VALUES (100, 'e100', 'whatsapp', 'wamid.l1', 'l1', 'delivered',
                      'marketing', 'regular', :at)""", at=store_rows.ts("2026-10-10 10:01:00+00"))
    assert report_rows(db, "late")[("GB", "marketing")]["delivered"] == 1
    db.execute("""INSERT INTO events (seq, event_id, provider, provider_message_id, message_id, status, category,
                      pricing_type, occurred_at) VALUES (50, 'e50', 'whatsapp', 'wamid.l2', 'l2', 'read',
                      'marketing', 'regular', :at)""", at=store_rows.ts("2026-10-10 10:02:00+00"))
    row = report_rows(db, "late")[("GB", "marketing")]
    assert (row["delivered"], row["read"]) == (2, 1)


def test_a_campaign_whose_outbox_rows_are_gone_is_forgotten(db: Store) -> None:
    add_campaign(db, "gone")
    delivered(db, "gone", "g1", "GB", "2026-10-10")
    assert costs.period_costs(db, date(2026, 10, 1), date(2026, 10, 31)).rows["campaign_id"].to_list() == ["gone"]
    db.execute("DELETE FROM outbox WHERE campaign_id = 'gone'")
    assert costs.period_costs(db, date(2026, 10, 1), date(2026, 10, 31)).rows.height == 0
    assert db.scalar("SELECT count(*) FROM billing_sync WHERE source = 'outbox:gone'") == 0


def test_a_message_in_flight_at_a_crash_with_a_receipt_is_billed_as_sent(db: Store) -> None:
    add_campaign(db, "c1")
    day = "2026-10-10"
    add_message(db, "c1", "m1", "GB", "sent", f"{day} 10:00:00+00")
    add_message(db, "c1", "m2", "GB", "unknown", f"{day} 10:00:00+00")  # its receipts arrived after the crash
    add_message(db, "c1", "m3", "GB", "sending", None)
    add_message(db, "c1", "m4", "GB", "unknown", None)  # no receipt: not known to have reached the provider
    for mid in ("m1", "m2", "m3"):
        add_event(db, mid, "delivered", f"{day} 10:01:00+00", "marketing", "regular")
    totals = costs.summary_totals(costs.cost_report(db, "c1"))
    assert (totals["sent"], totals["delivered"], totals["delivery_rate"]) == (3, 3, 1.0)
    # Each pays the platform fee (0.0635 per delivered GB marketing message) and the service fee (0.005 per sent).
    assert (totals["platform_fee_usd"], totals["service_fee_usd"], totals["total_usd"]) == (
        D("0.1905"), D("0.015"), D("0.2055"))
