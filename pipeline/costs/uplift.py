"""Per-arm results of a campaign with variants or a holdout: sent, delivered, read, replies, taps, opt-outs,
conversions, the conversion rate with its 95 % interval, the uplift against the holdout with its interval, and
cost per conversion. Read from the store's tables (experiment_arms, outbox, message_status, inbound,
suppressions, conversions); only aggregates leave here. An arm's cost is its part of the bill: its messages counted
and priced as the campaign's report counts and prices them (reports/cost_report.sql, pipeline/costs/costing.py),
not the dispatch's estimate (which is none off WhatsApp and counts failed messages).

Every arm is measured over all the recipients assigned to it (intention to treat: a message that failed still
counts its recipient), so the holdout, sent nothing, is comparable. The statistics are statsmodels': the rate's
interval is Wilson's score interval, the uplift's (a difference of two independent proportions) Newcombe's hybrid
score interval; both keep their coverage at rates near 0 and in small arms, where the Wald formulas do not.
"""

from __future__ import annotations

import math
from dataclasses import replace
from decimal import Decimal
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.costs.billing import chatapp_channel, groups_sql, refresh_billing
from pipeline.costs.costing import price_counted
from pipeline.costs.exports import md_cell, write_csv
from pipeline.store import Store
from pipeline.store.arrow import TIMESTAMP, read_arrow

ALPHA = 0.05  # 95 % intervals
HOLDOUT = "holdout"
COLUMNS = ["arm", "recipients", "sent", "delivered", "read", "replies", "taps", "opt_outs", "conversions",
           "conversion_rate", "rate_low", "rate_high", "uplift", "uplift_low", "uplift_high", "conversion_value",
           "cost_usd", "cost_per_conversion_usd"]
# An inbound message of these WhatsApp types is a tap on a button of the template (quick reply, interactive).
_TAP = r'"type"\s*:\s*"(button|interactive)"'


# Times and money as one type on both stores (SQLite keeps them as text).
_TYPES = {"sent_at": TIMESTAMP, "occurred_at": TIMESTAMP, "since": TIMESTAMP,
          "value": pa.float64(), "n": pa.int64(),
          **dict.fromkeys(("recipient_key", "arm", "state", "status", "sender", "raw_json", "address"), pa.string())}


def _frame(db: Store, sql: str, **params: Any) -> pl.DataFrame:
    return pl.from_arrow(read_arrow(db, sql, _TYPES, **params))  # type: ignore[return-value]


def _digits(column: str) -> pl.Expr:
    # WhatsApp names senders without the +; ids and e-mail addresses have none to strip.
    return pl.col(column).str.strip_prefix("+")


def arm_counts(db: Store, campaign_id: str) -> pl.DataFrame:
    """One row per arm with its counts (no statistics); empty when the campaign has no arms."""
    arms = _frame(db, """
        SELECT a.recipient_key, a.arm, o.state, o.sent_at, s.status
        FROM experiment_arms a
        LEFT JOIN outbox o ON o.campaign_id = a.campaign_id AND o.recipient_key = a.recipient_key
        LEFT JOIN message_status s ON s.message_id = o.message_id
        WHERE a.campaign_id = :c""", c=campaign_id)
    if arms.is_empty():
        return pl.DataFrame()
    sent = arms.filter(pl.col("sent_at").is_not_null()).select(
        "recipient_key", "sent_at", _digits("recipient_key").alias("who"))
    first = sent["sent_at"].min() if sent.height else None
    inbound = _frame(db, "SELECT sender, occurred_at, raw_json FROM inbound WHERE occurred_at >= :t",
                     t=first) if first is not None else pl.DataFrame(
        schema={"sender": pl.String, "occurred_at": pl.Datetime("us", "UTC"), "raw_json": pl.String})
    # A reply or a tap counts once per recipient, and only after the message reached it.
    answered = sent.join(inbound.with_columns(_digits("sender").alias("who")), on="who").filter(
        pl.col("occurred_at") >= pl.col("sent_at")).group_by("recipient_key").agg(
        replies=pl.len() > 0, taps=pl.col("raw_json").str.contains(_TAP).fill_null(False).any())
    stops = _frame(db, "SELECT address, min(since) AS since FROM suppressions GROUP BY address")
    opted = sent.join(stops.with_columns(_digits("address").alias("who")), on="who").filter(
        pl.col("since") >= pl.col("sent_at")).select("recipient_key", opt_out=pl.lit(True))
    converted = _frame(db, "SELECT recipient_key, count(*) AS n, sum(value) AS value FROM conversions "
                           "WHERE campaign_id = :c GROUP BY recipient_key", c=campaign_id)
    rows = (arms.join(answered, on="recipient_key", how="left").join(opted, on="recipient_key", how="left")
            .join(converted, on="recipient_key", how="left"))
    cost = {arm: float(usd) for arm, usd in arm_costs(db, campaign_id).items()}
    return rows.group_by("arm").agg(
        recipients=pl.len(),
        sent=pl.col("sent_at").is_not_null().sum(),
        delivered=pl.col("status").is_in(["delivered", "read"]).sum(),
        read=(pl.col("status") == "read").sum(),
        replies=pl.col("replies").fill_null(False).sum(),
        taps=pl.col("taps").fill_null(False).sum(),
        opt_outs=pl.col("opt_out").fill_null(False).sum(),
        conversions=pl.col("n").is_not_null().sum(),
        conversion_value=pl.col("value").sum().cast(pl.Float64),
    ).with_columns(
        cost_usd=pl.col("arm").replace_strict(cost, default=0.0, return_dtype=pl.Float64),
    ).sort(pl.col("arm") != HOLDOUT, "arm")


