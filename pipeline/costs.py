"""What a campaign costs: dated prices loaded as data, the estimate before sending, the report after.

Prices are rows of `prices` (channel x market x category x effective date); the report is reports/cost_report.sql.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl

DATA = Path(__file__).resolve().parent / "data"
RATE_CARD = DATA / "whatsapp-rates-2026-10-usd.csv"
MARKETS = DATA / "whatsapp_markets.csv"
REPORT_SQL = Path(__file__).resolve().parents[1] / "reports" / "cost_report.sql"

# Alibaba ChatApp's flat service fee: 50 points x USD 0.0001 per message, whatever the country.
SERVICE_FEE_USD = Decimal("0.005")
# From 1 Oct 2026 Meta charges service messages at the market's utility rate (the card's comment).
CARD_COLUMNS = {"marketing": "marketing_usd", "utility": "utility_usd", "authentication": "authentication_usd",
                "service": "utility_usd"}
MONEY = ("platform_fee_usd", "service_fee_usd", "total_usd")
COUNTS = ("sent", "delivered", "read", "failed", "unpriced")
ZERO = Decimal("0.000000")
PRICES_SCHEMA = {
    "channel": pl.String, "market": pl.String, "category": pl.String, "platform_fee_usd": pl.Decimal(12, 6),
    "service_fee_usd": pl.Decimal(12, 6), "effective_from": pl.Date, "source": pl.String,
}


def read_rate_card(path: Path = RATE_CARD) -> list[dict[str, str]]:
    """The card's rows (market, calling_codes, <category>_usd); '#' lines are comments."""
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(line for line in f if not line.lstrip().startswith("#")))


def read_markets(path: Path = MARKETS) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def load_prices(
    con: duckdb.DuckDBPyConnection,
    *,
    rate_card: Path = RATE_CARD,
    markets: Path = MARKETS,
    effective_from: date = date(2026, 10, 1),
    service_fee_usd: Decimal | float | str = SERVICE_FEE_USD,
    channel: str = "whatsapp",
) -> int:
    """Loads one dated card into `prices` and the region map into `markets`; returns the price rows.

    Idempotent: a re-load of the same card (or a corrected one) replaces its rows, and cards with
    other effective dates stay, so older campaigns keep being priced by the rules of their day.
    """
    service_fee = Decimal(str(service_fee_usd))
    card = read_rate_card(rate_card)
    known = {row["market"] for row in card}
    price_rows = [
        (channel, row["market"], category, Decimal(row[column]), service_fee, effective_from, rate_card.name)
        for row in card
        for category, column in CARD_COLUMNS.items()
    ]
    market_rows = [(channel, row["region"], row["market"]) for row in read_markets(markets)]
    missing = {market for _, _, market in market_rows} - known
    if missing:
        # A market without prices would make its messages silently free; refuse instead.
        raise ValueError(f"{markets.name} names markets missing from {rate_card.name}: {sorted(missing)}")
    prices = pl.DataFrame(price_rows, orient="row", schema=PRICES_SCHEMA)
    regions = pl.DataFrame(market_rows, orient="row", schema=["channel", "region", "market"])
    # One set-based insert per table (executemany is row by row and ~100x slower), in one transaction.
    con.register("_new_prices", prices)
    con.register("_new_markets", regions)
    con.begin()
    try:
        con.execute("INSERT OR REPLACE INTO prices BY NAME SELECT * FROM _new_prices")
        con.execute("INSERT OR REPLACE INTO markets BY NAME SELECT * FROM _new_markets")
        con.commit()
    except BaseException:
        con.rollback()
        raise
    finally:
        con.unregister("_new_prices")
        con.unregister("_new_markets")
    return prices.height


@dataclass(frozen=True)
class Estimate:
    """The forecast of a campaign: every outbox message delivered and billed at its current category."""

    campaign_id: str
    priced_on: date
    messages: int
    platform_fee_usd: Decimal
    service_fee_usd: Decimal
    total_usd: Decimal
    unpriced: int  # messages with no price row (unknown market or category): their cost is unknown
    by_country: pl.DataFrame  # country, market, category, messages, platform/service/total_usd, unpriced


