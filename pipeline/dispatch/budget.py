"""Estimated cost per queued message (for the budget guard) and the pre-send budget check."""

from __future__ import annotations

import duckdb

from pipeline.spec import SpecError


class OverBudget(SpecError):
    """The pre-send estimate is over the spec's budget: nothing is sent."""


def price_queued_messages(con: duckdb.DuckDBPyConnection, campaign_id: str) -> None:
    """Sets `est_cost_usd` of the campaign's queued messages: platform + service fee of the card in
    force today for the message's market and category (0 where no price applies)."""
    con.execute(
        """
        UPDATE outbox SET est_cost_usd = coalesce(p.cost, 0)
        FROM (
            SELECT o.message_id, arg_max(pr.platform_fee_usd + pr.service_fee_usd, pr.effective_from) AS cost
            FROM outbox o
            JOIN markets m ON m.channel = o.channel AND m.region = o.country
            JOIN prices pr ON pr.channel = o.channel AND pr.market = m.market AND pr.category = o.category
                          AND pr.effective_from <= current_date
            WHERE o.campaign_id = ? AND o.state = 'queued'
            GROUP BY o.message_id
        ) AS p
        WHERE outbox.message_id = p.message_id
        """,
        [campaign_id],
    )


def check_budget(estimate_usd: float, budget_usd: float | None, campaign_id: str) -> None:
    if budget_usd is not None and estimate_usd > budget_usd:
        raise OverBudget(
            f"campaign {campaign_id}: the estimate USD {estimate_usd:.2f} is over the budget USD {budget_usd:.2f}; "
            "nothing was sent (raise budget_usd in the spec or narrow the audience)"
        )
