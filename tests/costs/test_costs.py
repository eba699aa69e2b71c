"""The estimate and the actual cost, against hand-computed figures: dated WhatsApp rules and cards, windows,
re-categorisation, volume tiers, other channels, failures (the billing tables and period bills:
test_billing_tables.py)."""

from __future__ import annotations

import csv
import importlib.util
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import phonenumbers
import pytest
from sqlalchemy.engine import make_url

from pipeline.cli import main
from pipeline.costs import costing as costs
from pipeline.costs import pricing
from pipeline.store import Store
from tests.costs import rows as store_rows
from tests.costs.costed import add_campaign, add_event, add_message, delivered, july_card, report_rows, spring_campaign

ROOT = Path(__file__).resolve().parents[2]
D = Decimal


@pytest.fixture
def db(db: Store) -> Store:
    costs.load_prices(db)
    return db


def test_markets_cover_every_libphonenumber_region(db: Store) -> None:
    mapped = dict(db.rows("SELECT region, market FROM markets WHERE channel = 'whatsapp'"))
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


def test_load_prices_is_idempotent(db: Store) -> None:
    before = [tuple(r) for r in db.rows("SELECT channel, count(*) FROM prices GROUP BY channel ORDER BY channel")]
    costs.load_prices(db)  # second load of the same data
    after = [tuple(r) for r in db.rows("SELECT channel, count(*) FROM prices GROUP BY channel ORDER BY channel")]
    # WhatsApp: 28 markets x 3 categories; the illustrative cards: 38 SMS rows, 33 Viber rows, 1 email row.
    assert before == after == [("email", 1), ("sms", 38), ("viber", 33), ("whatsapp", 84)]
    uk = {c: store_rows.money(fee) for c, fee in db.rows(
        "SELECT category, platform_fee_usd FROM prices WHERE market = 'United Kingdom'")}
    assert uk == {"marketing": D("0.0635"), "utility": D("0.022"), "authentication": D("0.022")}
    assert db.scalar("SELECT count(*) FROM markets") == len(phonenumbers.SUPPORTED_REGIONS) + 1
    # The fee also stays in the older prices.service_fee_usd column, for readers that take it from there.
    assert {store_rows.money(fee) for (fee,) in db.rows("SELECT service_fee_usd FROM prices WHERE channel = 'whatsapp'")
            } == {D("0.005")}


def test_load_prices_refuses_a_card_missing_a_mapped_market(db: Store, tmp_path: Path) -> None:
    card = tmp_path / "card.csv"
    card.write_text("market,calling_codes,marketing_usd,utility_usd,authentication_usd\nOther,,0.06,0.007,0.007\n")
    with pytest.raises(ValueError, match="United Kingdom"):
        costs.load_prices(db, rate_card=card, effective_from=date(2026, 7, 1))
    assert db.scalar("SELECT count(*) FROM prices WHERE effective_from = :d", d=date(2026, 7, 1)) == 0


def test_cost_report_numbers(db: Store) -> None:
    spring_campaign(db)
    rows = report_rows(db, "c1")
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

    totals = costs.summary_totals(costs.cost_report(db, "c1"))
    assert totals["sent"] == 7 and totals["delivered"] == 5 and totals["read"] == 2 and totals["failed"] == 2
    assert (totals["platform_fee_usd"], totals["service_fee_usd"], totals["total_usd"]) == (
        D("0.2673"), D("0.035"), D("0.3023"))
    assert (totals["delivery_rate"], totals["read_rate"]) == (5 / 7, 2 / 5)
    assert totals["cost_per_delivered_usd"] == D("0.060460")
    assert totals["points_used"] == D("3023.00")
    assert isinstance(totals["total_usd"], Decimal)


def test_failures_by_code_with_meaning(db: Store) -> None:
    spring_campaign(db)
    failures = costs.campaign_costs(db, "c1").failures
    assert failures.select("country", "category", "error_code", "meaning", "failed").rows() == [
        ("US", "marketing", "131026", "Undeliverable: not on WhatsApp, terms not accepted, or an old app", 1),
        ("US", "marketing", "131049",
         "Not delivered to keep ecosystem engagement healthy (per-user marketing limit)", 1),
    ]


