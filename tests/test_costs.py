"""Prices as dated data, the region -> market map, the estimate and the cost report, against hand-computed figures."""

from __future__ import annotations

import csv
import importlib.util
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import phonenumbers
import pytest

from pipeline import costs, store

ROOT = Path(__file__).resolve().parents[1]
D = Decimal


def add_campaign(con: duckdb.DuckDBPyConnection, campaign_id: str, category: str = "marketing") -> None:
    con.execute(
        "INSERT INTO campaigns VALUES (?, ?, 'whatsapp', 'spring_sale', ?, TIMESTAMPTZ '2026-10-01 09:00:00+00', '{}')",
        [campaign_id, f"Campaign {campaign_id}", category],
    )


def add_message(
    con: duckdb.DuckDBPyConnection,
    campaign_id: str,
    message_id: str,
    country: str,
    state: str,
    sent_at: str | None,
    category: str = "marketing",
) -> None:
    con.execute(
        """INSERT INTO outbox (message_id, campaign_id, recipient_key, channel, sender, country, category,
               payload_json, state, attempts, provider_message_id, queued_at, sent_at)
           VALUES (?, ?, ?, 'whatsapp', '15550001111', ?, ?, '{}', ?, 1, ?, TIMESTAMPTZ '2026-10-10 09:00:00+00', ?)""",
        [message_id, campaign_id, f"+155500{sum(map(ord, message_id)):05d}", country, category, state,
         f"wamid.{message_id}", sent_at],
    )


def add_event(
    con: duckdb.DuckDBPyConnection,
    message_id: str,
    status: str,
    at: str,
    category: str | None = None,
    pricing_type: str | None = None,
    error_code: str | None = None,
) -> None:
    con.execute(
        """INSERT INTO events (event_id, provider, provider_message_id, message_id, status, error_code, category,
               pricing_type, occurred_at, received_at, raw_json)
           VALUES (?, 'whatsapp', ?, ?, ?, ?, ?, ?, ?, now(), '{}')""",
        [f"{message_id}:{status}", f"wamid.{message_id}", message_id, status, error_code, category, pricing_type, at],
    )


@pytest.fixture
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    con = store.connect(tmp_path / "campaigns.duckdb")
    costs.load_prices(con)
    yield con
    con.close()


def spring_campaign(con: duckdb.DuckDBPyConnection) -> None:
    """Eight messages of one marketing campaign, sent 2026-10-10 (Oct 2026 card)."""
    add_campaign(con, "c1")
    sent = "2026-10-10 10:00:00+00"
    for mid, country, state in [
        ("m1", "GB", "sent"), ("m2", "GB", "sent"), ("m3", "DE", "sent"), ("m4", "DO", "sent"),
        ("m5", "US", "sent"), ("m6", "US", "sent"), ("m7", "US", "failed"), ("m8", "DO", "sent"),
    ]:
        add_message(con, "c1", mid, country, state, sent if state == "sent" else None)
    # m1: receipts stored out of order (read first); pricing rides on the 'sent' one.
    add_event(con, "m1", "read", "2026-10-10 10:05:00+00")
    add_event(con, "m1", "sent", "2026-10-10 10:00:01+00", "marketing", "regular")
    add_event(con, "m1", "delivered", "2026-10-10 10:01:00+00")
    # m2: read with no 'delivered' webhook at all (read implies delivered).
    add_event(con, "m2", "read", "2026-10-10 10:10:00+00", "marketing", "regular")
    add_event(con, "m2", "sent", "2026-10-10 10:00:01+00")
    # m3: sent as marketing, Meta re-categorised and billed it as utility.
    add_event(con, "m3", "delivered", "2026-10-10 10:02:00+00", "utility", "regular")
    # m4: inside a customer-service window: free platform fee, billed category utility.
    add_event(con, "m4", "delivered", "2026-10-10 10:02:00+00", "utility", "free_customer_service")
    # m5: accepted, then failed (the failure arrives before the 'sent' receipt).
    add_event(con, "m5", "failed", "2026-10-10 10:03:00+00", error_code="131049")
    add_event(con, "m5", "sent", "2026-10-10 10:00:01+00", "marketing", "regular")
    # m6: accepted, never receipted. m7: refused at send (state 'failed'), no receipts.
    add_event(con, "m8", "delivered", "2026-10-10 10:04:00+00", "marketing", "regular")


