"""What messages cost: the estimate before sending and the actual cost from receipts, by dated prices.

Prices, rules, fees and tiers are data (pipeline/costs/pricing.py); the SQL is in reports/*.sql. Both the estimate
and the report price groups of messages through the same reports/price_groups.sql, which runs in an in-memory
DuckDB (pipeline.store.arrow.duck) over small inputs read from the store: the groups to price (hundreds to
thousands of rows of billing_groups, kept in step by pipeline/costs/billing.py, or the estimate's counts) and the
price data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import pyarrow as pa

from pipeline.costs import pricing
from pipeline.costs.billing import chatapp_channel, refresh_billing
from pipeline.render.segments import with_segments
from pipeline.store import Store, dialect, run
from pipeline.store.arrow import Reader, column_types, duck, read_arrow, read_table, reader
from pipeline.store.bulk import insert_frame

if TYPE_CHECKING:
    import duckdb  # the in-memory connections of pipeline.store.arrow.duck

DATA = pricing.DATA
RATE_CARD = pricing.WHATSAPP_CARD
MARKETS = pricing.WHATSAPP_MARKETS
SQL_DIR = Path(__file__).resolve().parents[2] / "reports"
REPORT_SQL = SQL_DIR / "cost_report.sql"
PRICE_TABLES = ("pricing_rules", "prices", "markets", "service_fees")  # what reports/price_groups.sql reads
_KEYS_PER_READ = 500  # recipient keys per IN list

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
    db: Store,
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
    pricing.load_reference_data(db)
    if markets != MARKETS:
        pricing.load_whatsapp_markets(db, markets)
    card = pricing.read_card(rate_card, channel=channel, effective_from=effective_from, kind="whatsapp_card")
    shipped = (rate_card, effective_from, channel) == (RATE_CARD, date(2026, 10, 1), "whatsapp")
    n = card.rows.height if shipped else pricing.store_card(db, card, replace_imported=False)
    # The fee given here is dated data like any other: it applies from the card's date on (until a later one).
    pricing.set_service_fee(db, channel, service_fee_usd, effective_from, f"load_prices({rate_card.name})")
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
    db: Store, campaign_id: str, *, on: date | None = None, at: datetime | None = None, record: bool = True,
) -> Estimate:
    """Prices every outbox row of the campaign (any state but `withheld`, never sent) by the rules and card in force
    `on` (default today, UTC), with the windows known at `at` and SMS parts counted from the rendered text.

    An upper bound by design: every message counted as delivered. Volume tiers in force apply, the campaign's
    messages ranked after the portfolio's messages of the month so far (`_apply_tiers_after_month`); the bill ranks
    them among the month's by their day, so it is lower when other messages of the month come after them.
    With `record`, the forecast is kept in `cost_estimates` for the report's estimate-vs-actual.
    """
    at = at or (datetime.combine(on, time(0), UTC) if on else datetime.now(UTC))
    on = on or at.astimezone(UTC).date()
    fill_segments(db, campaign_id)
    with reader(db) as read:
        inputs = {**_estimate_inputs(read, campaign_id, at), **_price_data(read)}
        tiers = read.table("price_tiers")
    with duck(inputs) as con:
        groups = con.sql(_sql("estimate_groups.sql"), params={
            "at": at, "on": on, "chatapp_channel": chatapp_channel(db, campaign_id)}).pl()
        con.register("estimate_groups", groups)
        priced = _apply_tiers_after_month(db, con, _price(con, "estimate_groups"), tiers)
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
        _record_estimate(db, estimate, at)
    return estimate


def _estimate_inputs(read: Reader, campaign_id: str, at: datetime) -> dict[str, pa.Table]:
    """What reports/estimate_groups.sql reads: the campaign's outbox counted in the store, the inbound messages
    of the 72 h before `at`, and the outbox rows of the recipients who wrote then (found by their key)."""
    counts = read.arrow("""
        SELECT channel, country, category, count(*) AS messages, sum(coalesce(segments, 1)) AS segments
        FROM outbox WHERE campaign_id = :c AND state <> 'withheld' GROUP BY channel, country, category""",
        {"messages": pa.int64(), "segments": pa.int64()}, c=campaign_id)
    inbound = read.table("inbound", "WHERE occurred_at <= :at AND occurred_at > :since",
                         at=at, since=at - timedelta(hours=72))
    keys = sorted({"+" + re.sub(r"[^0-9]", "", s or "") for s in inbound.column("sender").to_pylist()})
    parts = [read.arrow("""
        SELECT channel, country, category, recipient_key, coalesce(segments, 1) AS segments FROM outbox
        WHERE campaign_id = :c AND state <> 'withheld' AND recipient_key IN :keys""", _IN_WINDOW, c=campaign_id,
                        keys=keys[i:i + _KEYS_PER_READ]) for i in range(0, len(keys), _KEYS_PER_READ)]
    in_window = pa.concat_tables([_typed(p, _IN_WINDOW) for p in parts]) if parts else pa.table(
        {name: pa.array([], kind) for name, kind in _IN_WINDOW.items()})
    return {"counts": counts, "inbound": inbound, "in_window": in_window}


_IN_WINDOW = {"channel": pa.string(), "country": pa.string(), "category": pa.string(), "recipient_key": pa.string(),
              "segments": pa.int64()}


def _typed(table: pa.Table, types: dict[str, pa.DataType]) -> pa.Table:
    return pa.table({name: table.column(name).cast(kind) for name, kind in types.items()})


def _price_data(read: Reader) -> dict[str, pa.Table]:
    """The price data reports/price_groups.sql reads (a few hundred rows)."""
    return {name: read.table(name) for name in PRICE_TABLES}


def _price(con: duckdb.DuckDBPyConnection, groups: str) -> pl.DataFrame:
    """reports/price_groups.sql over the relation `groups` (columns as billing_groups'), in the in-memory DuckDB
    holding the price data."""
    return con.sql(_sql("price_groups.sql").replace("{groups}", groups)).pl()


def latest_estimate(db: Store, campaign_id: str) -> pl.DataFrame:
    """The recorded forecast (channel, country, market, category, messages, ..., total_usd), empty if none."""
    frame = pl.from_arrow(read_table(db, "cost_estimates", "WHERE campaign_id = :c", c=campaign_id))
    assert isinstance(frame, pl.DataFrame)
    frame = frame.drop("campaign_id")
    return frame.sort(frame.columns, nulls_last=True)


def campaign_costs(db: Store, campaign_id: str) -> Costs:
    """The campaign's actual cost from receipts, per channel x country x category (see `cost_report`)."""
    refresh_billing(db, campaign_id)
    return _costs(db, "campaign_id = :campaign_id", {"campaign_id": campaign_id}, keys=[])


def period_costs(db: Store, day_from: date, day_to: date) -> Costs:
    """The bill of a period across campaigns: messages priced on days day_from..day_to (inclusive, UTC)."""
    refresh_billing(db)
    return _costs(db, "price_day >= :day_from AND price_day <= :day_to", {"day_from": day_from, "day_to": day_to},
                  keys=["campaign_id"])


def cost_report(db: Store, campaign_id: str) -> pl.DataFrame:
    """One row per channel x country x category: channel, country, market, category, sent, delivered, read,
    failed, delivery_rate (delivered / sent), read_rate (read / delivered), platform_fee_usd, service_fee_usd,
    total_usd, cost_per_delivered_usd, free_window_messages, free_window_savings_usd, recategorised,
    recategorisation_cost_usd, tier_discount_usd, points_used, unpriced. Money is exact Decimal (6 places)."""
    return campaign_costs(db, campaign_id).rows


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


def fill_segments(db: Store, campaign_id: str) -> int:
    """Sets the parts of the campaign's SMS messages that have none yet: the count the channel stored in the
    payload (Alibaba's includes the signature), else counted from the Body (Twilio) or the rendered text.
    Returns how many were filled."""
    frame = pl.from_arrow(read_arrow(db, """
        SELECT o.message_id, o.payload_json, r.text FROM outbox AS o
        LEFT JOIN recipients AS r ON r.campaign_id = o.campaign_id AND r.recipient_key = o.recipient_key
        WHERE o.campaign_id = :c AND o.channel = 'sms' AND o.segments IS NULL""",
        {"message_id": pa.string(), "payload_json": pa.string(), "text": pa.string()}, c=campaign_id))
    assert isinstance(frame, pl.DataFrame)
    if not frame.height:
        return 0
    frame = frame.select(
        "message_id",
        pl.col("payload_json").str.json_path_match("$.segments").cast(pl.Int64, strict=False).alias("given"),
        pl.coalesce(pl.col("payload_json").str.json_path_match("$.Body"), "text").alias("text"))
    counted = with_segments(frame).select("message_id", pl.coalesce("given", "segments").alias("n")).drop_nulls()
    with db.write() as conn:
        # Staged, then one UPDATE ... FROM (both databases have it): not one statement per message.
        stage = "_segments"
        run(conn, dialect.temp_table_sql(conn.dialect.name, stage, "outbox", ["message_id", "segments"]))
        dialect.copy_rows(conn, stage, ["message_id", "segments"], counted.iter_rows())
        run(conn, f"UPDATE outbox SET segments = s.segments FROM {stage} AS s WHERE outbox.message_id = s.message_id")
        run(conn, f"DROP TABLE {stage}")
    return counted.height


def error_meanings() -> dict[tuple[str, str], str]:
    return {(r["channel"], r["code"]): r["meaning"] for r in pricing.read_csv(DATA / "error_codes.csv")}


def price_counted(db: Store, counts: str, **params: object) -> pl.DataFrame:
    """Groups of messages counted by the store query `counts` (columns as billing_groups', e.g. reports/cost_report.sql
    over some of a campaign's messages), priced as the report prices billing_groups, volume tiers included."""
    with reader(db) as read:  # one connection, one snapshot
        groups = read.arrow(counts, column_types("billing_groups"), **params)
        price_data, tiers = _price_data(read), read.table("price_tiers")
    with duck({"counted_groups": groups, **price_data}) as con:
        return _apply_tiers(db, con, _price(con, "counted_groups"), tiers)


def _costs(db: Store, where: str, params: dict[str, object], *, keys: list[str]) -> Costs:
    with reader(db) as read:  # one connection, one snapshot
        groups = read.table("billing_groups", f"WHERE {where}", **params)
        price_data, tiers = _price_data(read), read.table("price_tiers")
    with duck({"billing_groups": groups, **price_data}) as con:
        priced = _apply_tiers(db, con, _price(con, "billing_groups"), tiers)
    return Costs(rows=_report_rows(priced, keys), failures=_failures(priced, keys), groups=priced)


def _is_tiered() -> pl.Expr:
    return (pl.col("tiered") & pl.col("billable") & (pl.col("basis") == "delivered")
            & pl.col("unit_fee_usd").is_not_null() & (pl.col("delivered") > 0))


_Key = tuple[str, str, str]  # channel, market, rate category
_Ladders = dict[_Key, list[tuple[date, int, int | None, Decimal]]]


def _apply_tiers(db: Store, con: duckdb.DuckDBPyConnection, priced: pl.DataFrame, ladders_read: pa.Table
                 ) -> pl.DataFrame:
    """Monthly volume tiers (docs/providers.md 2.3): lowers platform_fee_usd by tier_discount_usd.

    Volume is the portfolio's (every campaign in this store) per channel, market and card category in a
    calendar month (UTC), in price-day order: the messages of day d hold the ranks after those of the days
    before, and the discount of those ranks is shared pro rata by the day's messages. A ladder applies only
    while it is at least as new as the rate card in force (its rates are absolute, not percentages), so a tier
    dearer than the list rate makes tier_discount_usd negative.
    """
    ladders, wanted = _tier_ladders(priced, ladders_read)
    if not wanted:
        return _no_discounts(priced)
    share: dict[tuple[str, str, str, date], tuple[Decimal, int]] = {}  # discount of the day, its messages
    ranked: dict[tuple[str, str, str, date], int] = {}  # messages before this month's day, per key
    for ch, market, cat, day, n, unit, card_from in _portfolio_days(db, con, priced).iter_rows():
        if (ch, market, cat) not in wanted:
            continue
        month_key = (ch, market, cat, day.replace(day=1))
        before = ranked.get(month_key, 0)
        ranked[month_key] = before + n
        tier_cost = _tier_cost(ladders[(ch, market, cat)], day, card_from, before, n)
        if tier_cost is not None:
            share[(ch, market, cat, day)] = (unit * n - tier_cost, n)
    return _with_discounts(priced, share)


def _apply_tiers_after_month(db: Store, con: duckdb.DuckDBPyConnection, priced: pl.DataFrame,
                             ladders_read: pa.Table) -> pl.DataFrame:
    """Volume tiers for messages not sent yet (the estimate): they hold the ranks after every message of their
    month the portfolio has had up to and including their price day, so a campaign late in a busy month is priced
    at the month's current tier, as its bill will be (if it is sent that day)."""
    ladders, wanted = _tier_ladders(priced, ladders_read)
    if not wanted:
        return _no_discounts(priced)
    # Per key and month, the running total of the portfolio's messages at the end of each of its days.
    totals: dict[tuple[str, str, str, date], list[tuple[date, int]]] = {}
    for ch, market, cat, day, n, _unit, _card_from in _portfolio_days(db, con, priced).iter_rows():
        runs = totals.setdefault((ch, market, cat, day.replace(day=1)), [])
        runs.append((day, (runs[-1][1] if runs else 0) + n))
    share: dict[tuple[str, str, str, date], tuple[Decimal, int]] = {}
    for ch, market, cat, day, n, unit, card_from in _tiered_days(priced).iter_rows():
        if (ch, market, cat) not in wanted:
            continue
        before = max((total for d, total in totals.get((ch, market, cat, day.replace(day=1)), []) if d <= day),
                     default=0)
        tier_cost = _tier_cost(ladders[(ch, market, cat)], day, card_from, before, n)
        if tier_cost is not None:
            share[(ch, market, cat, day)] = (unit * n - tier_cost, n)
    return _with_discounts(priced, share)


def _tier_ladders(priced: pl.DataFrame, ladders_read: pa.Table) -> tuple[_Ladders, set[_Key]]:
    """The ladders by key, and the keys of `priced`'s tiered groups that have one."""
    ladders: _Ladders = {}
    tiers = pl.from_arrow(ladders_read)
    assert isinstance(tiers, pl.DataFrame)
    columns = ["channel", "market", "category", "effective_from", "from_messages", "to_messages", "platform_fee_usd"]
    for ch, market, cat, since, low, high, fee in tiers.select(columns).sort(columns, nulls_last=True).iter_rows():
        ladders.setdefault((ch, market, cat), []).append((since, low, high, fee))
    # Every ladder prices, a one-tier ladder too (1 up, at one rate): a flat negotiated rate from its date.
    tiered = priced.filter(_is_tiered())
    return ladders, set(tiered.select("channel", "market", "rate_category").unique().rows()) & ladders.keys()


def _portfolio_days(db: Store, con: duckdb.DuckDBPyConnection, priced: pl.DataFrame) -> pl.DataFrame:
    """The portfolio's delivered tiered messages per channel, market, rate category and price day, in the months
    of `priced`'s tiered groups (every campaign of the store, counted up to date), in day order."""
    months = priced.filter(_is_tiered()).select(
        "channel", pl.col("price_day").dt.truncate("1mo").alias("month")).unique()
    refresh_billing(db)  # the volume is every campaign's: all of them must be counted up to date
    first, last = months["month"].min(), months["month"].max()
    assert isinstance(first, date) and isinstance(last, date)
    groups = read_table(db, "billing_groups", "WHERE channel IN :channels AND price_day >= :first "
                        "AND price_day < :after", channels=sorted(set(months["channel"].to_list())), first=first,
                        after=date(last.year + last.month // 12, last.month % 12 + 1, 1))
    con.register("all_groups", groups)
    con.register("_tier_months", months)
    portfolio = _price(con, """(
        SELECT channel, country, category, sent_category, pricing_type, price_day,
            0 AS sent, sum(delivered) AS delivered, 0 AS sent_segments
        FROM all_groups
        WHERE (channel, date_trunc('month', price_day)) IN (SELECT channel, month FROM _tier_months)
        GROUP BY ALL)""")
    return _tiered_days(portfolio)


def _tiered_days(priced: pl.DataFrame) -> pl.DataFrame:
    """`priced`'s tiered messages per channel, market, rate category and price day, in day order."""
    return (priced.filter(_is_tiered())
            .group_by("channel", "market", "rate_category", "price_day")
            .agg(pl.col("delivered").sum(), pl.col("unit_fee_usd").first(), pl.col("card_from").first())
            .sort("channel", "market", "rate_category", "price_day"))


def _no_discounts(priced: pl.DataFrame) -> pl.DataFrame:
    return priced.with_columns(pl.lit(ZERO).cast(pl.Decimal(18, 6)).alias("tier_discount_usd"))


def _tier_cost(ladder: list[tuple[date, int, int | None, Decimal]], day: date, card_from: date, before: int,
               n: int) -> Decimal | None:
    """What the ranks before+1 .. before+n cost on the ladder in force on `day`; None when none is in force or
    the rate card is newer than it."""
    in_force = [s for s in ladder if s[0] <= day]
    since = max((s[0] for s in in_force), default=None)
    if since is None or since < card_from:
        return None
    return sum((fee * _overlap(before, before + n, low, high) for s, low, high, fee in in_force if s == since),
               Decimal(0))


def _with_discounts(priced: pl.DataFrame, share: dict[tuple[str, str, str, date], tuple[Decimal, int]]
                    ) -> pl.DataFrame:
    """`priced` with tier_discount_usd (each tiered group's pro-rata part of its day's discount in `share`) taken
    off platform_fee_usd."""
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


def _record_estimate(db: Store, estimate: Estimate, at: datetime) -> None:
    frame = estimate.by_country.with_columns(
        pl.lit(estimate.campaign_id).alias("campaign_id"), pl.lit(at).alias("estimated_at"),
        pl.lit(estimate.priced_on).alias("priced_on"), pl.col("messages", "segments", "unpriced").cast(pl.Int64),
    ).drop("free_window_messages")
    with db.write() as conn:
        run(conn, "DELETE FROM cost_estimates WHERE campaign_id = :c", c=estimate.campaign_id)
        insert_frame(conn, "cost_estimates", frame)


def _sql(name: str) -> str:
    return (SQL_DIR / name).read_text(encoding="utf-8")


def _int(df: pl.DataFrame, column: str) -> int:
    return int(df[column].sum()) if df.height else 0


def _money_sum(df: pl.DataFrame, column: str) -> Decimal:
    # Summed in Python over the exact Decimals, never through floats.
    return sum((v for v in df[column].to_list() if v is not None), ZERO)


