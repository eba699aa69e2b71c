"""Estimated cost per queued message (for the budget guard) and the pre-send budget check."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from pipeline.spec import SpecError
from pipeline.store import Store, run, run_many


class OverBudget(SpecError):
    """The pre-send estimate is over the spec's budget: nothing is sent."""


_PRICE = """
SELECT pr.platform_fee_usd, pr.service_fee_usd FROM markets m
JOIN prices pr ON pr.channel = m.channel AND pr.market = m.market
WHERE m.channel = :channel AND m.region = :country AND pr.category = :category AND pr.effective_from <= :today
ORDER BY pr.effective_from DESC LIMIT 1
"""


def price_queued_messages(db: Store, campaign_id: str) -> None:
    """Sets `est_cost_usd` of the campaign's queued messages: platform + service fee of the card in
    force today for the message's market and category (0 where no price applies). Priced once per
    (channel, country, category), not per message."""
    today = datetime.now(UTC).date()
    with db.write() as conn:
        keys = run(conn, "SELECT DISTINCT channel, coalesce(country, ''), coalesce(category, '') FROM outbox "
                         "WHERE campaign_id = :c AND state = 'queued'", c=campaign_id).all()
        updates = []
        for channel, country, category in keys:
            row = run(conn, _PRICE, channel=channel, country=country, category=category, today=today).first()
            cost = Decimal(str(row[0])) + Decimal(str(row[1])) if row else Decimal(0)
            updates.append({"cost": cost, "c": campaign_id, "channel": channel, "country": country,
                            "category": category})
        run_many(conn, """
            UPDATE outbox SET est_cost_usd = :cost
            WHERE campaign_id = :c AND state = 'queued' AND channel = :channel
              AND coalesce(country, '') = :country AND coalesce(category, '') = :category
            """, updates)


def check_budget(estimate_usd: float, budget_usd: float | None, campaign_id: str) -> None:
    if budget_usd is not None and estimate_usd > budget_usd:
        raise OverBudget(
            f"campaign {campaign_id}: the estimate USD {estimate_usd:.2f} is over the budget USD {budget_usd:.2f}; "
            "nothing was sent (raise budget_usd in the spec or narrow the audience)"
        )
