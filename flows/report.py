"""The daily cost report (a cron deployment): yesterday's report of each campaign that sent that day, and the
day's bill across campaigns, as files under reports/ and as Prefect artifacts."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.artifacts import artifact_key
from flows.logging_mask import install_log_masking
from pipeline import store
from pipeline.costs.report import report_artifacts, write_period_report, write_report

# Campaign ids start with a letter or digit (pipeline/spec.py), so this folder never clashes with one.
PERIOD_DIR = "_daily"


def campaigns_sent_on(db: store.Store, day: date) -> list[str]:
    """Campaigns with at least one message sent on `day` (UTC)."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    rows = db.rows("SELECT DISTINCT campaign_id FROM outbox WHERE sent_at >= :start AND sent_at < :end ORDER BY 1",
                   start=start, end=start + timedelta(days=1))
    return [r[0] for r in rows]


@task(name="campaign-reports", cache_policy=NO_CACHE)
def campaign_reports(day: date, db_url: str | None, reports_dir: Path) -> list[dict[str, Any]]:
    rows = []
    with store.connect(db_url) as db:
        for campaign_id in campaigns_sent_on(db, day):
            # Receipts that arrived since the run finished change the actual cost: the report is written
            # again and the campaign's points settled to it (settling is idempotent).
            files = write_report(db, campaign_id, reports_dir / campaign_id)
            totals = report_artifacts(db, campaign_id)["totals"]
            rows.append({"campaign_id": campaign_id, **{k: totals.get(k) for k in (
                "sent", "delivered", "read", "failed", "total_usd")}, "report_html": str(files.html)})
    return rows


@task(name="period-report", cache_policy=NO_CACHE)
def period_report(day: date, db_url: str | None, reports_dir: Path) -> dict[str, str]:
    with store.connect(db_url) as db:
        files = write_period_report(db, day.isoformat(), reports_dir / PERIOD_DIR / day.isoformat())
    return {"html": str(files.html), "csv": str(files.csv)}


@flow(name="daily-cost-report", log_prints=False)
def daily_report_flow(
    day: str | None = None, database: str | None = None, reports_dir: str = "reports"
) -> dict[str, Any]:
    """`day` is YYYY-MM-DD (UTC); by default yesterday. `database`: the store (a SQLite path or a URL; default:
    CAMPAIGN_DATABASE_URL, else data/campaigns.sqlite)."""
    install_log_masking()
    the_day = date.fromisoformat(day) if day else datetime.now(UTC).date() - timedelta(days=1)
    rows = campaign_reports(the_day, database, Path(reports_dir))
    bill = period_report(the_day, database, Path(reports_dir))
    get_run_logger().info("%s: %d campaign report(s), bill %s", the_day, len(rows), bill["html"])
    create_table_artifact(
        [{k: v for k, v in r.items() if k != "report_html"} for r in rows] or [{"campaign_id": "(none)"}],
        key=artifact_key("daily", f"costs-{the_day}"), description=f"Cost per campaign sent on {the_day} (UTC)",
    )
    create_markdown_artifact(
        "\n".join([f"# Costs of {the_day} (UTC)", f"- bill across campaigns: [{bill['html']}]"
                   f"(file://{Path(bill['html']).resolve()})"]
                  + [f"- {r['campaign_id']}: USD {r['total_usd']} — [report](file://{Path(r['report_html']).resolve()})"
                     for r in rows]),
        key=artifact_key("daily", f"report-{the_day}"), description="Daily cost report",
    )
    return {"day": the_day.isoformat(), "campaigns": rows, "bill": bill}
