"""The numbers an operator reads after a run: rows, rejects by reason, outcomes and cost."""

from __future__ import annotations

from typing import Any

from pipeline.costs.billing import groups_sql
from pipeline.costs.costing import cost_report, summary_totals
from pipeline.store import Store

# Each message's current status from its folded receipts (billing_messages, current once cost_report has
# refreshed it): the message_status view's answer without grouping every receipt again.
_STATUS_OF_RANK = {3: "read", 2: "delivered"}


def campaign_summary(db: Store, campaign_id: str, *, rows_read: int | None = None) -> dict[str, Any]:
    totals = summary_totals(cost_report(db, campaign_id))  # first: it brings billing_messages up to date
    by_reason = {reason: n for reason, n in db.rows(
        "SELECT reason, count(*) FROM rejects WHERE campaign_id = :c GROUP BY reason ORDER BY count(*) DESC",
        c=campaign_id)}
    accepted = db.scalar("SELECT count(*) FROM recipients WHERE campaign_id = :c", c=campaign_id)
    states = {state: n for state, n in db.rows(
        "SELECT state, count(*) FROM outbox WHERE campaign_id = :c GROUP BY state", c=campaign_id)}
    # `unknown` and `sent` as the bill counts them (reports/cost_report.sql): a message in flight at a crash that a
    # receipt names reached the provider, so it is sent, and no longer unknown.
    unknown = states.get("unknown", 0) - (_sent_by_bill(db, campaign_id, "unknown") if states.get("unknown") else 0)
    statuses: dict[str, int] = {}
    for rank, n in db.rows("""
            SELECT b.status_rank, count(*) FROM outbox AS o JOIN billing_messages AS b ON b.message_id = o.message_id
            WHERE o.campaign_id = :c AND b.status_rank IN (2, 3) GROUP BY b.status_rank""", c=campaign_id):
        statuses[_STATUS_OF_RANK[int(rank)]] = n
    # Withheld as the dispatch started (the frequency cap, pipeline/dispatch/cap_at_send.py): never sent, no cost.
    withheld = {reason: n for reason, n in db.rows(
        "SELECT error_code, count(*) FROM outbox WHERE campaign_id = :c AND state = 'withheld' GROUP BY error_code "
        "ORDER BY 1", c=campaign_id)} if states.get("withheld") else {}
    # Test sends (pipeline/dispatch/test_sends.py) are in no count above: shown apart, with their cost.
    tests, tests_usd = db.rows("SELECT count(*), coalesce(sum(cost_usd), 0) FROM test_sends WHERE campaign_id = :c",
                               c=campaign_id)[0]
    return {
        "campaign_id": campaign_id,
        "rows_read": rows_read if rows_read is not None else accepted + sum(by_reason.values()),
        "accepted": accepted,
        "rejected": sum(by_reason.values()),
        "rejected_by_reason": by_reason,
        "queued": states.get("queued", 0),
        "sent": int(totals.get("sent", 0) or 0),
        "send_failed": states.get("failed", 0),
        "unknown": unknown,
        "withheld": states.get("withheld", 0),
        "withheld_by_reason": withheld,
        # read implies delivered
        "delivered": statuses.get("delivered", 0) + statuses.get("read", 0),
        "read": statuses.get("read", 0),
        # The bill's: each message once, whether refused at send, failed by a receipt, or both.
        "failed": int(totals.get("failed", 0) or 0),
        "cost_usd": float(totals.get("total_usd", 0) or 0),
        "platform_fee_usd": float(totals.get("platform_fee_usd", 0) or 0),
        "service_fee_usd": float(totals.get("service_fee_usd", 0) or 0),
        "test_sends": int(tests),
        "test_sends_cost_usd": float(tests_usd or 0),
    }


def _sent_by_bill(db: Store, campaign_id: str, state: str) -> int:
    """How many of the campaign's outbox rows in `state` the bill counts as sent."""
    sql = groups_sql(db, "o.campaign_id = :c AND o.state = :state")
    # chatapp_channel only names the channel a ChatApp message is billed as; it changes no count.
    return sum(int(r.sent) for r in db.rows(sql, c=campaign_id, state=state, chatapp_channel="chatapp"))


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table for the terminal."""
    lines = [f"Campaign {summary['campaign_id']}", ""]
    rows: list[tuple[str, str]] = [("rows read", f"{summary['rows_read']:,}"), ("accepted", f"{summary['accepted']:,}")]
    rows.append(("rejected", f"{summary['rejected']:,}"))
    rows += [(f"  {reason}", f"{n:,}") for reason, n in summary["rejected_by_reason"].items()]
    rows += [
        ("sent", f"{summary['sent']:,}"),
        ("delivered", f"{summary['delivered']:,}"),
        ("read", f"{summary['read']:,}"),
        ("failed", f"{summary['failed']:,}"),
    ]
    if summary.get("queued"):
        rows.append(("still queued", f"{summary['queued']:,}"))
    if summary.get("withheld"):
        rows.append(("withheld, not sent", f"{summary['withheld']:,}"))
        rows += [(f"  {reason}", f"{n:,}") for reason, n in summary["withheld_by_reason"].items()]
    if summary.get("unknown"):
        rows.append(("unknown (in flight at a crash, no receipt)", f"{summary['unknown']:,}"))
    rows += [
        ("platform fee (USD)", f"{summary['platform_fee_usd']:.4f}"),
        ("service fee (USD)", f"{summary['service_fee_usd']:.4f}"),
        ("cost (USD)", f"{summary['cost_usd']:.4f}"),
    ]
    if summary.get("test_sends"):
        rows += [("test sends (apart)", f"{summary['test_sends']:,}"),
                 ("  test cost (USD)", f"{summary['test_sends_cost_usd']:.4f}")]
    leg = summary.get("fallback")
    if leg:
        rows += [
            (f"fallback over {leg['channel']}", f"{leg['rows_read']:,}"),
            ("  sent", f"{leg['sent']:,}"),
            ("  delivered", f"{leg['delivered']:,}"),
            ("  failed", f"{leg['failed']:,}"),
            ("  cost (USD)", f"{leg['cost_usd']:.4f}"),
            ("both legs (USD)", f"{summary['cost_usd'] + leg['cost_usd']:.4f}"),
        ]
    width = max(len(label) for label, _ in rows) + 2
    value_width = max(len(value) for _, value in rows)
    lines += [f"  {label:<{width}}{value:>{value_width}}" for label, value in rows]
    return "\n".join(lines)
