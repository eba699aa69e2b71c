"""The report files of a campaign or a period: CSV + Parquet data, a self-contained offline HTML page with
charts, and Markdown; plus plain data for Prefect artifacts (pipeline/ never imports Prefect).

Only aggregates leave the store here (no recipient rows), and free text is masked, so no phone number
reaches a report.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import polars as pl

from pipeline.costs import charts, points
from pipeline.costs.approvals_report import approval_rows, write_approvals
from pipeline.costs.costing import (
    DATA,
    MONEY,
    Costs,
    campaign_costs,
    latest_estimate,
    period_costs,
    summary_totals,
)
from pipeline.costs.engagement import engagement
from pipeline.costs.exports import md_cell, md_text, write_csv
from pipeline.costs.uplift import arm_results, display_rows, write_arms
from pipeline.masking import mask_text
from pipeline.store import Store

TEMPLATE = "report.html.j2"
RATES = ("delivery_rate", "read_rate")
# The columns of the tables in the page and the Markdown (all columns are in the CSV and Parquet files).
MD_COLUMNS = ["channel", "country", "category", "sent", "delivered", "read", "failed", "total_usd", "points_used"]


@dataclass(frozen=True)
class ReportFiles:
    csv: Path
    html: Path
    parquet: Path
    markdown: Path
    failures_csv: Path
    failures_parquet: Path
    experiment_csv: Path | None = None  # per-arm results (pipeline/costs/uplift.py), for campaigns with arms
    approvals_csv: Path | None = None  # who approved before sending (pipeline/costs/approvals_report.py)


def write_report(
    db: Store,
    campaign_id: str,
    out_dir: Path,
    *,
    summary: Mapping[str, Any] | None = None,
    settle: bool = True,
) -> ReportFiles:
    """Writes the campaign's cost report into `out_dir` (created if missing): cost_report.csv/.parquet,
    failures.csv/.parquet, report.html, report.md. With `settle`, the campaign's actual cost is charged to
    the points ledger (trial credit first). `summary` is what the run saw; when absent it is derived."""
    campaign = _campaign(db, campaign_id)
    costs = campaign_costs(db, campaign_id)
    totals = summary_totals(costs.rows)
    used = (points.settle_campaign(db, campaign_id, points.usd_to_points(totals["total_usd"]))  # type: ignore[arg-type]
            if settle else points.campaign_points(db, campaign_id))
    if summary is None:
        summary = default_summary(db, campaign_id, totals)
    summary = {**summary, **engagement(db, campaign_id)}  # replies, reply rate, taps per button, opt-outs
    page = {
        "title": campaign["name"], "heading": "Campaign report",
        "meta": [("Campaign", campaign["campaign_id"]), ("Channel", campaign["channel"]),
                 ("Template", f"{campaign['template']} ({campaign['category']})")],
        "summary": summary, "estimate": _estimate_vs_actual(latest_estimate(db, campaign_id), costs.rows),
        "points": used, "balances": points.balances(db),
    }
    sent_as = _categories_sent(db, campaign_id)
    if len(sent_as) > 1:  # the provider re-categorised the template during the send: each part at its own price
        page["meta"].append(("Categories", ", then ".join(f"{c} ({n:,} sent)" for c, n in sent_as)))
    arms = arm_results(db, campaign_id)
    if arms is not None:
        page["arms"] = display_rows(arms)
    page["approvals"] = approval_rows(db, campaign_id)  # who let it send, when, on which estimate
    files = write_approvals(_write(Path(out_dir), costs, totals, page), page["approvals"])
    return files if arms is None else write_arms(files, arms)


def write_period_report(db: Store, period: str, out_dir: Path) -> ReportFiles:
    """The bill of a month (YYYY-MM) or a day (YYYY-MM-DD) across campaigns, in the same files."""
    day_from, day_to = parse_period(period)
    costs = period_costs(db, day_from, day_to)
    totals = summary_totals(costs.rows)
    campaigns = costs.rows["campaign_id"].n_unique() if costs.rows.height else 0
    page = {
        "title": f"Bill for {period}", "heading": "Period report",
        "meta": [("Period", f"{day_from} to {day_to} (UTC)"), ("Campaigns", str(campaigns))],
        "summary": {"sent": totals["sent"], "delivered": totals["delivered"], "read": totals["read"],
                    "failed": totals["failed"], "cost_usd": totals["total_usd"]},
        "estimate": [], "points": None, "balances": points.balances(db),
    }
    return _write(Path(out_dir), costs, totals, page)


def report_artifacts(db: Store, campaign_id: str) -> dict[str, Any]:
    """Plain data for Prefect artifacts: {"table": row dicts (numbers as int/float), "failures": row dicts,
    "markdown": text, "totals": dict}; flows/ publishes them."""
    campaign = _campaign(db, campaign_id)
    costs = campaign_costs(db, campaign_id)
    totals = summary_totals(costs.rows)
    return {
        "table": _plain_rows(costs.rows), "failures": _plain_rows(_masked_failures(costs.failures)),
        "markdown": render_markdown(f"Campaign {campaign['name']} ({campaign_id})", costs, totals),
        "totals": {k: _plain(v) for k, v in totals.items()},
        "engagement": engagement(db, campaign_id),
    }


def parse_period(period: str) -> tuple[date, date]:
    """'2026-11' -> the month's first and last day; '2026-11-03' -> that day."""
    if re.fullmatch(r"\d{4}-\d{2}", period):
        year, month = map(int, period.split("-"))
        if not 1 <= month <= 12:
            raise ValueError(f"not a month: {period!r}")
        return date(year, month, 1), date(year, month, calendar.monthrange(year, month)[1])
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", period):
        day = date.fromisoformat(period)
        return day, day
    raise ValueError(f"a period is YYYY-MM or YYYY-MM-DD, not {period!r}")