def test_cost_report_ignores_other_campaigns(db: Store) -> None:
    spring_campaign(db)
    add_campaign(db, "other")
    delivered(db, "other", "x1", "GB", "2026-10-10")
    assert report_rows(db, "c1")[("GB", "marketing")]["sent"] == 2
    assert costs.cost_report(db, "missing").height == 0


def test_old_campaign_is_priced_by_the_card_of_its_day(db: Store, tmp_path: Path) -> None:
    july_card(db, tmp_path, service_fee="0.004")
    add_campaign(db, "old")
    add_message(db, "old", "o1", "GB", "sent", "2026-08-15 12:00:00+00")  # July card
    add_message(db, "old", "o2", "GB", "sent", "2026-10-02 12:00:00+00")  # October card
    # 22:30 in New York on 30 Sep is 02:30 UTC on 1 Oct: the October card, whatever the session zone.
    add_message(db, "old", "o3", "GB", "sent", "2026-09-30 22:30:00-04:00")
    add_message(db, "old", "o4", "GB", "sent", "2026-06-30 12:00:00+00")  # before any card: unpriced
    for mid in ("o1", "o2", "o3", "o4"):
        add_event(db, mid, "delivered", "2026-10-02 12:01:00+00", "marketing", "regular")
    if db.dialect == "postgresql":  # sessions in New York's time zone: days are still UTC days
        db.execute(f'ALTER DATABASE "{make_url(db.url).database}" SET TimeZone = \'America/New_York\'')
        db.engine.dispose()
        assert db.scalar("SHOW TimeZone") == "America/New_York"
    row = report_rows(db, "old")[("GB", "marketing")]
    assert row["platform_fee_usd"] == D("0.0600") + D("0.0635") + D("0.0635")
    # The service fee is dated data of its own: 40 points from July, 50 from October (and the shipped 50
    # from 2025-07 for o4, whose platform fee has no card).
    assert row["service_fee_usd"] == D("0.004") + D("0.005") + D("0.005") + D("0.005")
    assert row["unpriced"] == 1


def test_whatsapp_rules_change_on_2026_10_01(db: Store, tmp_path: Path) -> None:
    july_card(db, tmp_path)
    add_campaign(db, "w", "utility")
    for day in ("2026-09-20", "2026-10-20"):
        # In-window utility (free until 30 Sep), service messages (free until 30 Sep, then the utility rate),
        # and a free-entry-point marketing message (free on both days).
        delivered(db, "w", f"u-{day}", "GB", day, "utility", "free_customer_service")
        delivered(db, "w", f"s-{day}", "GB", day, "service", "free_customer_service")
        delivered(db, "w", f"f-{day}", "GB", day, "marketing", "free_entry_point")
    groups = costs.campaign_costs(db, "w").groups
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
    rows = report_rows(db, "w")
    assert rows[("GB", "utility")]["free_window_messages"] == 1
    assert rows[("GB", "marketing")]["free_window_messages"] == 2


def _africa_utility_ladder(db: Store, tmp_path: Path) -> None:
    """Rest of Africa utility (KE; list 0.004): ranks 1-3 of a month at 0.004, from the 4th 0.003."""
    ladder = tmp_path / "tiers-2026-10.csv"
    ladder.write_text("market,category,from_messages,to_messages,platform_fee_usd\n"
                      "Rest of Africa,utility,1,3,0.0040\nRest of Africa,utility,4,,0.0030\n")
    pricing.import_card(db, ladder, channel="whatsapp")


