"""Price data as files (cards, tiers, fees, rules), SMS parts and the points ledger, by hand-computed figures."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from pipeline.costs import costing as costs
from pipeline.costs import points, pricing
from pipeline.render.segments import count_segments

D = Decimal


@pytest.fixture
def con(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """The session's fresh store connection (tests/conftest.py), with the reference data."""
    pricing.load_reference_data(con)
    return con


@pytest.mark.parametrize(("text", "encoding", "units", "segments"), [
    ("", "gsm7", 0, 1),
    ("a" * 160, "gsm7", 160, 1),
    ("a" * 161, "gsm7", 161, 2),  # 153 + 8
    ("a" * 306, "gsm7", 306, 2),
    ("a" * 307, "gsm7", 307, 3),
    ("€" * 80, "gsm7", 160, 1),  # extension characters count 2
    ("a" * 152 + "€" + "a" * 152, "gsm7", 306, 3),  # the € would straddle parts 1 and 2: it starts part 2
    ("Grüße aus Köln", "gsm7", 14, 1),  # ü, ö are GSM-7
    ("ç" + "a" * 69, "ucs2", 70, 1),  # one non-GSM character switches the whole text
    ("ç" + "a" * 70, "ucs2", 71, 2),
    ("😀" * 35, "ucs2", 70, 1),  # surrogate pairs count 2
    ("a" * 66 + "😀" + "a" * 66, "ucs2", 134, 3),  # a pair is never split: 66 | 2 + 65 | 1
])
def test_sms_segments(text: str, encoding: str, units: int, segments: int) -> None:
    got = count_segments(text)
    assert (got.encoding, got.units, got.segments) == (encoding, units, segments)


def test_reference_data_loads_every_shipped_file(con: duckdb.DuckDBPyConnection) -> None:
    again = pricing.load_reference_data(con)  # idempotent
    assert again == {"rules": 18, "markets": 246, "service_fees": 8, "prices": 84 + 33 + 38 + 1, "tiers": 6}
    assert con.execute("SELECT count(*) FROM pricing_rules").fetchall() == [(18,)]
    ladder = con.execute("SELECT from_messages, to_messages, platform_fee_usd FROM price_tiers "
                         "WHERE market = 'Rest of Africa' ORDER BY 1").fetchall()
    assert ladder[0] == (1, 100_000, D("0.004")) and ladder[-1] == (80_000_001, None, D("0.003"))
    assert con.execute("SELECT fee_points FROM service_fees WHERE channel = 'messenger' ORDER BY effective_from"
                       ).fetchall() == [(D(0),), (D(50),)]
    # 'Default' rows price every destination a card does not list.
    assert con.execute("SELECT platform_fee_usd FROM prices WHERE channel = 'sms' AND market = '*'").fetchall() == [
        (D("0.05"),)]


def test_card_kind_and_date_come_from_the_file(tmp_path: Path) -> None:
    wa = tmp_path / "whatsapp-rates-2027-01-usd.csv"
    wa.write_text("market,calling_codes,marketing_usd,utility_usd,authentication_usd,authentication_international_usd\n"
                  "India,91,0.0118,0.0014,0.0014,0.028\nOther,,0.0604,0.0077,0.0077,\n")
    card = pricing.read_card(wa)
    assert (card.kind, card.effective_from, card.channel) == ("whatsapp_card", date(2027, 1, 1), "whatsapp")
    assert card.rows.filter(market="India").select("category", "platform_fee_usd").sort("category").rows() == [
        ("authentication", D("0.0014")), ("authentication_international", D("0.028")), ("marketing", D("0.0118")),
        ("utility", D("0.0014"))]
    assert card.rows.filter(market="Other").height == 3  # no empty authentication-international row

    sms = tmp_path / "sms.csv"
    sms.write_text("# effective_from: 2026-12-15\nmarket,category,platform_fee_usd\n"
                   "GB,segment,0.03\nDefault,segment,0.04\n")
    card = pricing.read_card(sms, channel="sms")
    assert (card.kind, card.effective_from) == ("rates", date(2026, 12, 15))
    assert card.rows.rows() == [("GB", "segment", D("0.03")), ("*", "segment", D("0.04"))]