def default_summary(
    db: Store, campaign_id: str, totals: Mapping[str, Any]
) -> dict[str, Any]:
    """The summary box from what the store holds: audience rows, rejects, outcomes, cost."""
    accepted = db.scalar("SELECT count(*) FROM recipients WHERE campaign_id = :c", c=campaign_id)
    rows_read = db.scalar(
        """SELECT count(DISTINCT row_number) FROM (
               SELECT row_number FROM recipients WHERE campaign_id = :c
               UNION ALL SELECT row_number FROM rejects WHERE campaign_id = :c) AS numbered""",
        c=campaign_id,
    )
    rejected = db.rows(
        "SELECT reason, count(*) FROM rejects WHERE campaign_id = :c GROUP BY reason ORDER BY 2 DESC, 1",
        c=campaign_id,
    )
    return {
        "rows_read": rows_read, "accepted": accepted, "rejected": {reason: n for reason, n in rejected},
        "sent": totals["sent"], "delivered": totals["delivered"], "read": totals["read"], "failed": totals["failed"],
        "cost_usd": totals["total_usd"],
    }


def render_markdown(title: str, costs: Costs, totals: Mapping[str, Any]) -> str:
    """A short Markdown report: the totals, the cost table and the failures by code."""
    rows = costs.rows
    lead = ["campaign_id"] if "campaign_id" in rows.columns else []
    lines = [
        f"# {md_text(mask_text(title))}", "",
        f"- sent {totals['sent']:,}, delivered {totals['delivered']:,} ({_rate(totals['delivery_rate'])}), "
        f"read {totals['read']:,} ({_rate(totals['read_rate'])}), failed {totals['failed']:,}",
        f"- cost USD {_money(totals['total_usd'])} = platform {_money(totals['platform_fee_usd'])} + service "
        f"{_money(totals['service_fee_usd'])}; per delivered message {_money(totals['cost_per_delivered_usd'])}; "
        f"points {totals.get('points_used', 0)}",
        f"- free-window messages {totals['free_window_messages']:,} (saved USD "
        f"{_money(totals['free_window_savings_usd'])}); re-categorised by Meta {totals['recategorised']:,} "
        f"(cost difference USD {_money(totals['recategorisation_cost_usd'])}); volume-tier discount USD "
        f"{_money(totals['tier_discount_usd'])}",
    ]
    if totals["unpriced"]:
        lines.append(f"- **{totals['unpriced']:,} message(s) found no price and are counted at USD 0**")
    columns = [*lead, *MD_COLUMNS]
    lines += ["", "## Cost by country and category", "", "| " + " | ".join(columns) + " |",
              "|" + "|".join("---:" if c in MONEY or c in ("sent", "delivered", "read", "failed", "points_used")
                             else "---" for c in columns) + "|"]
    lines += ["| " + " | ".join(_cell(c, r[c]) for c in columns) + " |" for r in rows.iter_rows(named=True)]
    failures = _masked_failures(costs.failures)
    if failures.height:
        lines += ["", "## Failures by error code", "", "| channel | code | meaning | failed |", "|---|---|---|---:|"]
        by_code = failures.group_by("channel", "error_code").agg(pl.col("meaning").first(), pl.col("failed").sum())
        for ch, code, meaning, n in by_code.sort("failed", "error_code", descending=[True, False]).iter_rows():
            lines.append("| " + " | ".join(_cell(c, v) for c, v in (("channel", ch), ("error_code", code),
                                                                    ("meaning", meaning), ("failed", n))) + " |")
    return "\n".join(lines) + "\n"