def test_volume_tiers_split_the_month_by_day_across_campaigns(db: Store,
                                                             tmp_path: Path) -> None:
    _africa_utility_ladder(db, tmp_path)
    add_campaign(db, "a", "utility")
    add_campaign(db, "b", "utility")
    # 2 Oct: a sends 2 (ranks 1-2); 3 Oct: a 2 + b 2 (ranks 3-6: one at 0.004, three at 0.003, shared pro rata);
    # 1 Nov: a new month starts at tier 1 again. KE is in Rest of Africa (list 0.004).
    for mid, cid, day in [("a1", "a", "2026-10-02"), ("a2", "a", "2026-10-02"), ("a3", "a", "2026-10-03"),
                          ("a4", "a", "2026-10-03"), ("b1", "b", "2026-10-03"), ("b2", "b", "2026-10-03"),
                          ("a5", "a", "2026-11-01")]:
        delivered(db, cid, mid, "KE", day, "utility")
    a, b = report_rows(db, "a")[("KE", "utility")], report_rows(db, "b")[("KE", "utility")]
    # Day 3 Oct: list 4 x 0.004 = 0.016, tiered 0.004 + 3 x 0.003 = 0.013: 0.003 off, a and b half each.
    assert (a["tier_discount_usd"], b["tier_discount_usd"]) == (D("0.0015"), D("0.0015"))
    assert a["platform_fee_usd"] == D("0.004") * 5 - D("0.0015")
    assert b["platform_fee_usd"] == D("0.008") - D("0.0015")