def test_markets_cover_every_libphonenumber_region(con: duckdb.DuckDBPyConnection) -> None:
    mapped = dict(con.execute("SELECT region, market FROM markets WHERE channel = 'whatsapp'").fetchall())
    assert set(phonenumbers.SUPPORTED_REGIONS) - mapped.keys() == set()
    card = {row["market"] for row in costs.read_rate_card()}
    assert set(mapped.values()) <= card
    assert mapped["GB"] == "United Kingdom"
    assert mapped["DE"] == "Germany"
    assert mapped["DO"] == "Rest of Latin America"
    assert mapped["JM"] == "Rest of Latin America"
    assert mapped["PR"] == "Rest of Latin America"
    assert mapped["US"] == "North America"
    assert mapped["CA"] == "North America"
    assert mapped["BS"] == "North America"
    assert mapped["AT"] == "Rest of Western Europe"
    assert mapped["GR"] == "Rest of Central & Eastern Europe"  # Meta's table, not Western Europe
    assert mapped["QA"] == "Rest of Middle East"
    assert mapped["KP"] == "Other"


def test_markets_csv_is_what_the_script_generates() -> None:
    spec = importlib.util.spec_from_file_location("make_markets", ROOT / "scripts" / "make_markets.py")
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    expected = script.build(script.card_markets(costs.RATE_CARD))
    with costs.MARKETS.open(newline="", encoding="utf-8") as f:
        committed = [(r["region"], r["market"], r["source"]) for r in csv.DictReader(f)]
    assert committed == expected


def test_load_prices_is_idempotent_and_prices_service_at_utility(con: duckdb.DuckDBPyConnection) -> None:
    costs.load_prices(con)  # second load of the same card
    assert con.execute("SELECT count(*) FROM prices").fetchall() == [(28 * 4,)]
    assert con.execute("SELECT count(*) FROM markets").fetchall() == [(len(phonenumbers.SUPPORTED_REGIONS) + 1,)]
    rows = dict(con.execute(
        "SELECT category, platform_fee_usd FROM prices WHERE market = 'United Kingdom'").fetchall())
    assert rows == {"marketing": D("0.0635"), "utility": D("0.022"), "authentication": D("0.022"),
                    "service": D("0.022")}
    assert con.execute("SELECT DISTINCT service_fee_usd, effective_from FROM prices").fetchall() == [
        (D("0.005"), date(2026, 10, 1))]