def render_html(page: Mapping[str, Any], costs: Costs, totals: Mapping[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(DATA), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    # The campaign's name and the header's values are free text: masked like every other text of the page.
    page = {**page, "title": mask_text(str(page["title"])),
            "meta": [(label, mask_text(str(value))) for label, value in page["meta"]]}
    rows, failures = costs.rows, _masked_failures(costs.failures)
    by_country = (rows.group_by("country").agg(pl.col("platform_fee_usd").sum(), pl.col("service_fee_usd").sum())
                  .with_columns((pl.col("platform_fee_usd") + pl.col("service_fee_usd")).alias("t"))
                  .sort("t", "country", descending=[True, False], nulls_last=True).head(15))
    by_code = (failures.group_by("error_code").agg(pl.col("meaning").first(), pl.col("failed").sum())
               .sort("failed", "error_code", descending=[True, False]).head(12))
    cards = (costs.groups.filter(pl.col("card_from").is_not_null())
             .group_by("channel").agg(pl.col("card_from").unique().sort()).sort("channel"))
    rules = costs.groups.select("rule").drop_nulls().unique().sort("rule")["rule"].to_list()
    svg = {
        "cost": charts.stacked_bars(
            "chart-cost-by-country", "Cost by country (USD)",
            [(c or "unknown", float(p), float(s)) for c, p, s, _ in by_country.iter_rows()],
            legend=("platform fee", "service fee"), fmt=lambda v: f"{v:,.4f}"),
        "funnel": charts.funnel("chart-funnel", "Sent, delivered, read", int(totals["sent"]),
                                int(totals["delivered"]), int(totals["read"])),
        "failures": charts.bars(
            "chart-failures", "Failures by error code", [(c, float(n)) for c, _, n in by_code.iter_rows()],
            fmt=lambda v: f"{int(v):,}", notes=[m for _, m, _ in by_code.iter_rows()], empty="No message failed.",
            label_w=70, value_w=250),
    }
    return env.get_template(TEMPLATE).render(
        page=page, generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        summary=[_summary_item(k, v) for k, v in page["summary"].items() if k != "campaign_id"],
        rows=[_display(r) for r in rows.iter_rows(named=True)], totals=_display(totals),
        show_campaign="campaign_id" in rows.columns,
        failures=[_display(r) for r in failures.iter_rows(named=True)],
        estimate=[_display(r) for r in page["estimate"]],
        points={k: _money(v, "0.01") for k, v in (page["points"] or {}).items()},
        balances={k: _money(v, "0.01") for k, v in page["balances"].items()},
        cards=[(ch, ", ".join(str(d) for d in days)) for ch, days in cards.iter_rows()], rules=rules,
        unpriced=int(totals.get("unpriced") or 0),
        charts={k: markupsafe.Markup(v) for k, v in svg.items()},  # built and escaped in pipeline/costs/charts.py
    )


def _write(out_dir: Path, costs: Costs, totals: Mapping[str, Any], page: Mapping[str, Any]) -> ReportFiles:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        csv=out_dir / "cost_report.csv", html=out_dir / "report.html", parquet=out_dir / "cost_report.parquet",
        markdown=out_dir / "report.md", failures_csv=out_dir / "failures.csv",
        failures_parquet=out_dir / "failures.parquet")
    failures = _masked_failures(costs.failures)
    # Money is exact to 6 places (Decimal in Parquet); rates are rounded for reading only in the CSV.
    write_csv(costs.rows.with_columns(pl.col(*RATES).round(4)), files.csv)
    costs.rows.write_parquet(files.parquet)
    write_csv(failures, files.failures_csv)
    failures.write_parquet(files.failures_parquet)
    files.html.write_text(render_html(page, costs, totals), encoding="utf-8")
    files.markdown.write_text(render_markdown(f"{page['heading']}: {page['title']}", costs, totals),
                              encoding="utf-8")
    return files


def _estimate_vs_actual(estimate: pl.DataFrame, rows: pl.DataFrame) -> list[dict[str, Any]]:
    if not estimate.height:
        return []
    est = estimate.group_by("channel", "country").agg(pl.col("messages").sum(), pl.col("total_usd").sum()
                                                      .alias("estimated_usd"))
    act = rows.group_by("channel", "country").agg(pl.col("total_usd").sum().alias("actual_usd"))
    both = est.join(act, on=["channel", "country"], how="full", coalesce=True, nulls_equal=True).sort(
        "channel", "country", nulls_last=True)
    out = []
    for r in both.iter_rows(named=True):
        e, a = r["estimated_usd"] or Decimal(0), r["actual_usd"] or Decimal(0)
        out.append({**r, "estimated_usd": e, "actual_usd": a, "difference_usd": a - e})
    return out


def _masked_failures(failures: pl.DataFrame) -> pl.DataFrame:
    # Provider error texts can quote a number; mask before anything is written.
    return failures.with_columns(pl.col("meaning").map_elements(mask_text, return_dtype=pl.String))


def _categories_sent(db: Store, campaign_id: str) -> list[tuple[str, int]]:
    """The categories the campaign's messages went at, in the order they were first used, with their counts.

    Counted from billing_groups (current: campaign_costs has just refreshed it), so `sent` is the bill's (a message
    in flight at a crash that a receipt names is sent, reports/cost_report.sql). Such a message may have no sent_at
    yet: a category first used by those alone comes last."""
    return [(r.category, int(r.n)) for r in db.rows(
        """SELECT g.sent_category AS category, sum(g.sent) AS n FROM billing_groups AS g
           LEFT JOIN (SELECT category, min(sent_at) AS first FROM outbox WHERE campaign_id = :c GROUP BY category)
               AS f ON f.category = g.sent_category
           WHERE g.campaign_id = :c AND g.sent_category IS NOT NULL
           GROUP BY g.sent_category, f.first HAVING sum(g.sent) > 0
           ORDER BY CASE WHEN f.first IS NULL THEN 1 ELSE 0 END, f.first, g.sent_category""", c=campaign_id)]


def _campaign(db: Store, campaign_id: str) -> dict[str, Any]:
    rows = db.rows(
        "SELECT campaign_id, name, channel, template, category FROM campaigns WHERE campaign_id = :c",
        c=campaign_id,
    )
    if not rows:
        raise LookupError(f"no campaign {campaign_id!r}")
    return dict(zip(("campaign_id", "name", "channel", "template", "category"), rows[0], strict=True))


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal) else str(value) if isinstance(value, date) else value


