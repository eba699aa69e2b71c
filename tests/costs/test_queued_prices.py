"""The price per queued message that dispatch's budget guard adds up (pipeline/dispatch/budget.py): platform +
service fee of the card in force for the message's market and category; 0 where no price applies; only the
campaign's queued messages. On SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from pipeline import store
from pipeline.costs import costing
from pipeline.dispatch import budget


@pytest.fixture
def priced(db: store.Store) -> store.Store:
    """A fresh store with the shipped prices (service fee USD 0.005)."""
    costing.load_prices(db)
    return db


def _message(db: store.Store, mid: str, country: str, *, campaign: str = "c1", category: str = "marketing",
             state: str = "queued", seq: int = 0) -> None:
    db.execute("INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, country, category, "
               "payload_json, state, queued_at) VALUES (:m, :c, :seq, :r, 'whatsapp', 's', :country, :cat, '{}', "
               ":state, :at)", m=mid, c=campaign, seq=seq, r=f"+{mid}", country=country, cat=category, state=state,
               at=datetime.now(UTC))


def test_each_queued_message_of_the_campaign_gets_its_markets_price(priced: store.Store) -> None:
    _message(priced, "gb", "GB", seq=1)
    _message(priced, "de-utility", "DE", category="utility", seq=2)
    _message(priced, "nowhere", "ZZ", seq=3)  # no market: no price
    _message(priced, "sent", "GB", state="sent", seq=4)  # already sent: its price is not the guard's business
    _message(priced, "other", "GB", campaign="c2", seq=1)
    budget.price_queued_messages(priced, "c1")  # what the flow and the fallback leg call
    prices = {m: None if p is None else Decimal(str(p)) for m, p in priced.rows(
        "SELECT message_id, est_cost_usd FROM outbox")}
    fee = Decimal("0.005")
    assert prices["gb"] == Decimal("0.0635") + fee
    assert prices["de-utility"] == Decimal("0.0550") + fee
    assert prices["nowhere"] == 0
    assert prices["sent"] is None and prices["other"] is None
