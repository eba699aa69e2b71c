"""What messages cost: the estimate before sending and the actual cost from receipts, by dated prices.

Prices, rules, fees and tiers are data (pipeline/costs/pricing.py); the SQL is in reports/*.sql. Both the estimate
and the report price groups of messages through the same reports/price_groups.sql.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl

from pipeline.costs import pricing
from pipeline.costs.billing import refresh_billing
from pipeline.render.segments import with_segments

DATA = pricing.DATA
RATE_CARD = pricing.WHATSAPP_CARD
MARKETS = pricing.WHATSAPP_MARKETS
SQL_DIR = Path(__file__).resolve().parents[2] / "reports"
REPORT_SQL = SQL_DIR / "cost_report.sql"

SERVICE_FEE_USD = Decimal("0.005")  # ChatApp's flat 50 points x USD 0.0001 (docs/providers.md 3.6)
MONEY = ("platform_fee_usd", "service_fee_usd", "total_usd", "free_window_savings_usd", "recategorisation_cost_usd",
         "tier_discount_usd", "cost_per_delivered_usd")
COUNTS = ("sent", "delivered", "read", "failed", "unpriced", "free_window_messages", "recategorised")
ZERO = Decimal("0.000000")
_SUMMED_MONEY = MONEY[:-1]


def read_rate_card(path: Path = RATE_CARD) -> list[dict[str, str]]:
    """The card's rows (market, calling_codes, <category>_usd); '#' lines are comments."""
    return pricing.read_csv(path)


def read_markets(path: Path = MARKETS) -> list[dict[str, str]]:
    return pricing.read_csv(path)


def load_prices(
    con: duckdb.DuckDBPyConnection,
    *,
    rate_card: Path = RATE_CARD,
    markets: Path = MARKETS,
    effective_from: date = date(2026, 10, 1),
    service_fee_usd: Decimal | float | str = SERVICE_FEE_USD,
    channel: str = "whatsapp",
) -> int:
    """Loads the shipped price data (rules, fees, every card of rate_cards.csv) plus the given WhatsApp-shaped
    card from `effective_from`, with `service_fee_usd` per message from that date; returns the card's rows.

    Idempotent; cards of other dates stay, so older campaigns keep being priced by the rules of their day.
    """
    pricing.load_reference_data(con)
    if markets != MARKETS:
        pricing.load_whatsapp_markets(con, markets)
    card = pricing.read_card(rate_card, channel=channel, effective_from=effective_from, kind="whatsapp_card")
    shipped = (rate_card, effective_from, channel) == (RATE_CARD, date(2026, 10, 1), "whatsapp")
    n = card.rows.height if shipped else pricing.store_card(con, card, replace_imported=False)
    # The fee given here is dated data like any other: it applies from the card's date on (until a later one).
    pricing.set_service_fee(con, channel, service_fee_usd, effective_from, f"load_prices({rate_card.name})")
    return n


@dataclass(frozen=True)
class Estimate:
    """The forecast of a campaign: every outbox message delivered and billed at its current category."""

    campaign_id: str
    priced_on: date
    messages: int
    platform_fee_usd: Decimal
    service_fee_usd: Decimal
    total_usd: Decimal
    unpriced: int  # messages with no rule or price: their cost is unknown
    by_country: pl.DataFrame  # channel, country, market, category, messages, segments, fees, unpriced
    segments: int = 0  # SMS parts (1 per message on other channels)
    free_window_messages: int = 0


@dataclass(frozen=True)
class Costs:
    """The actual cost of some messages: report rows, failures by code, and the priced groups behind them."""

    rows: pl.DataFrame
    failures: pl.DataFrame
    groups: pl.DataFrame


def estimate_cost(
    con: duckdb.DuckDBPyConnection, campaign_id: str, *, on: date | None = None, at: datetime | None = None,
    record: bool = True,
) -> Estimate:
    """Prices every outbox row of the campaign (any state) by the rules and card in force `on` (default today,
    UTC), with the windows known at `at` and SMS parts counted from the rendered text.

    An upper bound by design: every message counted as delivered, at list rates (volume tiers only lower it).
    With `record`, the forecast is kept in `cost_estimates` for the report's estimate-vs-actual.
    """
    at = at or (datetime.combine(on, time(0), UTC) if on else datetime.now(UTC))
    on = on or at.astimezone(UTC).date()
    fill_segments(con, campaign_id)
    groups = f"({_sql('estimate_groups.sql')})"
    priced = con.sql(_sql("price_groups.sql").replace("{groups}", groups),
                     params={"campaign_id": campaign_id, "on": on, "at": at}).pl()
    keys = ["channel", "country", "market", "category"]
    by_country = (
        priced.group_by(keys)
        .agg(pl.col("messages").sum(), pl.col("sent_segments").sum().alias("segments"),
             pl.col("platform_fee_usd").sum(), pl.col("service_fee_usd").sum(), pl.col("free_window_messages").sum(),
             pl.col("unpriced").sum())
        .with_columns((pl.col("platform_fee_usd") + pl.col("service_fee_usd")).alias("total_usd"))
        .sort(keys, nulls_last=True)
    )
    estimate = Estimate(
        campaign_id=campaign_id, priced_on=on, messages=_int(by_country, "messages"),
        platform_fee_usd=_money_sum(by_country, "platform_fee_usd"),
        service_fee_usd=_money_sum(by_country, "service_fee_usd"), total_usd=_money_sum(by_country, "total_usd"),
        unpriced=_int(by_country, "unpriced"), by_country=by_country, segments=_int(by_country, "segments"),
        free_window_messages=_int(by_country, "free_window_messages"),
    )
    if record:
        _record_estimate(con, estimate, at)
    return estimate