def _plain_rows(df: pl.DataFrame) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in df.iter_rows(named=True)]


def _display(row: Mapping[str, Any]) -> dict[str, str]:
    """Formats one row for the page: money to 6 places, rates as percentages, blanks for nulls."""
    shown: dict[str, str] = {}
    for key, value in row.items():
        if value is None:
            shown[key] = "–"
        elif key in MONEY or key.endswith("_usd"):
            shown[key] = _money(value)
        elif key in RATES:
            shown[key] = f"{value:.1%}"
        elif key in ("meaning", "error_title"):
            shown[key] = mask_text(str(value))
        else:
            shown[key] = str(value)
    return shown


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "–"
    if column.endswith("_usd"):
        return _money(value)
    return f"{value:,}" if isinstance(value, int) else md_cell(value)


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _money(value: Any, places: str = "0.000001") -> str:
    return "–" if value is None else f"{Decimal(str(value)).quantize(Decimal(places))}"


def _summary_item(key: str, value: Any) -> dict[str, Any]:
    label = key.removesuffix("_usd").replace("_", " ").capitalize() + (" (USD)" if key.endswith("_usd") else "")
    label = mask_text(label)
    if isinstance(value, Mapping):
        # e.g. rejected by reason: the total, then one line per reason.
        children = [{"label": mask_text(str(k)), "value": _summary_value(str(k), v)} for k, v in value.items()]
        numeric = [v for v in value.values() if isinstance(v, int)]
        return {"label": label, "value": sum(numeric), "children": children}
    return {"label": label, "value": _summary_value(key, value), "children": None}


def _summary_value(key: str, value: Any) -> str:
    if isinstance(value, Decimal) or (key.endswith("_usd") and isinstance(value, int | float)):
        return _money(value)
    if isinstance(value, float):
        return f"{value:.1%}" if key.endswith("_rate") else f"{value:g}"
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    # Free text from the caller: mask any phone number or address that slipped in.
    return mask_text(str(value))
