"""The pre-send budget check. The price per queued message that dispatch's budget guard adds up is set by the
costs stage (`price_queued_messages`, re-exported here; its SQL is reports/queued_prices.sql, beside the estimate's)."""

from __future__ import annotations

from pipeline.costs.costing import price_queued_messages
from pipeline.spec import SpecError

__all__ = ["OverBudget", "check_budget", "price_queued_messages"]


class OverBudget(SpecError):
    """The pre-send estimate is over the spec's budget: nothing is sent."""


def check_budget(estimate_usd: float, budget_usd: float | None, campaign_id: str) -> None:
    if budget_usd is not None and estimate_usd > budget_usd:
        raise OverBudget(
            f"campaign {campaign_id}: the estimate USD {estimate_usd:.2f} is over the budget USD {budget_usd:.2f}; "
            "nothing was sent (raise budget_usd in the spec or narrow the audience)"
        )