def price_queued_messages(con: duckdb.DuckDBPyConnection, campaign_id: str) -> None:
    """Sets `est_cost_usd` of the campaign's queued messages, which dispatch's budget guard adds up: platform +
    service fee of the card in force today for the message's market and category (none where no price applies,
    which the ledger reads as 0)."""
    con.execute(_sql("queued_prices.sql"), [campaign_id])


def latest_estimate(con: duckdb.DuckDBPyConnection, campaign_id: str) -> pl.DataFrame:
    """The recorded forecast (channel, country, market, category, messages, ..., total_usd), empty if none."""
    return con.sql("SELECT * EXCLUDE (campaign_id) FROM cost_estimates WHERE campaign_id = ? ORDER BY ALL",
                   params=[campaign_id]).pl()


def campaign_costs(con: duckdb.DuckDBPyConnection, campaign_id: str) -> Costs:
    """The campaign's actual cost from receipts, per channel x country x category (see `cost_report`)."""
    refresh_billing(con, campaign_id)
    return _costs(con, "campaign_id = $campaign_id", {"campaign_id": campaign_id}, keys=[])


def period_costs(con: duckdb.DuckDBPyConnection, day_from: date, day_to: date) -> Costs:
    """The bill of a period across campaigns: messages priced on days day_from..day_to (inclusive, UTC)."""
    refresh_billing(con)
    return _costs(con, "price_day BETWEEN $day_from AND $day_to", {"day_from": day_from, "day_to": day_to},
                  keys=["campaign_id"])


def cost_report(con: duckdb.DuckDBPyConnection, campaign_id: str) -> pl.DataFrame:
    """One row per channel x country x category: channel, country, market, category, sent, delivered, read,
    failed, delivery_rate (delivered / sent), read_rate (read / delivered), platform_fee_usd, service_fee_usd,
    total_usd, cost_per_delivered_usd, free_window_messages, free_window_savings_usd, recategorised,
    recategorisation_cost_usd, tier_discount_usd, points_used, unpriced. Money is exact Decimal (6 places)."""
    return campaign_costs(con, campaign_id).rows


def summary_totals(df: pl.DataFrame) -> dict[str, int | float | Decimal | None]:
    """Totals over a cost report: counts and money summed, rates recomputed from the sums."""
    totals: dict[str, int | float | Decimal | None] = {c: _int(df, c) for c in COUNTS if c in df.columns}
    for column in _SUMMED_MONEY:
        if column in df.columns:
            totals[column] = _money_sum(df, column)
    sent, delivered, read = totals["sent"], totals["delivered"], totals["read"]
    totals["delivery_rate"] = delivered / sent if sent else None  # type: ignore[operator]
    totals["read_rate"] = read / delivered if delivered else None  # type: ignore[operator]
    total = totals.get("total_usd")
    totals["cost_per_delivered_usd"] = (
        (total / delivered).quantize(ZERO) if delivered and isinstance(total, Decimal) else None)  # type: ignore[operator]
    if "points_used" in df.columns:
        totals["points_used"] = sum((v for v in df["points_used"].to_list() if v is not None), Decimal("0.00"))
    return totals


def fill_segments(con: duckdb.DuckDBPyConnection, campaign_id: str) -> int:
    """Sets the parts of the campaign's SMS messages that have none yet: the count the channel stored in the
    payload (Alibaba's includes the signature), else counted from the Body (Twilio) or the rendered text.
    Returns how many were filled."""
    frame = con.sql(
        """SELECT o.message_id, TRY_CAST(json_extract_string(o.payload_json, '$.segments') AS BIGINT) AS given,
                  coalesce(json_extract_string(o.payload_json, '$.Body'), r.text) AS text
           FROM outbox AS o
           LEFT JOIN recipients AS r ON r.campaign_id = o.campaign_id AND r.recipient_key = o.recipient_key
           WHERE o.campaign_id = ? AND o.channel = 'sms' AND o.segments IS NULL""",
        params=[campaign_id],
    ).pl()
    if not frame.height:
        return 0
    counted = with_segments(frame).select("message_id", pl.coalesce("given", "segments").alias("n")).drop_nulls()
    con.register("_segments", counted)
    try:
        con.execute("UPDATE outbox SET segments = s.n FROM _segments AS s WHERE outbox.message_id = s.message_id")
    finally:
        con.unregister("_segments")
    return counted.height


