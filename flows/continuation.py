"""A campaign that left messages waiting for a time (a send window that closed, recipients released at 10:00 local
time, the messaging limit, a provider's daily or monthly quota) continues by itself: a run of the same deployment,
with the same parameters, scheduled at the time they can go.

Why a scheduled run and not the run suspended until then: a suspended run holds nothing while it waits, but
Prefect resumes it only when someone (or an automation) calls `resume_flow_run`; a scheduled flow run is started at
its time by whatever serves the deployment (`make serve`, a worker), shows in the UI as Scheduled with its time,
and re-running a campaign is already safe (message ids are deterministic, claims are transactions: each message is
sent once). A run started outside a deployment (`campaign run`) has nothing that could start it later: it says so
and names the command and the time.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.deployments import run_deployment
from prefect.runtime import deployment, flow_run

from flows.artifacts import artifact_key
from pipeline.dispatch.locks import LockHolder
from pipeline.dispatch.policy import DispatchResult
from pipeline.spec import positive_setting


def schedule_continuation(campaign_id: str, spec_path: str, result: DispatchResult) -> dict[str, Any] | None:
    """Schedules the run that sends what waits, when it can (`result.continue_at`); what it did, or None."""
    if not result.waiting or result.continue_at is None:
        return None
    at: datetime = result.continue_at
    logger = get_run_logger()
    deployment_id = deployment.id
    if deployment_id is None:
        logger.warning("%d messages wait until %s; this run is not from a deployment, so nothing starts the next one "
                       "by itself: `campaign resume %s` from then", result.waiting, at.isoformat(), spec_path)
        text = (f"**{result.waiting} messages wait** until {at.isoformat()}. Not run from a deployment: "
                f"run `campaign resume {spec_path}` from then.")
        create_markdown_artifact(text, key=artifact_key(campaign_id, "continues"))
        return {"waiting": result.waiting, "continue_at": at.isoformat(), "flow_run_id": None}
    # The same parameters; one continuation per run and time, however often this code is reached again.
    scheduled = run_deployment(
        deployment_id, parameters=dict(flow_run.parameters), scheduled_time=at, timeout=0, as_subflow=False,
        idempotency_key=f"continue:{campaign_id}:{at.isoformat()}:{flow_run.id}",
        flow_run_name=f"{campaign_id}-continues-{at:%Y%m%d-%H%M%S}", tags=[CONTINUATION_TAG],
    )
    logger.info("%d messages wait; the campaign continues at %s in flow run %s (%s)", result.waiting,
                at.isoformat(), scheduled.name, scheduled.id)
    create_markdown_artifact(
        f"**{result.waiting} messages wait**; the campaign continues at {at.isoformat()} in flow run "
        f"`{scheduled.name}` ({scheduled.id}).", key=artifact_key(campaign_id, "continues"))
    return {"waiting": result.waiting, "continue_at": at.isoformat(), "flow_run_id": str(scheduled.id)}


CONTINUATION_TAG = "continuation"
LEASE_WAIT_S = 600  # CAMPAIGN_CONTINUATION_LEASE_WAIT_S: how long a continuation waits for the run before it


def lease_wait_s() -> float:
    """How long this run waits for the campaign's lease when another run holds it: a continuation (tagged so by
    schedule_continuation) may be due while the run that scheduled it, or an earlier continuation, still finishes
    its receipts and report, so it waits up to CAMPAIGN_CONTINUATION_LEASE_WAIT_S (default 600 s); any other run
    is refused at once, naming the running one."""
    if CONTINUATION_TAG not in (flow_run.tags or []):
        return 0.0
    return float(positive_setting("CAMPAIGN_CONTINUATION_LEASE_WAIT_S", LEASE_WAIT_S))


def waiting_for(holder: LockHolder | None) -> None:
    get_run_logger().warning("the campaign's lease is held by %s: this continuation waits for it (at most %.0f s, "
                             "CAMPAIGN_CONTINUATION_LEASE_WAIT_S)", holder.describe() if holder else "another run",
                             lease_wait_s())


MAX_EARLY_S = 120.0  # Prefect's runners and workers start a scheduled run up to 10 s early (their prefetch)


def wait_for_scheduled_start() -> None:
    """A run started before its scheduled time (a runner's prefetch) waits for it: a continuation scheduled at the
    window's opening must not find the window still closed. At most MAX_EARLY_S."""
    scheduled = flow_run.scheduled_start_time
    if scheduled is None:
        return
    early = (scheduled - datetime.now(UTC)).total_seconds()
    if 0 < early <= MAX_EARLY_S:
        get_run_logger().info("started %.1f s before its scheduled time: waiting for it", early)
        time.sleep(early)
