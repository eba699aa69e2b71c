"""The estimate and the actual cost, against hand-computed figures: dated WhatsApp rules and cards, windows,
re-categorisation, volume tiers, other channels, failures, the incremental billing tables, period bills."""

from __future__ import annotations

import csv
import importlib.util
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import phonenumbers
import pytest

from pipeline.costs import costing as costs
from pipeline.costs import pricing

ROOT = Path(__file__).resolve().parents[2]
D = Decimal


def add_campaign(con: duckdb.DuckDBPyConnection, campaign_id: str, category: str = "marketing",
                 channel: str = "whatsapp") -> None:
    con.execute(
        "INSERT INTO campaigns VALUES (?, ?, ?, 'spring_sale', ?, TIMESTAMPTZ '2026-10-01 09:00:00+00', '{}')",
        [campaign_id, f"Campaign {campaign_id}", channel, category],
    )


def add_message(
    con: duckdb.DuckDBPyConnection, campaign_id: str, message_id: str, country: str | None, state: str,
    sent_at: str | None, category: str = "marketing", *, channel: str = "whatsapp", error_code: str | None = None,
    text: str | None = None,
) -> None:
    key = f"+155500{sum(map(ord, message_id)):05d}"
    con.execute(
        """INSERT INTO outbox (message_id, campaign_id, recipient_key, channel, sender, country, category,
               payload_json, state, attempts, provider_message_id, error_code, queued_at, sent_at)
           VALUES (?, ?, ?, ?, 'sender', ?, ?, '{}', ?, 1, ?, ?, TIMESTAMPTZ '2026-10-10 09:00:00+00', ?)""",
        [message_id, campaign_id, key, channel, country, category, state, f"wamid.{message_id}", error_code, sent_at],
    )
    if text is not None:
        con.execute("INSERT INTO recipients (campaign_id, row_number, recipient_key, country, text) "
                    "VALUES (?, (SELECT count(*) FROM recipients), ?, ?, ?)", [campaign_id, key, country, text])


def add_event(
    con: duckdb.DuckDBPyConnection, message_id: str, status: str, at: str, category: str | None = None,
    pricing_type: str | None = None, error_code: str | None = None,
) -> None:
    con.execute(
        """INSERT INTO events (event_id, provider, provider_message_id, message_id, status, error_code, category,
               pricing_type, occurred_at, received_at, raw_json)
           VALUES (?, 'whatsapp', ?, ?, ?, ?, ?, ?, ?, now(), '{}')""",
        [f"{message_id}:{status}", f"wamid.{message_id}", message_id, status, error_code, category, pricing_type, at],
    )


def delivered(con: duckdb.DuckDBPyConnection, campaign_id: str, message_id: str, country: str, day: str,
              category: str = "marketing", pricing_type: str = "regular", billed: str | None = None) -> None:
    add_message(con, campaign_id, message_id, country, "sent", f"{day} 10:00:00+00", category)
    add_event(con, message_id, "delivered", f"{day} 10:01:00+00", billed or category, pricing_type)