def error_meanings() -> dict[tuple[str, str], str]:
    return {(r["channel"], r["code"]): r["meaning"] for r in pricing.read_csv(DATA / "error_codes.csv")}


def _costs(con: duckdb.DuckDBPyConnection, where: str, params: dict[str, object], *, keys: list[str]) -> Costs:
    groups = f"(SELECT * FROM billing_groups WHERE {where})"
    priced = con.sql(_sql("price_groups.sql").replace("{groups}", groups), params=params).pl()
    priced = _apply_tiers(con, priced)
    return Costs(rows=_report_rows(priced, keys), failures=_failures(priced, keys), groups=priced)


def _is_tiered() -> pl.Expr:
    return (pl.col("tiered") & pl.col("billable") & (pl.col("basis") == "delivered")
            & pl.col("unit_fee_usd").is_not_null() & (pl.col("delivered") > 0))


def _apply_tiers(con: duckdb.DuckDBPyConnection, priced: pl.DataFrame) -> pl.DataFrame:
    """Monthly volume tiers (docs/providers.md 2.3): lowers platform_fee_usd by tier_discount_usd.

    Volume is the portfolio's (every campaign in this database) per channel, market and card category in a
    calendar month (UTC), in price-day order: the messages of day d hold the ranks after those of the days
    before, and the discount of those ranks is shared pro rata by the day's messages. A ladder applies only
    while it is at least as new as the rate card in force (its rates are absolute, not percentages).
    """
    zero = pl.lit(ZERO).cast(pl.Decimal(18, 6))
    ladders: dict[tuple[str, str, str], list[tuple[date, int, int | None, Decimal]]] = {}
    for ch, market, cat, since, low, high, fee in con.execute(
            "SELECT channel, market, category, effective_from, from_messages, to_messages, platform_fee_usd "
            "FROM price_tiers ORDER BY ALL").fetchall():
        ladders.setdefault((ch, market, cat), []).append((since, low, high, fee))
    tiered = priced.filter(_is_tiered())
    wanted = set(tiered.select("channel", "market", "rate_category").unique().rows()) & {
        k for k, steps in ladders.items() if any(low > 1 for _, low, _, _ in steps)}
    if not wanted:
        return priced.with_columns(zero.alias("tier_discount_usd"))
    months = tiered.select("channel", pl.col("price_day").dt.truncate("1mo").alias("month")).unique()
    refresh_billing(con)  # the volume is every campaign's: all of them must be counted up to date
    con.register("_tier_months", months)
    try:
        portfolio = con.sql(_sql("price_groups.sql").replace("{groups}", """(
            SELECT channel, country, category, sent_category, pricing_type, price_day,
                0 AS sent, sum(delivered) AS delivered, 0 AS sent_segments
            FROM billing_groups
            WHERE (channel, date_trunc('month', price_day)) IN (SELECT channel, month FROM _tier_months)
            GROUP BY ALL)""")).pl()
    finally:
        con.unregister("_tier_months")
    days = (portfolio.filter(_is_tiered())
            .group_by("channel", "market", "rate_category", "price_day")
            .agg(pl.col("delivered").sum(), pl.col("unit_fee_usd").first(), pl.col("card_from").first())
            .sort("channel", "market", "rate_category", "price_day"))
    share: dict[tuple[str, str, str, date], tuple[Decimal, int]] = {}  # discount of the day, its messages
    ranked: dict[tuple[str, str, str, date], int] = {}  # messages before this month's day, per key
    for ch, market, cat, day, n, unit, card_from in days.iter_rows():
        if (ch, market, cat) not in wanted:
            continue
        month_key = (ch, market, cat, day.replace(day=1))
        before = ranked.get(month_key, 0)
        ranked[month_key] = before + n
        in_force = [s for s in ladders[(ch, market, cat)] if s[0] <= day]
        since = max((s[0] for s in in_force), default=None)
        if since is None or since < card_from:
            continue
        tier_cost = sum((fee * _overlap(before, before + n, low, high)
                         for s, low, high, fee in in_force if s == since), Decimal(0))
        share[(ch, market, cat, day)] = (unit * n - tier_cost, n)
    discounts = []
    for ch, market, cat, day, delivered, is_tiered in priced.select(
            "channel", "market", "rate_category", "price_day", "delivered", _is_tiered().alias("t")).iter_rows():
        found = share.get((ch, market, cat, day)) if is_tiered else None
        discounts.append((found[0] * delivered / found[1]).quantize(ZERO) if found else ZERO)
    return priced.with_columns(pl.Series("tier_discount_usd", discounts, dtype=pl.Decimal(18, 6))).with_columns(
        (pl.col("platform_fee_usd") - pl.col("tier_discount_usd")).cast(pl.Decimal(18, 6)).alias("platform_fee_usd"))


