"""Rows for the cost tests, written straight into the store: campaigns, messages, receipts, a July card, and the
spring campaign whose costs tests/costs/test_costs.py computes by hand."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from pipeline.costs import costing as costs
from pipeline.store import Store
from tests.costs import rows as store_rows


def add_campaign(db: Store, campaign_id: str, category: str = "marketing", channel: str = "whatsapp",
                 spec_json: str = "{}") -> None:
    store_rows.add_campaign(db, campaign_id, category, channel, spec_json=spec_json)


def add_message(
    db: Store, campaign_id: str, message_id: str, country: str | None, state: str,
    sent_at: str | None, category: str = "marketing", *, channel: str = "whatsapp", error_code: str | None = None,
    text: str | None = None,
) -> None:
    key = f"+155500{sum(map(ord, message_id)):05d}"
    store_rows.add_outbox(db, campaign_id, message_id, recipient_key=key, channel=channel, country=country,
                    category=category, state=state, provider_message_id=f"wamid.{message_id}", error_code=error_code,
                    sent_at=sent_at)
    if text is not None:
        db.execute("INSERT INTO recipients (campaign_id, row_number, recipient_key, country, text) "
                   "VALUES (:c, (SELECT count(*) FROM recipients), :key, :country, :text)",
                   c=campaign_id, key=key, country=country, text=text)


def add_event(
    db: Store, message_id: str, status: str, at: str, category: str | None = None,
    pricing_type: str | None = None, error_code: str | None = None,
) -> None:
    store_rows.add_receipt(db, f"{message_id}:{status}", message_id, status, at, category=category,
                     pricing_type=pricing_type, error_code=error_code)


def delivered(db: Store, campaign_id: str, message_id: str, country: str, day: str,
              category: str = "marketing", pricing_type: str = "regular", billed: str | None = None) -> None:
    add_message(db, campaign_id, message_id, country, "sent", f"{day} 10:00:00+00", category)
    add_event(db, message_id, "delivered", f"{day} 10:01:00+00", billed or category, pricing_type)


def july_card(db: Store, tmp_path: Path, uk_marketing: str = "0.0600",
              service_fee: str = "0.005") -> None:
    """A July 2026 WhatsApp card: the October one with UK marketing at `uk_marketing`."""
    card = tmp_path / "whatsapp-rates-2026-07-usd.csv"
    text = costs.RATE_CARD.read_text(encoding="utf-8")
    card.write_text(text.replace("United Kingdom,44,0.0635,", f"United Kingdom,44,{uk_marketing},"), encoding="utf-8")
    costs.load_prices(db, rate_card=card, effective_from=date(2026, 7, 1), service_fee_usd=service_fee)


def spring_campaign(db: Store) -> None:
    """Eight messages of one marketing campaign, sent 2026-10-10 (Oct 2026 card and rules)."""
    add_campaign(db, "c1")
    sent = "2026-10-10 10:00:00+00"
    for mid, country, state in [
        ("m1", "GB", "sent"), ("m2", "GB", "sent"), ("m3", "DE", "sent"), ("m4", "DO", "sent"),
        ("m5", "US", "sent"), ("m6", "US", "sent"), ("m7", "US", "failed"), ("m8", "DO", "sent"),
    ]:
        add_message(db, "c1", mid, country, state, sent if state == "sent" else None,
                    error_code="131026" if state == "failed" else None)
    # m1: receipts stored out of order (read first); pricing rides on the 'sent' one.
    add_event(db, "m1", "read", "2026-10-10 10:05:00+00")
    add_event(db, "m1", "sent", "2026-10-10 10:00:01+00", "marketing", "regular")
    add_event(db, "m1", "delivered", "2026-10-10 10:01:00+00")
    # m2: read with no 'delivered' webhook at all (read implies delivered).
    add_event(db, "m2", "read", "2026-10-10 10:10:00+00", "marketing", "regular")
    add_event(db, "m2", "sent", "2026-10-10 10:00:01+00")
    # m3: sent as marketing, Meta re-categorised and billed it as utility.
    add_event(db, "m3", "delivered", "2026-10-10 10:02:00+00", "utility", "regular")
    # m4: utility inside a customer-service window: charged from 2026-10-01 (it was free before).
    add_event(db, "m4", "delivered", "2026-10-10 10:02:00+00", "utility", "free_customer_service")
    # m5: accepted, then failed (the failure arrives before the 'sent' receipt).
    add_event(db, "m5", "failed", "2026-10-10 10:03:00+00", error_code="131049")
    add_event(db, "m5", "sent", "2026-10-10 10:00:01+00", "marketing", "regular")
    # m6: accepted, never receipted. m7: refused at send (state 'failed'), no receipts.
    add_event(db, "m8", "delivered", "2026-10-10 10:04:00+00", "marketing", "regular")


def report_rows(db: Store, campaign_id: str) -> dict[tuple[str, str], dict]:
    df = costs.cost_report(db, campaign_id)
    return {(r["country"], r["category"]): r for r in df.iter_rows(named=True)}