def arm_costs(db: Store, campaign_id: str) -> dict[str, Decimal]:
    """Each arm's part of the campaign's bill (USD): its recipients' messages counted by reports/cost_report.sql
    and priced as the report prices the campaign's, one arm at a time (billing_groups, counted per price key, cannot
    be split by arm); an arm that sent nothing is absent."""
    refresh_billing(db, campaign_id)  # every receipt folded, as for the report
    sql = groups_sql(db, "o.campaign_id = :c AND o.recipient_key IN (SELECT recipient_key FROM experiment_arms "
                         "WHERE campaign_id = :c AND arm = :arm)")
    channel = chatapp_channel(db, campaign_id)
    out: dict[str, Decimal] = {}
    for (arm,) in db.rows("SELECT DISTINCT arm FROM experiment_arms WHERE campaign_id = :c", c=campaign_id):
        priced = price_counted(db, sql, c=campaign_id, arm=arm, chatapp_channel=channel)
        if priced.height:
            out[arm] = sum(priced["platform_fee_usd"].to_list() + priced["service_fee_usd"].to_list(), Decimal(0))
    return out


def with_statistics(counts: pl.DataFrame) -> pl.DataFrame:
    """`counts` (arm, recipients, conversions, cost_usd, ...) with the rate, its interval, the uplift against
    the holdout (none without one) and cost per conversion."""
    # Here, not at the top: statsmodels brings SciPy, ~1 s of import that every command reading a report paid.
    from statsmodels.stats.proportion import proportion_confint

    holdout = counts.filter(pl.col("arm") == HOLDOUT)
    base = holdout.row(0, named=True) if holdout.height else None
    out = []
    for row in counts.iter_rows(named=True):
        n, k = int(row["recipients"]), int(row["conversions"])
        low, high = proportion_confint(k, n, alpha=ALPHA, method="wilson")
        row |= {"conversion_rate": k / n, "rate_low": float(low), "rate_high": float(high),
                "uplift": None, "uplift_low": None, "uplift_high": None,
                "cost_per_conversion_usd": row["cost_usd"] / k if k and row["arm"] != HOLDOUT else None}
        if base is not None and row["arm"] != HOLDOUT:
            u_low, u_high = uplift_interval(k, n, int(base["conversions"]), int(base["recipients"]))
            row |= {"uplift": k / n - base["conversions"] / base["recipients"], "uplift_low": u_low,
                    "uplift_high": u_high}
        out.append(row)
    return pl.DataFrame(out, schema_overrides={c: pl.Float64 for c in (
        "uplift", "uplift_low", "uplift_high", "cost_per_conversion_usd", "conversion_value")}).select(COLUMNS)


def uplift_interval(k1: int, n1: int, k0: int, n0: int) -> tuple[float, float]:
    """95 % interval of p1 - p0 (Newcombe's hybrid score interval, statsmodels)."""
    from statsmodels.stats.proportion import confint_proportions_2indep

    low, high = confint_proportions_2indep(k1, n1, k0, n0, method="newcomb", compare="diff", alpha=ALPHA)
    return float(low), float(high)


def arm_results(db: Store, campaign_id: str) -> pl.DataFrame | None:
    """The per-arm table of the report, or None for a campaign without arms."""
    counts = arm_counts(db, campaign_id)
    return None if counts.is_empty() else with_statistics(counts)


def display_rows(results: pl.DataFrame) -> list[dict[str, str]]:
    """The table as the HTML page and the Markdown show it: rates and intervals in percent."""
    def pct(value: float | None) -> str:
        return "" if value is None or math.isnan(value) else f"{100 * value:.2f}%"

    rows = []
    for r in results.iter_rows(named=True):
        rows.append({
            "arm": r["arm"], **{c: f"{int(r[c]):,}" for c in COLUMNS[1:9]},
            "conversion_rate": f"{pct(r['conversion_rate'])} [{pct(r['rate_low'])}, {pct(r['rate_high'])}]",
            "uplift": "" if r["uplift"] is None else
            f"{100 * r['uplift']:+.2f} pt [{100 * r['uplift_low']:+.2f}, {100 * r['uplift_high']:+.2f}]",
            "cost_per_conversion_usd": "" if r["cost_per_conversion_usd"] is None
            else f"{r['cost_per_conversion_usd']:.4f}",
        })
    return rows


def markdown(results: pl.DataFrame) -> str:
    columns = ["arm", *COLUMNS[1:9], "conversion_rate", "uplift", "cost_per_conversion_usd"]
    lines = ["", "## Arms: conversions and uplift against the holdout (95 % intervals)", "",
             "| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    lines += ["| " + " | ".join(md_cell(row[c]) for c in columns) + " |" for row in display_rows(results)]
    return "\n".join(lines) + "\n"


def write_arms(files: Any, results: pl.DataFrame) -> Any:
    """experiment.csv beside the report's files, and the arms' table appended to report.md (the HTML page
    renders it from the page's `arms`)."""
    path = files.csv.parent / "experiment.csv"
    write_csv(results, path)
    with files.markdown.open("a", encoding="utf-8") as handle:
        handle.write(markdown(results))
    return replace(files, experiment_csv=path)