def _overlap(first_exclusive: int, last: int, low: int, high: int | None) -> int:
    """How many of the ranks first_exclusive+1 .. last fall in the tier low .. high."""
    top = last if high is None else min(last, high)
    return max(0, top - max(first_exclusive + 1, low) + 1)


def _report_rows(priced: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    by = [*keys, "channel", "country", "category"]
    money = ["platform_fee_usd", "service_fee_usd", "free_window_savings_usd", "recategorisation_cost_usd",
             "tier_discount_usd"]
    rows = (
        priced.group_by(by)
        .agg(pl.col("market").drop_nulls().first(), *(pl.col(c).sum() for c in (
            "sent", "delivered", "read", "failed", "free_window_messages", "recategorised", "unpriced")),
            *(pl.col(c).sum().cast(pl.Decimal(18, 6)) for c in money))
        .with_columns((pl.col("platform_fee_usd") + pl.col("service_fee_usd")).cast(pl.Decimal(18, 6))
                      .alias("total_usd"))
    )
    per_delivered = [
        (t / d).quantize(ZERO) if d else None for t, d in zip(rows["total_usd"], rows["delivered"], strict=True)]
    points = [(t / pricing.POINT_USD).quantize(Decimal("0.01")) for t in rows["total_usd"]]
    rows = rows.with_columns(
        (pl.col("delivered") / pl.col("sent")).fill_nan(None).alias("delivery_rate"),
        (pl.col("read") / pl.col("delivered")).fill_nan(None).alias("read_rate"),
        pl.Series("cost_per_delivered_usd", per_delivered, dtype=pl.Decimal(18, 6)),
        pl.Series("points_used", points, dtype=pl.Decimal(18, 2)),
    ).with_columns(
        # A rate over zero messages is unknown, not infinite.
        pl.when(pl.col("sent") > 0).then(pl.col("delivery_rate")).alias("delivery_rate"),
        pl.when(pl.col("delivered") > 0).then(pl.col("read_rate")).alias("read_rate"),
    )
    columns = [*by[:-1], "market", "category", "sent", "delivered", "read", "failed", "delivery_rate", "read_rate",
               "platform_fee_usd", "service_fee_usd", "total_usd", "cost_per_delivered_usd", "free_window_messages",
               "free_window_savings_usd", "recategorised", "recategorisation_cost_usd", "tier_discount_usd",
               "points_used", "unpriced"]
    return rows.select(columns).sort(by, nulls_last=True)


def _failures(priced: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    by = [*keys, "channel", "country", "category", "error_code"]
    failed = (priced.filter(pl.col("error_code").is_not_null() & (pl.col("failed") > 0))
              .group_by(by).agg(pl.col("error_title").drop_nulls().first(), pl.col("failed").sum()))
    meanings = error_meanings()
    meaning = [
        meanings.get((ch, code)) or meanings.get(("*", code)) or title or ""
        for ch, code, title in failed.select("channel", "error_code", "error_title").iter_rows()
    ]
    return (failed.with_columns(pl.Series("meaning", meaning, dtype=pl.String))
            .select(*by, "meaning", "failed").sort([*keys, "failed", *by[len(keys):]], descending=[
                *([False] * len(keys)), True, False, False, False, False], nulls_last=True))


def _record_estimate(con: duckdb.DuckDBPyConnection, estimate: Estimate, at: datetime) -> None:
    frame = estimate.by_country.with_columns(
        pl.lit(estimate.campaign_id).alias("campaign_id"), pl.lit(at).alias("estimated_at"),
        pl.lit(estimate.priced_on).alias("priced_on"))
    con.register("_estimate", frame)
    con.begin()
    try:
        con.execute("DELETE FROM cost_estimates WHERE campaign_id = ?", [estimate.campaign_id])
        con.execute("INSERT INTO cost_estimates BY NAME SELECT * EXCLUDE (free_window_messages) FROM _estimate")
        con.commit()
    except BaseException:
        con.rollback()
        raise
    finally:
        con.unregister("_estimate")


def _sql(name: str) -> str:
    return (SQL_DIR / name).read_text(encoding="utf-8")


def _int(df: pl.DataFrame, column: str) -> int:
    return int(df[column].sum()) if df.height else 0


def _money_sum(df: pl.DataFrame, column: str) -> Decimal:
    # Summed in Python over the exact Decimals, never through floats.
    return sum((v for v in df[column].to_list() if v is not None), ZERO)


