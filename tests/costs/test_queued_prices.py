"""The price per queued message that dispatch's budget guard adds up (reports/queued_prices.sql), set by the costs
stage beside the estimate's SQL: platform + service fee of the card in force for the message's market and
category; nothing where no price applies (the guard counts it 0); only the campaign's queued messages."""

from __future__ import annotations

from decimal import Decimal

import duckdb
import pytest

from pipeline.costs import costing
from pipeline.dispatch import budget


@pytest.fixture
def con(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """The fresh store connection of tests/conftest.py, with the shipped prices (service fee USD 0.005)."""
    costing.load_prices(con)
    return con


def _message(con: duckdb.DuckDBPyConnection, mid: str, country: str, *, campaign: str = "c1",
             category: str = "marketing", state: str = "queued") -> None:
    con.execute("INSERT INTO outbox (message_id, campaign_id, recipient_key, channel, sender, country, category, "
                "payload_json, state, queued_at) VALUES (?, ?, ?, 'whatsapp', 's', ?, ?, '{}', ?, now())",
                [mid, campaign, f"+{mid}", country, category, state])


def test_each_queued_message_of_the_campaign_gets_its_markets_price(con: duckdb.DuckDBPyConnection) -> None:
    _message(con, "gb", "GB")
    _message(con, "de-utility", "DE", category="utility")
    _message(con, "nowhere", "ZZ")  # no market: no price
    _message(con, "sent", "GB", state="sent")  # already sent: its price is not the guard's business
    _message(con, "other", "GB", campaign="c2")
    budget.price_queued_messages(con, "c1")  # what the flow and the fallback leg call
    prices = dict(con.execute("SELECT message_id, est_cost_usd FROM outbox").fetchall())
    fee = Decimal("0.005")
    assert Decimal(str(prices["gb"])) == Decimal("0.0635") + fee
    assert Decimal(str(prices["de-utility"])) == Decimal("0.0550") + fee
    assert prices["nowhere"] in (None, 0)  # the ledger reads a missing price as 0 (coalesce)
    assert prices["sent"] in (None, 0) and prices["other"] in (None, 0)
    assert budget.price_queued_messages is costing.price_queued_messages  # one place for the SQL