def test_a_one_tier_ladder_is_a_flat_rate_from_its_date(db: Store, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    add_campaign(db, "u", "utility")
    # United Kingdom utility lists at 0.022 (Oct 2026 card); the ladder below starts on 1 Nov.
    for mid, day in [("o1", "2026-10-20"), ("n1", "2026-11-05"), ("n2", "2026-11-05"), ("n3", "2026-11-06")]:
        delivered(db, "u", mid, "GB", day, "utility")
    listed = report_rows(db, "u")[("GB", "utility")]
    assert (listed["platform_fee_usd"], listed["tier_discount_usd"]) == (D("0.088"), D(0))

    def import_ladder(rate: str) -> None:
        ladder = tmp_path / "tiers-2026-11.csv"
        ladder.write_text(f"market,category,from_messages,to_messages,platform_fee_usd\n"
                          f"United Kingdom,utility,1,,{rate}\n")
        assert main(["prices", "import", str(ladder), "--channel", "whatsapp", "--db", db.url]) == 0
        capsys.readouterr()

    import_ladder("0.0220")  # the list rate: nothing changes
    assert report_rows(db, "u")[("GB", "utility")] == listed
    import_ladder("0.0180")  # replaces it: October's message at list, November's three at 0.018
    row = report_rows(db, "u")[("GB", "utility")]
    assert (row["platform_fee_usd"], row["tier_discount_usd"]) == (D("0.022") + 3 * D("0.018"), D("0.012"))
    assert row["total_usd"] == row["platform_fee_usd"] + 4 * D("0.005")


def test_estimate_prices_every_outbox_row_at_the_current_card(db: Store) -> None:
    spring_campaign(db)
    est = costs.estimate_cost(db, "c1", on=date(2026, 10, 20))
    # All eight as marketing: GB 2 x 0.0635, DE 0.1365, DO 2 x 0.074, US 3 x 0.025; 8 x 0.005 service.
    assert (est.messages, est.unpriced) == (8, 0)
    assert (est.platform_fee_usd, est.service_fee_usd, est.total_usd) == (D("0.4865"), D("0.040"), D("0.5265"))
    by_country = {r["country"]: r for r in est.by_country.iter_rows(named=True)}
    assert (by_country["US"]["messages"], by_country["US"]["total_usd"]) == (3, D("0.090"))
    assert by_country["DO"]["market"] == "Rest of Latin America"
    recorded = costs.latest_estimate(db, "c1")
    assert recorded["total_usd"].sum() == D("0.5265") and recorded["priced_on"].unique().to_list() == [
        date(2026, 10, 20)]

    before = costs.estimate_cost(db, "c1", on=date(2026, 6, 1))  # rules in force, but no card yet
    assert (before.unpriced, before.platform_fee_usd, before.service_fee_usd) == (8, D(0), D("0.040"))


def test_the_estimate_prices_at_the_tier_the_month_has_reached(db: Store, tmp_path: Path) -> None:
    _africa_utility_ladder(db, tmp_path)
    add_campaign(db, "a", "utility")
    add_campaign(db, "e", "utility")
    delivered(db, "a", "a1", "KE", "2026-10-02", "utility")
    delivered(db, "a", "a2", "KE", "2026-10-02", "utility")
    delivered(db, "a", "a3", "KE", "2026-10-09", "utility")  # after the estimate's day: not yet in the month's count
    for mid in ("e1", "e2", "e3"):
        add_message(db, "e", mid, "KE", "queued", None, "utility")
    # Ranks 3-5 of October: one at 0.004, two at 0.003 (list 3 x 0.004 = 0.012).
    october = costs.estimate_cost(db, "e", on=date(2026, 10, 5))
    assert october.platform_fee_usd == D("0.010")
    # November starts at the first tier again: ranks 1-3, all at 0.004.
    assert costs.estimate_cost(db, "e", on=date(2026, 11, 1)).platform_fee_usd == D("0.012")


def test_estimate_uses_the_windows_known_at_the_time(db: Store) -> None:
    add_campaign(db, "u", "utility")
    for mid in ("w1", "w2", "w3"):
        add_message(db, "u", mid, "GB", "queued", None, "utility")
    keys = dict(db.rows("SELECT message_id, recipient_key FROM outbox"))
    at = datetime.fromisoformat("2026-09-20 12:00:00+00:00")
    # w1 wrote 2 h ago (customer-service window); w2 came from a click-to-WhatsApp ad 30 h ago (entry point);
    # w3 wrote 30 h ago without a referral: no window.
    for i, (mid, wrote_at, raw) in enumerate([
        ("w1", "2026-09-20 10:00:00+00", "{}"),
        ("w2", "2026-09-19 06:00:00+00", '{"referral": {"source_type": "ad"}}'),
        ("w3", "2026-09-19 06:00:00+00", "{}"),
    ]):
        db.execute("INSERT INTO inbound (event_id, provider, sender, text, occurred_at, raw_json) "
                   "VALUES (:e, 'whatsapp', :sender, 'hi', :at, :raw)",
                   e=f"in{i}", sender=keys[mid].lstrip("+"), at=store_rows.ts(wrote_at), raw=raw)
    est = costs.estimate_cost(db, "u", at=at, record=False)
    # On 20 Sep: w1 free (in-window utility), w2 free (entry point), w3 billable but no card was in force yet.
    assert (est.free_window_messages, est.unpriced) == (2, 1)
    later = costs.estimate_cost(db, "u", on=date(2026, 10, 20), at=at, record=False)
    # From 1 Oct in-window utility is charged: w1 and w3 at 0.022, w2 (entry point) free.
    assert (later.free_window_messages, later.platform_fee_usd, later.unpriced) == (1, D("0.044"), 0)


def test_other_channels(db: Store) -> None:
    add_campaign(db, "v", channel="viber")
    add_message(db, "v", "v1", "UA", "sent", "2026-10-10 10:00:00+00", "marketing", channel="viber")
    add_message(db, "v", "v2", "BR", "sent", "2026-10-10 10:00:00+00", "utility", channel="viber")
    add_event(db, "v1", "delivered", "2026-10-10 10:01:00+00")
    add_event(db, "v2", "delivered", "2026-10-10 10:01:00+00")
    viber = report_rows(db, "v")
    # UA promotional 0.022; BR is not on the card: the Default transactional 0.020; 50 points each.
    assert (viber[("UA", "marketing")]["market"], viber[("UA", "marketing")]["platform_fee_usd"]) == ("UA", D("0.022"))
    assert (viber[("BR", "utility")]["market"], viber[("BR", "utility")]["platform_fee_usd"]) == (
        "Default", D("0.020"))
    assert viber[("BR", "utility")]["service_fee_usd"] == D("0.005")

    add_campaign(db, "s", channel="sms")
    long_text = "x" * 161  # GSM-7: 2 parts
    add_message(db, "s", "s1", "US", "sent", "2026-10-10 10:00:00+00", channel="sms", text=long_text)
    add_message(db, "s", "s2", "XK", "sent", "2026-10-10 10:00:00+00", channel="sms", text="Grüße 😀")  # UCS-2: 1
    add_message(db, "s", "s3", "US", "failed", None, channel="sms", text="short")  # refused: not billed
    # The channel's own count in the payload wins (Alibaba counts its [signature] too), then Twilio's Body.
    add_message(db, "s", "s4", "GB", "sent", "2026-10-10 10:00:00+00", channel="sms", text="hi")
    add_message(db, "s", "s5", "GB", "sent", "2026-10-10 10:00:00+00", channel="sms", text="hi")
    db.execute("UPDATE outbox SET payload_json = :p WHERE message_id = 's4'", p='{"segments": 3}')
    db.execute("UPDATE outbox SET payload_json = :p WHERE message_id = 's5'", p='{"Body": "' + "y" * 200 + '"}')
    est = costs.estimate_cost(db, "s", on=date(2026, 10, 10), record=False)
    assert (est.segments, est.platform_fee_usd) == (
        2 + 1 + 1 + 3 + 2, D("0.0083") * 3 + D("0.05") + D("0.04") * 5)
    sms = report_rows(db, "s")
    assert (sms[("US", "marketing")]["platform_fee_usd"], sms[("US", "marketing")]["service_fee_usd"]) == (
        D("0.0166"), D(0))
    assert sms[("GB", "marketing")]["platform_fee_usd"] == D("0.04") * 5
    assert sms[("XK", "marketing")]["platform_fee_usd"] == D("0.05")  # the Default rate

    add_campaign(db, "e", channel="email")
    add_message(db, "e", "e1", None, "sent", "2026-10-10 10:00:00+00", channel="email")
    assert report_rows(db, "e")[(None, "marketing")]["total_usd"] == D("0.0001")

    # A ChatApp campaign is billed as the channel it sends on: here WhatsApp, plus the ChatApp service fee.
    add_campaign(db, "ca", channel="chatapp", spec_json='{"provider": {"options": {"channel_type": "whatsapp"}}}')
    add_message(db, "ca", "ca1", "GB", "sent", "2026-10-10 10:00:00+00", channel="chatapp")
    add_event(db, "ca1", "delivered", "2026-10-10 10:01:00+00")
    chatapp = report_rows(db, "ca")[("GB", "marketing")]
    assert (chatapp["channel"], chatapp["market"], chatapp["total_usd"]) == ("whatsapp", "United Kingdom",
                                                                             D("0.0685"))

    add_campaign(db, "m", channel="messenger")
    add_message(db, "m", "m1", None, "sent", "2026-07-10 10:00:00+00", channel="messenger")
    add_message(db, "m", "m2", None, "sent", "2026-08-10 10:00:00+00", channel="messenger")
    messenger = costs.campaign_costs(db, "m").groups
    # No platform fee ever; the service fee starts on 2026-08-01.
    assert messenger.sort("price_day").select("platform_fee_usd", "service_fee_usd", "unpriced").rows() == [
        (D(0), D(0), 0), (D(0), D("0.005"), 0)]


def test_category_without_a_price_is_reported_unpriced_not_free(db: Store) -> None:
    add_campaign(db, "otp", "authentication")
    add_message(db, "otp", "a1", "IN", "sent", "2026-10-10 10:00:00+00", "authentication")
    # The card carries no authentication-international rate: the gap must show, not read as USD 0 silently.
    add_event(db, "a1", "delivered", "2026-10-10 10:01:00+00", "authentication-international", "regular")
    row = report_rows(db, "otp")[("IN", "authentication_international")]
    assert (row["market"], row["delivered"], row["unpriced"]) == ("India", 1, 1)
    assert row["platform_fee_usd"] == D(0)