_ESTIMATE_SQL = """
WITH msg AS (
    SELECT o.channel, o.country, o.category, mk.market, CAST($on AS DATE) AS price_day
    FROM outbox AS o
    LEFT JOIN markets AS mk ON mk.channel = o.channel AND mk.region = o.country
    WHERE o.campaign_id = $campaign_id
)
SELECT
    m.country,
    any_value(m.market) AS market,
    m.category,
    count(*) AS messages,
    CAST(coalesce(sum(p.platform_fee_usd), 0) AS DECIMAL(18, 6)) AS platform_fee_usd,
    CAST(coalesce(sum(p.service_fee_usd), 0) AS DECIMAL(18, 6)) AS service_fee_usd,
    CAST(coalesce(sum(p.platform_fee_usd + p.service_fee_usd), 0) AS DECIMAL(18, 6)) AS total_usd,
    count(*) FILTER (WHERE p.platform_fee_usd IS NULL) AS unpriced
FROM msg AS m
ASOF LEFT JOIN prices AS p
    ON p.channel = m.channel AND p.market = m.market AND p.category = m.category
   AND m.price_day >= p.effective_from
GROUP BY m.country, m.category
ORDER BY m.country NULLS LAST, m.category
"""


def estimate_cost(con: duckdb.DuckDBPyConnection, campaign_id: str, *, on: date | None = None) -> Estimate:
    """Prices every outbox row of the campaign (any state) at the card in force `on` (default today, UTC).

    An upper bound by design: it assumes every message is delivered and billed as the template's
    current category; the report shows what receipts say actually happened.
    """
    on = on or datetime.now(UTC).date()
    frame = _frame(con, _ESTIMATE_SQL, {"campaign_id": campaign_id, "on": on})
    return Estimate(
        campaign_id=campaign_id,
        priced_on=on,
        messages=int(frame["messages"].sum()),
        platform_fee_usd=_money_sum(frame, "platform_fee_usd"),
        service_fee_usd=_money_sum(frame, "service_fee_usd"),
        total_usd=_money_sum(frame, "total_usd"),
        unpriced=int(frame["unpriced"].sum()),
        by_country=frame,
    )


def cost_report(con: duckdb.DuckDBPyConnection, campaign_id: str) -> pl.DataFrame:
    """The campaign's actual cost from receipts, one row per channel x country x category.

    Columns: channel, country, market, category, sent, delivered, read, failed, delivery_rate
    (delivered / sent), read_rate (read / delivered), platform_fee_usd, service_fee_usd, total_usd
    (Decimal, 6 places), unpriced (messages that should cost something but have no price row).
    """
    return _frame(con, REPORT_SQL.read_text(encoding="utf-8"), {"campaign_id": campaign_id})


def summary_totals(df: pl.DataFrame) -> dict[str, int | float | Decimal | None]:
    """Totals over a cost report: counts and money summed, rates recomputed from the sums."""
    totals: dict[str, int | float | Decimal | None] = {c: int(df[c].sum()) if df.height else 0 for c in COUNTS}
    for column in MONEY:
        totals[column] = _money_sum(df, column)
    sent, delivered, read = totals["sent"], totals["delivered"], totals["read"]
    totals["delivery_rate"] = delivered / sent if sent else None  # type: ignore[operator]
    totals["read_rate"] = read / delivered if delivered else None  # type: ignore[operator]
    return totals


def _frame(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, object]) -> pl.DataFrame:
    # Through Arrow, so DECIMAL columns arrive as polars Decimals (exact), not floats.
    return con.sql(sql, params=params).pl()


def _money_sum(df: pl.DataFrame, column: str) -> Decimal:
    # Summed in Python over the exact Decimals, never through floats.
    return sum((v for v in df[column].to_list() if v is not None), ZERO)