@pytest.fixture
def con(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
    """The session's fresh store connection (tests/conftest.py), with the reference data."""
    costs.load_prices(con)
    return con


def july_card(con: duckdb.DuckDBPyConnection, tmp_path: Path, uk_marketing: str = "0.0600",
              service_fee: str = "0.005") -> None:
    """A July 2026 WhatsApp card: the October one with UK marketing at `uk_marketing`."""
    card = tmp_path / "whatsapp-rates-2026-07-usd.csv"
    text = costs.RATE_CARD.read_text(encoding="utf-8")
    card.write_text(text.replace("United Kingdom,44,0.0635,", f"United Kingdom,44,{uk_marketing},"), encoding="utf-8")
    costs.load_prices(con, rate_card=card, effective_from=date(2026, 7, 1), service_fee_usd=service_fee)


def spring_campaign(con: duckdb.DuckDBPyConnection) -> None:
    """Eight messages of one marketing campaign, sent 2026-10-10 (Oct 2026 card and rules)."""
    add_campaign(con, "c1")
    sent = "2026-10-10 10:00:00+00"
    for mid, country, state in [
        ("m1", "GB", "sent"), ("m2", "GB", "sent"), ("m3", "DE", "sent"), ("m4", "DO", "sent"),
        ("m5", "US", "sent"), ("m6", "US", "sent"), ("m7", "US", "failed"), ("m8", "DO", "sent"),
    ]:
        add_message(con, "c1", mid, country, state, sent if state == "sent" else None,
                    error_code="131026" if state == "failed" else None)
    # m1: receipts stored out of order (read first); pricing rides on the 'sent' one.
    add_event(con, "m1", "read", "2026-10-10 10:05:00+00")
    add_event(con, "m1", "sent", "2026-10-10 10:00:01+00", "marketing", "regular")
    add_event(con, "m1", "delivered", "2026-10-10 10:01:00+00")
    # m2: read with no 'delivered' webhook at all (read implies delivered).
    add_event(con, "m2", "read", "2026-10-10 10:10:00+00", "marketing", "regular")
    add_event(con, "m2", "sent", "2026-10-10 10:00:01+00")
    # m3: sent as marketing, Meta re-categorised and billed it as utility.
    add_event(con, "m3", "delivered", "2026-10-10 10:02:00+00", "utility", "regular")
    # m4: utility inside a customer-service window: charged from 2026-10-01 (it was free before).
    add_event(con, "m4", "delivered", "2026-10-10 10:02:00+00", "utility", "free_customer_service")
    # m5: accepted, then failed (the failure arrives before the 'sent' receipt).
    add_event(con, "m5", "failed", "2026-10-10 10:03:00+00", error_code="131049")
    add_event(con, "m5", "sent", "2026-10-10 10:00:01+00", "marketing", "regular")
    # m6: accepted, never receipted. m7: refused at send (state 'failed'), no receipts.
    add_event(con, "m8", "delivered", "2026-10-10 10:04:00+00", "marketing", "regular")


def report_rows(con: duckdb.DuckDBPyConnection, campaign_id: str) -> dict[tuple[str, str], dict]:
    df = costs.cost_report(con, campaign_id)
    return {(r["country"], r["category"]): r for r in df.iter_rows(named=True)}


def test_markets_cover_every_libphonenumber_region(con: duckdb.DuckDBPyConnection) -> None:
    mapped = dict(con.execute("SELECT region, market FROM markets WHERE channel = 'whatsapp'").fetchall())
    assert set(phonenumbers.SUPPORTED_REGIONS) - mapped.keys() == set()
    card = {row["market"] for row in costs.read_rate_card()}
    assert set(mapped.values()) <= card
    assert (mapped["GB"], mapped["DE"], mapped["US"], mapped["CA"], mapped["BS"]) == (
        "United Kingdom", "Germany", "North America", "North America", "North America")
    # +1 area codes 809/829/849, 658/876, 787/939 are priced as Rest of Latin America.
    assert mapped["DO"] == mapped["JM"] == mapped["PR"] == "Rest of Latin America"
    assert mapped["AT"] == "Rest of Western Europe"
    assert mapped["GR"] == "Rest of Central & Eastern Europe"  # Meta's table, not Western Europe
    assert (mapped["QA"], mapped["KP"], mapped["ZA"]) == ("Rest of Middle East", "Other", "Rest of Africa")


def test_markets_csv_is_what_the_script_generates() -> None:
    spec = importlib.util.spec_from_file_location("make_markets", ROOT / "scripts" / "make_markets.py")
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    expected = script.build(script.card_markets(costs.RATE_CARD))
    with costs.MARKETS.open(newline="", encoding="utf-8") as f:
        committed = [(r["region"], r["market"], r["source"], r["own_market"]) for r in csv.DictReader(f)]
    assert committed == expected


def test_load_prices_is_idempotent(con: duckdb.DuckDBPyConnection) -> None:
    before = con.execute("SELECT channel, count(*) FROM prices GROUP BY ALL ORDER BY ALL").fetchall()
    costs.load_prices(con)  # second load of the same data
    after = con.execute("SELECT channel, count(*) FROM prices GROUP BY ALL ORDER BY ALL").fetchall()
    # WhatsApp: 28 markets x 3 categories; the illustrative cards: 38 SMS rows, 33 Viber rows, 1 email row.
    assert before == after == [("email", 1), ("sms", 38), ("viber", 33), ("whatsapp", 84)]
    rows = dict(con.execute(
        "SELECT category, platform_fee_usd FROM prices WHERE market = 'United Kingdom'").fetchall())
    assert rows == {"marketing": D("0.0635"), "utility": D("0.022"), "authentication": D("0.022")}
    assert con.execute("SELECT count(*) FROM markets").fetchall() == [(len(phonenumbers.SUPPORTED_REGIONS) + 1,)]
    # The fee also stays in the older prices.service_fee_usd column, for readers that take it from there.
    assert con.execute("SELECT DISTINCT service_fee_usd FROM prices WHERE channel = 'whatsapp'").fetchall() == [
        (D("0.005"),)]


def test_load_prices_refuses_a_card_missing_a_mapped_market(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    card = tmp_path / "card.csv"
    card.write_text("market,calling_codes,marketing_usd,utility_usd,authentication_usd\nOther,,0.06,0.007,0.007\n")
    with pytest.raises(ValueError, match="United Kingdom"):
        costs.load_prices(con, rate_card=card, effective_from=date(2026, 7, 1))
    assert con.execute("SELECT count(*) FROM prices WHERE effective_from = '2026-07-01'").fetchall() == [(0,)]


def test_cost_report_numbers(con: duckdb.DuckDBPyConnection) -> None:
    spring_campaign(con)
    rows = report_rows(con, "c1")
    assert list(rows) == [("DE", "utility"), ("DO", "marketing"), ("DO", "utility"), ("GB", "marketing"),
                          ("US", "marketing")]
    expected = {
        # country, category: market, sent, delivered, read, failed, platform, service
        ("DE", "utility"): ("Germany", 1, 1, 0, 0, "0.055", "0.005"),  # billed utility, not marketing
        ("DO", "marketing"): ("Rest of Latin America", 1, 1, 0, 0, "0.074", "0.005"),
        ("DO", "utility"): ("Rest of Latin America", 1, 1, 0, 0, "0.0113", "0.005"),  # in-window, after 10-01
        ("GB", "marketing"): ("United Kingdom", 2, 2, 2, 0, "0.127", "0.010"),
        ("US", "marketing"): ("North America", 2, 0, 0, 2, "0", "0.010"),  # m5 failed, m6 silent, m7 refused
    }
    for key, (market, sent, delivered_, read, failed, platform, service) in expected.items():
        row = rows[key]
        assert (row["channel"], row["market"]) == ("whatsapp", market), key
        assert (row["sent"], row["delivered"], row["read"], row["failed"]) == (sent, delivered_, read, failed), key
        assert row["platform_fee_usd"] == D(platform), key
        assert row["service_fee_usd"] == D(service), key
        assert row["total_usd"] == D(platform) + D(service), key
        assert row["points_used"] == (D(platform) + D(service)) * 10_000, key
        assert row["unpriced"] == 0, key
    assert (rows[("GB", "marketing")]["delivery_rate"], rows[("GB", "marketing")]["read_rate"]) == (1.0, 1.0)
    assert rows[("DE", "utility")]["read_rate"] == 0.0
    assert (rows[("US", "marketing")]["delivery_rate"], rows[("US", "marketing")]["read_rate"]) == (0.0, None)
    assert rows[("US", "marketing")]["cost_per_delivered_usd"] is None
    assert rows[("GB", "marketing")]["cost_per_delivered_usd"] == D("0.068500")
    # Meta re-categorised m3: 0.055 billed instead of 0.1365 as marketing.
    assert (rows[("DE", "utility")]["recategorised"], rows[("DE", "utility")]["recategorisation_cost_usd"]) == (
        1, D("-0.0815"))

    totals = costs.summary_totals(costs.cost_report(con, "c1"))
    assert totals["sent"] == 7 and totals["delivered"] == 5 and totals["read"] == 2 and totals["failed"] == 2
    assert (totals["platform_fee_usd"], totals["service_fee_usd"], totals["total_usd"]) == (
        D("0.2673"), D("0.035"), D("0.3023"))
    assert (totals["delivery_rate"], totals["read_rate"]) == (5 / 7, 2 / 5)
    assert totals["cost_per_delivered_usd"] == D("0.060460")
    assert totals["points_used"] == D("3023.00")
    assert isinstance(totals["total_usd"], Decimal)


def test_failures_by_code_with_meaning(con: duckdb.DuckDBPyConnection) -> None:
    spring_campaign(con)
    failures = costs.campaign_costs(con, "c1").failures
    assert failures.select("country", "category", "error_code", "meaning", "failed").rows() == [
        ("US", "marketing", "131026", "Undeliverable: not on WhatsApp, terms not accepted, or an old app", 1),
        ("US", "marketing", "131049",
         "Not delivered to keep ecosystem engagement healthy (per-user marketing limit)", 1),
    ]


def test_cost_report_ignores_other_campaigns(con: duckdb.DuckDBPyConnection) -> None:
    spring_campaign(con)
    add_campaign(con, "other")
    delivered(con, "other", "x1", "GB", "2026-10-10")
    assert report_rows(con, "c1")[("GB", "marketing")]["sent"] == 2
    assert costs.cost_report(con, "missing").height == 0


def test_old_campaign_is_priced_by_the_card_of_its_day(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    july_card(con, tmp_path, service_fee="0.004")
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
    # The service fee is dated data of its own: 40 points from July, 50 from October (and the shipped 50
    # from 2025-07 for o4, whose platform fee has no card).
    assert row["service_fee_usd"] == D("0.004") + D("0.005") + D("0.005") + D("0.005")
    assert row["unpriced"] == 1


def test_whatsapp_rules_change_on_2026_10_01(con: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    july_card(con, tmp_path)
    add_campaign(con, "w", "utility")
    for day in ("2026-09-20", "2026-10-20"):
        # In-window utility (free until 30 Sep), service messages (free until 30 Sep, then the utility rate),
        # and a free-entry-point marketing message (free on both days).
        delivered(con, "w", f"u-{day}", "GB", day, "utility", "free_customer_service")
        delivered(con, "w", f"s-{day}", "GB", day, "service", "free_customer_service")
        delivered(con, "w", f"f-{day}", "GB", day, "marketing", "free_entry_point")
    groups = costs.campaign_costs(con, "w").groups
    by = {(r["price_day"].isoformat(), r["category"]): r for r in groups.iter_rows(named=True)}
    sep, oct_ = "2026-09-20", "2026-10-20"
    assert (by[(sep, "utility")]["rule"], by[(sep, "utility")]["platform_fee_usd"]) == ("wa-utility-in-csw", D(0))
    assert by[(sep, "utility")]["free_window_savings_usd"] == D("0.022")  # what it would have cost
    assert (by[(oct_, "utility")]["rule"], by[(oct_, "utility")]["platform_fee_usd"]) == (
        "wa-utility-in-csw-2026-10", D("0.022"))
    assert (by[(sep, "service")]["platform_fee_usd"], by[(oct_, "service")]["platform_fee_usd"]) == (D(0), D("0.022"))
    assert by[(oct_, "service")]["rate_category"] == "utility"
    for day in (sep, oct_):
        assert (by[(day, "marketing")]["rule"], by[(day, "marketing")]["platform_fee_usd"]) == (
            "wa-free-entry-point", D(0))
        assert by[(day, "marketing")]["free_window_savings_usd"] == D("0.06" if day == sep else "0.0635")
    rows = report_rows(con, "w")
    assert rows[("GB", "utility")]["free_window_messages"] == 1
    assert rows[("GB", "marketing")]["free_window_messages"] == 2


def test_volume_tiers_split_the_month_by_day_across_campaigns(con: duckdb.DuckDBPyConnection,
                                                             tmp_path: Path) -> None:
    ladder = tmp_path / "tiers-2026-10.csv"
    ladder.write_text("market,category,from_messages,to_messages,platform_fee_usd\n"
                      "Rest of Africa,utility,1,3,0.0040\nRest of Africa,utility,4,,0.0030\n")
    pricing.import_card(con, ladder, channel="whatsapp")
    add_campaign(con, "a", "utility")
    add_campaign(con, "b", "utility")
    # 2 Oct: a sends 2 (ranks 1-2); 3 Oct: a 2 + b 2 (ranks 3-6: one at 0.004, three at 0.003, shared pro rata);
    # 1 Nov: a new month starts at tier 1 again. KE is in Rest of Africa (list 0.004).
    for mid, cid, day in [("a1", "a", "2026-10-02"), ("a2", "a", "2026-10-02"), ("a3", "a", "2026-10-03"),
                          ("a4", "a", "2026-10-03"), ("b1", "b", "2026-10-03"), ("b2", "b", "2026-10-03"),
                          ("a5", "a", "2026-11-01")]:
        delivered(con, cid, mid, "KE", day, "utility")
    a, b = report_rows(con, "a")[("KE", "utility")], report_rows(con, "b")[("KE", "utility")]
    # Day 3 Oct: list 4 x 0.004 = 0.016, tiered 0.004 + 3 x 0.003 = 0.013: 0.003 off, a and b half each.
    assert (a["tier_discount_usd"], b["tier_discount_usd"]) == (D("0.0015"), D("0.0015"))
    assert a["platform_fee_usd"] == D("0.004") * 5 - D("0.0015")
    assert b["platform_fee_usd"] == D("0.008") - D("0.0015")


def test_estimate_prices_every_outbox_row_at_the_current_card(con: duckdb.DuckDBPyConnection) -> None:
    spring_campaign(con)
    est = costs.estimate_cost(con, "c1", on=date(2026, 10, 20))
    # All eight as marketing: GB 2 x 0.0635, DE 0.1365, DO 2 x 0.074, US 3 x 0.025; 8 x 0.005 service.
    assert (est.messages, est.unpriced) == (8, 0)
    assert (est.platform_fee_usd, est.service_fee_usd, est.total_usd) == (D("0.4865"), D("0.040"), D("0.5265"))
    by_country = {r["country"]: r for r in est.by_country.iter_rows(named=True)}
    assert (by_country["US"]["messages"], by_country["US"]["total_usd"]) == (3, D("0.090"))
    assert by_country["DO"]["market"] == "Rest of Latin America"
    recorded = costs.latest_estimate(con, "c1")
    assert recorded["total_usd"].sum() == D("0.5265") and recorded["priced_on"].unique().to_list() == [
        date(2026, 10, 20)]

    before = costs.estimate_cost(con, "c1", on=date(2026, 6, 1))  # rules in force, but no card yet
    assert (before.unpriced, before.platform_fee_usd, before.service_fee_usd) == (8, D(0), D("0.040"))


def test_estimate_uses_the_windows_known_at_the_time(con: duckdb.DuckDBPyConnection) -> None:
    add_campaign(con, "u", "utility")
    for mid in ("w1", "w2", "w3"):
        add_message(con, "u", mid, "GB", "queued", None, "utility")
    keys = dict(con.execute("SELECT message_id, recipient_key FROM outbox").fetchall())
    at = datetime.fromisoformat("2026-09-20 12:00:00+00:00")
    # w1 wrote 2 h ago (customer-service window); w2 came from a click-to-WhatsApp ad 30 h ago (entry point);
    # w3 wrote 30 h ago without a referral: no window.
    for i, (mid, wrote_at, raw) in enumerate([
        ("w1", "2026-09-20 10:00:00+00", "{}"),
        ("w2", "2026-09-19 06:00:00+00", '{"referral": {"source_type": "ad"}}'),
        ("w3", "2026-09-19 06:00:00+00", "{}"),
    ]):
        con.execute("INSERT INTO inbound VALUES (?, 'whatsapp', ?, 'hi', ?, ?)",
                    [f"in{i}", keys[mid].lstrip("+"), wrote_at, raw])
    est = costs.estimate_cost(con, "u", at=at, record=False)
    # On 20 Sep: w1 free (in-window utility), w2 free (entry point), w3 billable but no card was in force yet.
    assert (est.free_window_messages, est.unpriced) == (2, 1)
    later = costs.estimate_cost(con, "u", on=date(2026, 10, 20), at=at, record=False)
    # From 1 Oct in-window utility is charged: w1 and w3 at 0.022, w2 (entry point) free.
    assert (later.free_window_messages, later.platform_fee_usd, later.unpriced) == (1, D("0.044"), 0)


def test_other_channels(con: duckdb.DuckDBPyConnection) -> None:
    add_campaign(con, "v", channel="viber")
    add_message(con, "v", "v1", "UA", "sent", "2026-10-10 10:00:00+00", "marketing", channel="viber")
    add_message(con, "v", "v2", "BR", "sent", "2026-10-10 10:00:00+00", "utility", channel="viber")
    add_event(con, "v1", "delivered", "2026-10-10 10:01:00+00")
    add_event(con, "v2", "delivered", "2026-10-10 10:01:00+00")
    viber = report_rows(con, "v")
    # UA promotional 0.022; BR is not on the card: the Default transactional 0.020; 50 points each.
    assert (viber[("UA", "marketing")]["market"], viber[("UA", "marketing")]["platform_fee_usd"]) == ("UA", D("0.022"))
    assert (viber[("BR", "utility")]["market"], viber[("BR", "utility")]["platform_fee_usd"]) == (
        "Default", D("0.020"))
    assert viber[("BR", "utility")]["service_fee_usd"] == D("0.005")

    add_campaign(con, "s", channel="sms")
    long_text = "x" * 161  # GSM-7: 2 parts
    add_message(con, "s", "s1", "US", "sent", "2026-10-10 10:00:00+00", channel="sms", text=long_text)
    add_message(con, "s", "s2", "XK", "sent", "2026-10-10 10:00:00+00", channel="sms", text="Grüße 😀")  # UCS-2: 1
    add_message(con, "s", "s3", "US", "failed", None, channel="sms", text="short")  # refused: not billed
    # The channel's own count in the payload wins (Alibaba counts its [signature] too), then Twilio's Body.
    add_message(con, "s", "s4", "GB", "sent", "2026-10-10 10:00:00+00", channel="sms", text="hi")
    add_message(con, "s", "s5", "GB", "sent", "2026-10-10 10:00:00+00", channel="sms", text="hi")
    con.execute("""UPDATE outbox SET payload_json = CASE message_id WHEN 's4' THEN '{"segments": 3}'
                   ELSE '{"Body": "' || repeat('y', 200) || '"}' END WHERE message_id IN ('s4', 's5')""")
    est = costs.estimate_cost(con, "s", on=date(2026, 10, 10), record=False)
    assert (est.segments, est.platform_fee_usd) == (
        2 + 1 + 1 + 3 + 2, D("0.0083") * 3 + D("0.05") + D("0.04") * 5)
    sms = report_rows(con, "s")
    assert (sms[("US", "marketing")]["platform_fee_usd"], sms[("US", "marketing")]["service_fee_usd"]) == (
        D("0.0166"), D(0))
    assert sms[("GB", "marketing")]["platform_fee_usd"] == D("0.04") * 5
    assert sms[("XK", "marketing")]["platform_fee_usd"] == D("0.05")  # the Default rate

    add_campaign(con, "e", channel="email")
    add_message(con, "e", "e1", None, "sent", "2026-10-10 10:00:00+00", channel="email")
    assert report_rows(con, "e")[(None, "marketing")]["total_usd"] == D("0.0001")

    # A ChatApp campaign is billed as the channel it sends on: here WhatsApp, plus the ChatApp service fee.
    con.execute("""INSERT INTO campaigns VALUES ('ca', 'ChatApp', 'chatapp', 't', 'marketing', now(),
                   '{"provider": {"options": {"channel_type": "whatsapp"}}}')""")
    add_message(con, "ca", "ca1", "GB", "sent", "2026-10-10 10:00:00+00", channel="chatapp")
    add_event(con, "ca1", "delivered", "2026-10-10 10:01:00+00")
    chatapp = report_rows(con, "ca")[("GB", "marketing")]
    assert (chatapp["channel"], chatapp["market"], chatapp["total_usd"]) == ("whatsapp", "United Kingdom",
                                                                             D("0.0685"))

    add_campaign(con, "m", channel="messenger")
    add_message(con, "m", "m1", None, "sent", "2026-07-10 10:00:00+00", channel="messenger")
    add_message(con, "m", "m2", None, "sent", "2026-08-10 10:00:00+00", channel="messenger")
    messenger = costs.campaign_costs(con, "m").groups
    # No platform fee ever; the service fee starts on 2026-08-01.
    assert messenger.sort("price_day").select("platform_fee_usd", "service_fee_usd", "unpriced").rows() == [
        (D(0), D(0), 0), (D(0), D("0.005"), 0)]


def test_category_without_a_price_is_reported_unpriced_not_free(con: duckdb.DuckDBPyConnection) -> None:
    add_campaign(con, "otp", "authentication")
    add_message(con, "otp", "a1", "IN", "sent", "2026-10-10 10:00:00+00", "authentication")
    # The card carries no authentication-international rate: the gap must show, not read as USD 0 silently.
    add_event(con, "a1", "delivered", "2026-10-10 10:01:00+00", "authentication-international", "regular")
    row = report_rows(con, "otp")[("IN", "authentication_international")]
    assert (row["market"], row["delivered"], row["unpriced"]) == ("India", 1, 1)
    assert row["platform_fee_usd"] == D(0)


def test_billing_tables_follow_new_receipts_and_outbox_changes(con: duckdb.DuckDBPyConnection) -> None:
    spring_campaign(con)
    assert report_rows(con, "c1")[("US", "marketing")]["delivered"] == 0
    add_event(con, "m6", "delivered", "2026-10-10 11:00:00+00", "marketing", "regular")  # a late receipt
    assert report_rows(con, "c1")[("US", "marketing")]["delivered"] == 1
    # A resend of the refused m7 (the ledger stamps updated_at) shows without any receipt.
    con.execute("UPDATE outbox SET state = 'sent', error_code = NULL, sent_at = TIMESTAMPTZ '2026-10-10 12:00:00+00', "
                "updated_at = now() WHERE message_id = 'm7'")
    us = report_rows(con, "c1")[("US", "marketing")]
    assert (us["sent"], us["failed"]) == (3, 1)
    # Receipts removed behind the watermark (never done, but possible): the fold is rebuilt, not trusted.
    con.execute("DELETE FROM events WHERE message_id = 'm6'")
    assert report_rows(con, "c1")[("US", "marketing")]["delivered"] == 0


def test_period_bill_across_campaigns(con: duckdb.DuckDBPyConnection) -> None:
    add_campaign(con, "a")
    add_campaign(con, "b")
    delivered(con, "a", "a1", "GB", "2026-11-02")
    delivered(con, "a", "a2", "GB", "2026-11-30")
    delivered(con, "b", "b1", "DE", "2026-11-02")
    delivered(con, "b", "b2", "DE", "2026-12-01")  # next month
    month = costs.period_costs(con, date(2026, 11, 1), date(2026, 11, 30)).rows
    assert month.select("campaign_id", "country", "delivered", "total_usd").rows() == [
        ("a", "GB", 2, D("0.137")), ("b", "DE", 1, D("0.1415"))]
    day = costs.period_costs(con, date(2026, 11, 2), date(2026, 11, 2)).rows
    assert day.select("campaign_id", "delivered").rows() == [("a", 1), ("b", 1)]