def test_load_prices_refuses_a_card_missing_a_mapped_market(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    card = tmp_path / "card.csv"
    card.write_text("market,calling_codes,marketing_usd,utility_usd,authentication_usd\nOther,,0.06,0.007,0.007\n")
    with pytest.raises(ValueError, match="United Kingdom"):
        costs.load_prices(con, rate_card=card, effective_from=date(2026, 7, 1))
    assert con.execute("SELECT count(*) FROM prices WHERE effective_from = '2026-07-01'").fetchall() == [(0,)]


def report_rows(con: duckdb.DuckDBPyConnection, campaign_id: str) -> dict[tuple[str, str], dict]:
    df = costs.cost_report(con, campaign_id)
    return {(r["country"], r["category"]): r for r in df.iter_rows(named=True)}


def test_cost_report_numbers(con: duckdb.DuckDBPyConnection) -> None:
    spring_campaign(con)
    rows = report_rows(con, "c1")
    assert list(rows) == [("DE", "utility"), ("DO", "marketing"), ("DO", "utility"), ("GB", "marketing"),
                          ("US", "marketing")]
    expected = {
        # country, category: market, sent, delivered, read, failed, platform, service
        ("DE", "utility"): ("Germany", 1, 1, 0, 0, "0.055", "0.005"),  # billed utility, not marketing
        ("DO", "marketing"): ("Rest of Latin America", 1, 1, 0, 0, "0.074", "0.005"),
        ("DO", "utility"): ("Rest of Latin America", 1, 1, 0, 0, "0", "0.005"),  # free_customer_service
        ("GB", "marketing"): ("United Kingdom", 2, 2, 2, 0, "0.127", "0.010"),
        ("US", "marketing"): ("North America", 2, 0, 0, 2, "0", "0.010"),  # m5 failed, m6 silent, m7 refused
    }
    for key, (market, sent, delivered, read, failed, platform, service) in expected.items():
        row = rows[key]
        assert (row["channel"], row["market"]) == ("whatsapp", market), key
        assert (row["sent"], row["delivered"], row["read"], row["failed"]) == (sent, delivered, read, failed), key
        assert row["platform_fee_usd"] == D(platform), key
        assert row["service_fee_usd"] == D(service), key
        assert row["total_usd"] == D(platform) + D(service), key
        assert row["unpriced"] == 0, key
    assert rows[("GB", "marketing")]["delivery_rate"] == 1.0
    assert rows[("GB", "marketing")]["read_rate"] == 1.0
    assert rows[("DE", "utility")]["read_rate"] == 0.0
    assert rows[("US", "marketing")]["delivery_rate"] == 0.0
    assert rows[("US", "marketing")]["read_rate"] is None

    totals = costs.summary_totals(costs.cost_report(con, "c1"))
    assert totals == {
        "sent": 7, "delivered": 5, "read": 2, "failed": 2, "unpriced": 0,
        "platform_fee_usd": D("0.256"), "service_fee_usd": D("0.035"), "total_usd": D("0.291"),
        "delivery_rate": 5 / 7, "read_rate": 2 / 5,
    }
    assert isinstance(totals["total_usd"], Decimal)


def test_cost_report_ignores_other_campaigns(con: duckdb.DuckDBPyConnection) -> None:
    spring_campaign(con)
    add_campaign(con, "other")
    add_message(con, "other", "x1", "GB", "sent", "2026-10-10 10:00:00+00")
    add_event(con, "x1", "delivered", "2026-10-10 10:01:00+00", "marketing", "regular")
    assert report_rows(con, "c1")[("GB", "marketing")]["sent"] == 2
    assert costs.cost_report(con, "missing").height == 0


def test_old_campaign_is_priced_by_the_card_of_its_day(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    # A July 2026 card where UK marketing was 0.0600 and the service fee 0.004.
    card = tmp_path / "whatsapp-rates-2026-07-usd.csv"
    text = costs.RATE_CARD.read_text(encoding="utf-8")
    card.write_text(text.replace("United Kingdom,44,0.0635,", "United Kingdom,44,0.0600,"), encoding="utf-8")
    costs.load_prices(con, rate_card=card, effective_from=date(2026, 7, 1), service_fee_usd="0.004")

    add_campaign(con, "old")
    add_message(con, "old", "o1", "GB", "sent", "2026-08-15 12:00:00+00")  # July card
    add_message(con, "old", "o2", "GB", "sent", "2026-10-02 12:00:00+00")  # October card
    # 22:30 in New York on 30 Sep is 02:30 UTC on 1 Oct: the October card, whatever the session zone.
    add_message(con, "old", "o3", "GB", "sent", "2026-09-30 22:30:00-04:00")
    add_message(con, "old", "o4", "GB", "sent", "2026-06-30 12:00:00+00")  # before any card: unpriced
    for mid in ("o1", "o2", "o3", "o4"):
        add_event(con, mid, "delivered", "2026-10-02 12:01:00+00", "marketing", "regular")
    con.execute("SET TimeZone = 'America/New_York'")

    row = report_rows(con, "old")[("GB", "marketing")]
    assert row["platform_fee_usd"] == D("0.0600") + D("0.0635") + D("0.0635")
    assert row["service_fee_usd"] == D("0.004") + D("0.005") + D("0.005")
    assert row["unpriced"] == 1


def test_estimate_prices_every_outbox_row_at_the_current_card(con: duckdb.DuckDBPyConnection) -> None:
    spring_campaign(con)
    est = costs.estimate_cost(con, "c1", on=date(2026, 10, 20))
    # All eight as marketing: GB 2 x 0.0635, DE 0.1365, DO 2 x 0.074, US 3 x 0.025; 8 x 0.005 service.
    assert est.messages == 8
    assert est.platform_fee_usd == D("0.4865")
    assert est.service_fee_usd == D("0.040")
    assert est.total_usd == D("0.5265")
    assert est.unpriced == 0
    by_country = {r["country"]: r for r in est.by_country.iter_rows(named=True)}
    assert by_country["US"]["messages"] == 3
    assert by_country["US"]["total_usd"] == D("0.090")
    assert by_country["DO"]["market"] == "Rest of Latin America"

    before = costs.estimate_cost(con, "c1", on=date(2026, 9, 1))  # no card in force yet
    assert (before.unpriced, before.total_usd) == (8, D(0))


def test_category_without_a_price_is_reported_unpriced_not_free(con: duckdb.DuckDBPyConnection) -> None:
    add_campaign(con, "otp", "authentication")
    add_message(con, "otp", "a1", "IN", "sent", "2026-10-10 10:00:00+00", "authentication")
    # The card carries no authentication-international rate: the gap must show, not read as USD 0 silently.
    add_event(con, "a1", "delivered", "2026-10-10 10:01:00+00", "authentication-international", "regular")
    row = report_rows(con, "otp")[("IN", "authentication_international")]
    assert (row["market"], row["delivered"], row["unpriced"]) == ("India", 1, 1)
    assert row["platform_fee_usd"] == D(0)
