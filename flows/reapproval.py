"""A campaign run that ended because the provider stopped its template continues by itself once the template is
APPROVED again: the run records what to run again (`record_template_wait`), and whatever brings the APPROVED status
into the registry — receipts ingest (`campaign receipts`, the collect-receipts flow) or `campaign templates sync` —
calls `continue_reapproved`, which schedules a run of the same deployment with the same parameters, at once.

Why this and not a Prefect automation on an event: the re-approval is learnt in the store (the registry), by
processes that are not flows (`campaign receipts`, `campaign templates sync`); scheduling the run from there is the
mechanism send windows already use (flows/continuation.py: `run_deployment` with a scheduled time and an idempotency
key), needs no automation to be created in the workspace, and is idempotent: the key names the campaign and the
stop, so two callers noticing the same re-approval schedule one run. A run started outside a deployment has nothing
that could start it again: it says so and names `campaign resume`.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from prefect.deployments import run_deployment

from pipeline import store
from pipeline.dispatch.template_resume import Target, Wait, due_waits, mark_continued, record_wait, settle_wait

log = logging.getLogger(__name__)


def record_template_wait(database: str, campaign_id: str, target: Target, reason: str,
                         spec_path: str) -> dict[str, Any]:
    """In a campaign run that ends stopped by its template: what continues it, recorded; and if the template is
    already APPROVED again (it came back as the run ended), its continuation scheduled now."""
    from prefect import get_run_logger
    from prefect.runtime import deployment, flow_run

    deployment_id = deployment.id
    wait = Wait(campaign_id=campaign_id, target=target, reason=reason,
                deployment_id=str(deployment_id) if deployment_id else None, parameters=dict(flow_run.parameters))
    with store.connect(database) as db:
        record_wait(db, wait)
    logger = get_run_logger()
    if deployment_id is None:
        logger.warning("the campaign continues with `campaign resume %s` once %s [%s] is APPROVED again (this run is "
                       "not from a deployment: nothing starts the next one by itself)", spec_path, target.name,
                       target.language)
        return {"waiting_for": f"{target.name} [{target.language}] APPROVED", "flow_run_id": None}
    logger.warning("the campaign continues by itself once %s [%s] is APPROVED again: a run of this deployment is "
                   "scheduled when receipts ingest or `campaign templates sync` records it", target.name,
                   target.language)
    started = continue_reapproved(database, campaign_id=campaign_id)
    return {"waiting_for": f"{target.name} [{target.language}] APPROVED",
            "flow_run_id": started[0]["flow_run_id"] if started else None}


def settle_template_wait(database: str, campaign_id: str) -> None:
    with store.connect(database) as db:
        settle_wait(db, campaign_id)


def continue_reapproved(database: str | None, *, campaign_id: str | None = None,
                        limit: int | None = None) -> list[dict[str, Any]]:
    """Schedules, now, a run of each stopped campaign's deployment whose template the registry has APPROVED again
    (at most `limit`, CAMPAIGN_MAX_REAPPROVAL_RUNS; the rest on the next call). What it scheduled."""
    with store.connect(database) as db:
        due = due_waits(db, campaign_id, limit)
        started = []
        for wait in due:
            run = _schedule(wait)
            mark_continued(db, wait, str(run.id))
            log.warning("template %s [%s] is APPROVED again: campaign %s continues in flow run %s (%s)",
                        wait.target.name, wait.target.language, wait.campaign_id, run.name, run.id)
            started.append({"campaign_id": wait.campaign_id, "flow_run_id": str(run.id), "flow_run_name": run.name})
    return started


def _schedule(wait: Wait) -> Any:
    now = datetime.now(UTC)
    assert wait.deployment_id is not None
    return run_deployment(
        wait.deployment_id, parameters=wait.parameters, scheduled_time=now, timeout=0, as_subflow=False,
        idempotency_key=f"reapproved:{wait.campaign_id}:{wait.stopped_at.isoformat()}",
        flow_run_name=f"{wait.campaign_id}-reapproved-{now:%Y%m%d-%H%M%S}", tags=["continuation", "reapproved"])
