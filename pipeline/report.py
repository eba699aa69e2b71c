"""The campaign report files: `cost_report.csv` and a self-contained, offline `report.html`.

Only aggregates leave the database here (no recipient rows), and free text in the summary is masked,
so no phone number reaches a report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import jinja2
import polars as pl

from pipeline.costs import DATA, MONEY, cost_report, summary_totals
from pipeline.masking import mask_text

TEMPLATE = "report.html.j2"
RATES = ("delivery_rate", "read_rate")


@dataclass(frozen=True)
class ReportFiles:
    csv: Path
    html: Path


def write_report(
    con: duckdb.DuckDBPyConnection,
    campaign_id: str,
    out_dir: Path,
    *,
    summary: Mapping[str, Any] | None = None,
) -> ReportFiles:
    """Writes the campaign's cost report as CSV and HTML into `out_dir` (created if missing).

    `summary` is what the run saw (rows read, accepted, rejected by reason, sent, ..., cost); when
    absent it is derived from the database.
    """
    campaign = _campaign(con, campaign_id)
    df = cost_report(con, campaign_id)
    totals = summary_totals(df)
    if summary is None:
        summary = default_summary(con, campaign_id, totals)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    csv_path = out_dir / "cost_report.csv"
    # Money is already exact to 6 places; rates are rounded for reading only.
    df.with_columns(pl.col(*RATES).round(4)).write_csv(csv_path)

    html_path = out_dir / "report.html"
    html_path.write_text(render_html(campaign, df, totals, summary), encoding="utf-8")
    return ReportFiles(csv=csv_path, html=html_path)


def default_summary(
    con: duckdb.DuckDBPyConnection, campaign_id: str, totals: Mapping[str, Any]
) -> dict[str, Any]:
    """The summary box from what the database holds: audience rows, rejects, outcomes, cost."""
    # fetchall, not fetchone: DuckDB 2 keeps a half-read result open and refuses the next statement.
    [(accepted,)] = con.execute("SELECT count(*) FROM recipients WHERE campaign_id = ?", [campaign_id]).fetchall()
    [(rows_read,)] = con.execute(
        """SELECT count(DISTINCT row_number) FROM (
               SELECT row_number FROM recipients WHERE campaign_id = $c
               UNION ALL SELECT row_number FROM rejects WHERE campaign_id = $c)""",
        {"c": campaign_id},
    ).fetchall()
    rejected = con.execute(
        "SELECT reason, count(*) FROM rejects WHERE campaign_id = ? GROUP BY reason ORDER BY 2 DESC, 1",
        [campaign_id],
    ).fetchall()
    return {
        "rows_read": rows_read,
        "accepted": accepted,
        "rejected": dict(rejected),
        "sent": totals["sent"],
        "delivered": totals["delivered"],
        "read": totals["read"],
        "failed": totals["failed"],
        "cost_usd": totals["total_usd"],
    }


def render_html(
    campaign: Mapping[str, Any], df: pl.DataFrame, totals: Mapping[str, Any], summary: Mapping[str, Any]
) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(DATA),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    return env.get_template(TEMPLATE).render(
        # Campaign fields come from the spec (ids, names), not from the audience: shown as they are.
        campaign=campaign,
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        # The header already names the campaign (and ids full of digits would trip the phone masking).
        summary=[_summary_item(key, value) for key, value in summary.items() if key != "campaign_id"],
        rows=[_display(row) for row in df.iter_rows(named=True)],
        totals=_display(totals),
        unpriced=int(totals.get("unpriced") or 0),
    )


def _campaign(con: duckdb.DuckDBPyConnection, campaign_id: str) -> dict[str, Any]:
    rows = con.execute(
        "SELECT campaign_id, name, channel, template, category FROM campaigns WHERE campaign_id = ?",
        [campaign_id],
    ).fetchall()
    if not rows:
        raise LookupError(f"no campaign {campaign_id!r}")
    return dict(zip(("campaign_id", "name", "channel", "template", "category"), rows[0], strict=True))


def _display(row: Mapping[str, Any]) -> dict[str, str]:
    """Formats one row for the page: money to 6 places, rates as percentages, blanks for nulls."""
    shown: dict[str, str] = {}
    for key, value in row.items():
        if value is None:
            shown[key] = "–"
        elif key in MONEY:
            shown[key] = _money(value)
        elif key in RATES:
            shown[key] = f"{value:.1%}"
        else:
            shown[key] = str(value)
    return shown


def _money(value: Any) -> str:
    return f"{Decimal(str(value)).quantize(Decimal('0.000001'))}"


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