@pytest.mark.parametrize(("content", "message"), [
    ("market,category,platform_fee_usd\nGB,segment,-0.01\n", "must be >= 0"),
    ("market,category,platform_fee_usd\nGB,segment,abc\n", "not a number"),
    ("market,category,platform_fee_usd\nGB,segment,0.01\nGB,segment,0.02\n", "listed twice"),
    ("country,price\nGB,0.01\n", "unknown card layout"),
    ("market,category,from_messages,to_messages,platform_fee_usd\nKE,utility,10,5,0.003\n", "bad tier range"),
])
def test_bad_price_files_are_refused_with_the_reason(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "card-2026-12.csv"
    path.write_text(content)
    with pytest.raises(pricing.PriceDataError, match=message):
        pricing.read_card(path, channel="sms")


def test_a_card_needs_a_date(tmp_path: Path) -> None:
    path = tmp_path / "card.csv"
    path.write_text("market,category,platform_fee_usd\nGB,segment,0.01\n")
    with pytest.raises(pricing.PriceDataError, match="no effective date"):
        pricing.read_card(path, channel="sms")


def test_import_replaces_the_whole_card_of_its_date_and_survives_reloads(con: duckdb.DuckDBPyConnection,
                                                                        tmp_path: Path) -> None:
    path = tmp_path / "sms-rates.csv"
    path.write_text("market,category,platform_fee_usd\nGB,segment,0.03\nDefault,segment,0.06\n")
    pricing.import_card(con, path, channel="sms", effective_from=date(2026, 10, 1))
    rows = con.execute("SELECT market, platform_fee_usd, source FROM prices WHERE channel = 'sms' "
                       "AND effective_from = '2026-10-01' ORDER BY 1").fetchall()
    # The shipped card of that date is replaced as a whole (its other 36 markets are gone), not merged.
    assert rows == [("*", D("0.06"), "import:sms-rates.csv"), ("GB", D("0.03"), "import:sms-rates.csv")]
    pricing.load_reference_data(con)  # the shipped file does not overwrite the imported card
    assert con.execute("SELECT count(*) FROM prices WHERE channel = 'sms'").fetchall() == [(2,)]


def test_import_refuses_categories_no_rule_bills(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    path = tmp_path / "viber-2027-01.csv"
    path.write_text("market,category,platform_fee_usd\nUA,promotionnal,0.02\n")
    with pytest.raises(pricing.PriceDataError, match="promotionnal"):
        pricing.import_card(con, path, channel="viber")


def test_an_imported_card_prices_messages_from_its_date(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    costs.load_prices(con)
    path = tmp_path / "whatsapp-rates-2027-01-usd.csv"
    path.write_text(costs.RATE_CARD.read_text(encoding="utf-8").replace("Germany,49,0.1365,", "Germany,49,0.1500,"))
    pricing.import_card(con, path)
    con.execute("INSERT INTO campaigns VALUES ('c', 'c', 'whatsapp', 't', 'marketing', now(), '{}')")
    for mid, sent in [("dec", "2026-12-31 23:00:00+00"), ("jan", "2027-01-01 01:00:00+00")]:
        con.execute("""INSERT INTO outbox (message_id, campaign_id, recipient_key, channel, sender, country, category,
                       payload_json, state, queued_at, sent_at) VALUES (?, 'c', ?, 'whatsapp', 's', 'DE', 'marketing',
                       '{}', 'sent', ?, ?)""", [mid, mid, sent, sent])
        con.execute("INSERT INTO events (event_id, provider, provider_message_id, message_id, status, occurred_at) "
                    "VALUES (?, 'whatsapp', ?, ?, 'delivered', ?)", [mid, mid, mid, sent])
    [row] = costs.cost_report(con, "c").iter_rows(named=True)
    assert row["platform_fee_usd"] == D("0.1365") + D("0.1500")


def test_a_fuller_card_prices_countries_by_their_own_market(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    costs.load_prices(con)
    # Meta prices Poland on its own; our card has no Poland row, so PL is billed in its group until a card has one.
    assert con.execute("SELECT market, own_market FROM markets WHERE region = 'PL'").fetchall() == [
        ("Rest of Central & Eastern Europe", "Poland")]
    path = tmp_path / "whatsapp-rates-2027-01-usd.csv"
    path.write_text(costs.RATE_CARD.read_text(encoding="utf-8") + "Poland,48,0.0500,0.0150,0.0150\n")
    pricing.import_card(con, path)
    con.execute("INSERT INTO campaigns VALUES ('c', 'c', 'whatsapp', 't', 'marketing', now(), '{}')")
    for mid, country, sent in [("dec", "PL", "2026-12-31 12:00:00+00"), ("jan", "PL", "2027-01-02 12:00:00+00"),
                               ("cz", "CZ", "2027-01-02 12:00:00+00")]:
        con.execute("""INSERT INTO outbox (message_id, campaign_id, recipient_key, channel, sender, country, category,
                       payload_json, state, queued_at, sent_at) VALUES (?, 'c', ?, 'whatsapp', 's', ?, 'marketing',
                       '{}', 'sent', ?, ?)""", [mid, mid, country, sent, sent])
        con.execute("INSERT INTO events (event_id, provider, provider_message_id, message_id, status, occurred_at) "
                    "VALUES (?, 'whatsapp', ?, ?, 'delivered', ?)", [mid, mid, mid, sent])
    groups = costs.campaign_costs(con, "c").groups.sort("price_day", "country")
    assert groups.select("country", "market", "unit_fee_usd").rows() == [
        ("PL", "Rest of Central & Eastern Europe", D("0.086")),  # December: the October card, no Poland row
        ("CZ", "Rest of Central & Eastern Europe", D("0.086")),
        ("PL", "Poland", D("0.05")),  # January: the imported card has Poland
    ]


def test_points_trial_credit_is_used_first(con: duckdb.DuckDBPyConnection) -> None:
    assert points.usd_to_points(D("0.091")) == D("910.00")  # Malaysia marketing + service: 860 + 50 points
    assert points.settle_campaign(con, "a", D(60_000)) == {
        "trial": D(60_000), "paid": D(0), "unfunded": D(0), "total": D(60_000)}
    points.add_points(con, 30_000, entry_id="order-1")
    points.add_points(con, 30_000, entry_id="order-1")  # the same order twice is one credit
    # b: the trial credit's last 40,000, then 30,000 paid, and 5,000 beyond every credit.
    assert points.settle_campaign(con, "b", D(75_000)) == {
        "trial": D(40_000), "paid": D(30_000), "unfunded": D(5_000), "total": D(75_000)}
    assert points.balances(con) == {"trial": D(0), "paid": D(0), "unfunded": D(5_000)}
    # Late receipts lower b's cost (a re-categorisation): the refund undoes the unfunded part first.
    assert points.settle_campaign(con, "b", D(68_000)) == {
        "trial": D(40_000), "paid": D(28_000), "unfunded": D(0), "total": D(68_000)}
    assert points.settle_campaign(con, "b", D(68_000))["total"] == D(68_000)  # nothing new to charge
    assert con.execute("SELECT count(*) FROM points_ledger WHERE campaign_id = 'b'").fetchall() == [(5,)]
    assert points.grant_trial_credit(con) is False  # once per database
