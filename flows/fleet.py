"""A campaign's dispatch spread over Prefect workers: one `dispatch-senders` flow run per group of senders.

The campaign flow (flows/campaign.py) splits its senders into groups and starts one run of the `dispatch-senders`
deployment per group (`run_deployment`, shown as subflow runs of the campaign); whichever worker picks a run, on this
machine or another, dispatches that group from the shared store (PostgreSQL). Each sender is sent for only by the
dispatcher holding its lease (pipeline/dispatch/locks.py), so a number's rate holds and nothing goes twice however
many runs there are. A group run that dies (its process or machine: its leases stop being renewed and expire, or
Prefect marks it Crashed) is replaced by a new run of the same group, which reconciles what the dead one left in
flight and sends the rest. The campaign flow waits for every group, adds up their results (each run publishes its
own as a table artifact, readable through the API from anywhere), then collects receipts and reports as before.
Meanwhile each group run records its progress in the store (pipeline/dispatch/group_status.py: `campaign status`
shows the sum). A group run that no worker starts within CAMPAIGN_GROUP_START_TIMEOUT_S is cancelled and the
campaign fails naming the group and its work pool: nothing of that group was sent, its messages stay queued.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from flows.logging_mask import install_log_masking
from pipeline import store
from pipeline.channels import channel_for
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.group_status import record_group_status, start_groups
from pipeline.dispatch.ledger import Ledger
from pipeline.dispatch.locks import SenderLeases, sender_lease_name
from pipeline.dispatch.operations import is_paused
from pipeline.dispatch.policy import DispatchResult, Guards
from pipeline.settings import seconds_setting
from pipeline.spec import load_spec

DISPATCH_DEPLOYMENT = "dispatch-senders/dispatch-senders"
RESULT_DESCRIPTION = "dispatch-senders result"
REPLACEMENTS = 3  # new runs of one group, at most, after runs of it died
POLL_S = 2.0
# A group run Scheduled or Pending this long (no worker took it, or it never started) is cancelled: Prefect's
# workers poll every 10-15 s and start a process in seconds, so minutes mean no worker serves the pool.
GROUP_START_TIMEOUT_S = 300.0


def group_start_timeout_s() -> float:
    return seconds_setting("CAMPAIGN_GROUP_START_TIMEOUT_S", GROUP_START_TIMEOUT_S)


@flow(name="dispatch-senders", log_prints=False, retries=2, retry_delay_seconds=10)
def dispatch_senders_flow(
    spec_path: str,
    campaign_id: str,
    senders: list[str],
    group: int = 0,
    database: str | None = None,
    spool_dir: str | None = None,
    provider_base_url: str | None = None,
    lease_ttl_s: float | None = None,
    lease_renew_s: float | None = None,
) -> dict[str, Any]:
    """Dispatches the queued messages of `senders` (one group of the campaign's senders) from the shared store.
    `spool_dir`: a webhook spool this machine reads, ingested to reconcile sends (without one, the receipts the
    collector has put in the store are used). Retries (a store away for a moment) resume without resending."""
    install_log_masking()
    spec = load_spec(spec_path)
    logger = get_run_logger()
    db_url = store.database_url(database)
    channels = {sender: channel_for(spec, base_url=provider_base_url, sender=sender) for sender in senders}
    with store.connect(db_url) as db:
        guards = Guards(
            budget_usd=spec.budget_usd, send_window=spec.send_window, pause_check=lambda: is_paused(db, campaign_id),
            messaging_limit=spec.messaging_limit if spec.channel == "whatsapp" else None,
        )
        leases = SenderLeases(db, campaign_id, ttl_s=lease_ttl_s, renew_s=lease_renew_s,
                              flow_run_id=str(flow_run.id) if flow_run.id else None, flow_run_name=flow_run.name)

        def reconcile() -> None:
            if spool_dir and Path(spool_dir).is_dir():
                from pipeline.receipts.ingest import ingest_spool  # DuckDB and Arrow: only for a run given a spool

                ingest_spool(db, spool_dir)

        logger.info("group %d: dispatching %d sender(s) of campaign %s", group, len(senders), campaign_id)
        result = asyncio.run(dispatch_campaign(
            db, campaign_id, channels, rate=spec.rate_limit, retry=spec.retry, guards=guards, reconcile=reconcile,
            timeout_s=spec.provider.timeout_s, senders=senders, leases=leases,
            on_status=lambda info: record_group_status(db, campaign_id, group, info),
            on_progress=lambda info: logger.info(
                "group %d: %d sent, %d failed of %d (%.0f/s)", group, info["sent"], info["failed"], info["total"],
                info["per_s"]),
        ))
    summary = result_dict(result)
    create_table_artifact([artifact_row(summary) | {"group": group, "senders": ",".join(senders)}],
                          description=RESULT_DESCRIPTION)
    if result.stopped_reason:
        logger.error("group %d stopped: %s; unsent messages stay queued", group, result.stopped_reason)
    return summary


def result_dict(result: DispatchResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    data.pop("last_progress")
    return data


# Dicts, as JSON text in the artifact's one-row table.
JSON_FIELDS = ("errors", "states", "lanes_paused", "busiest_second")


def artifact_row(summary: dict[str, Any]) -> dict[str, Any]:
    """A group's result as its table artifact's row: dicts as JSON, the continuation time as ISO text."""
    at = summary.get("continue_at")
    return {**summary, **{k: json.dumps(summary.get(k) or {}) for k in JSON_FIELDS},
            "continue_at": at.isoformat() if isinstance(at, datetime) else at}


def split_senders(senders: list[str], groups: int) -> list[list[str]]:
    """Senders in `groups` groups (fewer when there are fewer senders), dealt in turn: sizes differ by one at most."""
    groups = max(1, min(groups, len(senders)))
    return [senders[i::groups] for i in range(groups)]


def add_up(results: list[dict[str, Any]], states: dict[str, int]) -> DispatchResult:
    """One result for the campaign from its groups' results; the states are the campaign's, recounted."""
    total = DispatchResult(states=states)
    for part in results:
        for name in ("total", "sent", "failed", "deferred", "retries", "throttled", "reconciled_sent", "unknown",
                     "resent_after_timeout"):
            setattr(total, name, getattr(total, name) + int(part.get(name) or 0))
        total.seconds = max(total.seconds, float(part.get("seconds") or 0.0))
        for code, n in (part.get("errors") or {}).items():
            total.errors[code] = total.errors.get(code, 0) + int(n)
        total.stopped_reason = total.stopped_reason or part.get("stopped_reason")
        total.lanes_paused.update(part.get("lanes_paused") or {})
        for sender, n in (part.get("busiest_second") or {}).items():  # a sender replaced mid-run: its worst run
            total.busiest_second[sender] = max(total.busiest_second.get(sender, 0), int(n))
        # What waits, and the earliest time some of it may go: the continuation dispatches every group again,
        # and a group still waiting then schedules the next one.
        total.waiting += int(part.get("waiting") or 0)
        at = part.get("continue_at")
        at = datetime.fromisoformat(at) if isinstance(at, str) else at
        if at is not None and (total.continue_at is None or at < total.continue_at):
            total.continue_at = at
    return total


def dispatch_in_groups(
    spec_path: str, campaign_id: str, senders: list[str], groups: int, *, database: str, spool_dir: str | None,
    provider_base_url: str | None, deployment: str = DISPATCH_DEPLOYMENT, lease_ttl_s: float | None = None,
    lease_renew_s: float | None = None, work_queue_name: str | None = None, poll_s: float = POLL_S,
    start_timeout_s: float | None = None,
) -> DispatchResult:
    """Starts one `deployment` run per group of `senders` (subflow runs of the calling flow), replaces any that
    die, waits for all of them, and adds up their results. Meanwhile it ingests the webhook spool `spool_dir` (this
    machine's receivers') into the store every `poll_s`: the group runs, wherever they run, reconcile from the store.
    A run not started within `start_timeout_s` (default: CAMPAIGN_GROUP_START_TIMEOUT_S) is cancelled; once the
    other groups are done, GroupsNotStarted names it and its work pool."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.states import Cancelled, Crashed

    from pipeline.receipts.ingest import ingest_spool

    logger = get_run_logger()
    parts = split_senders(senders, groups)
    start_timeout_s = start_timeout_s or group_start_timeout_s()
    started_at: dict[int, float] = {}

    def start(index: int, attempt: int) -> UUID:
        run = run_deployment(
            deployment, timeout=0, as_subflow=True, work_queue_name=work_queue_name,
            flow_run_name=f"{campaign_id}-group-{index}" + (f"-replacement-{attempt}" if attempt else ""),
            parameters={"spec_path": spec_path, "campaign_id": campaign_id, "senders": parts[index], "group": index,
                        "database": database, "spool_dir": None, "provider_base_url": provider_base_url,
                        "lease_ttl_s": lease_ttl_s, "lease_renew_s": lease_renew_s},
        )
        started_at[index] = time.monotonic()
        return run.id

    with store.connect(database) as db:  # `campaign status` shows the groups' sum from now on
        start_groups(db, campaign_id, len(parts))
    runs = {i: start(i, 0) for i in range(len(parts))}
    logger.info("dispatch in %d groups of senders: %s", len(parts), "; ".join(",".join(p) for p in parts))
    replaced = dict.fromkeys(runs, 0)
    results: dict[int, dict[str, Any]] = {}
    not_started: dict[int, str] = {}  # group -> why: cancelled, never started by a worker
    with store.connect(database) as db, get_client(sync_client=True) as client:
        while len(results) + len(not_started) < len(parts):
            for index, run_id in runs.items():
                if index in results or index in not_started:
                    continue
                found = client.read_flow_run(run_id)
                state = found.state
                kind = state.type if state is not None else None
                waited = time.monotonic() - started_at[index]
                if kind in (StateType.SCHEDULED, StateType.PENDING) and waited > start_timeout_s:
                    why = (f"dispatch group {index} (flow run {found.name}) was not started within "
                           f"{start_timeout_s:.0f} s (CAMPAIGN_GROUP_START_TIMEOUT_S): no worker took it from work "
                           f"pool '{found.work_pool_name}' (queue '{found.work_queue_name}'); start one "
                           f"(`prefect worker start --pool {found.work_pool_name}`) and resume the campaign")
                    # Not forced: a worker that took it meanwhile wins, and the run is waited for as any other.
                    client.set_flow_run_state(run_id, Cancelled(message=why))
                    if getattr(client.read_flow_run(run_id).state, "type", None) == StateType.CANCELLED:
                        not_started[index] = why
                        logger.error("%s; its messages stay queued", why)
                    continue
                if kind == StateType.COMPLETED:
                    results[index] = read_result(client, run_id)
                    continue
                if kind == StateType.CANCELLED:
                    raise RuntimeError(f"dispatch group {index} (flow run {run_id}) was cancelled; its unsent "
                                       "messages stay queued")
                expired = kind == StateType.RUNNING and leases_expired(db, campaign_id, parts[index], run_id)
                if kind not in (StateType.CRASHED, StateType.FAILED) and not expired:
                    continue
                if replaced[index] >= REPLACEMENTS:
                    raise RuntimeError(f"dispatch group {index} died {replaced[index] + 1} times; last: flow run "
                                       f"{run_id} ({state.name if state else 'no state'})")
                why = "stopped renewing its sender leases" if expired else f"ended {state.name}"
                if expired:  # its process or machine is gone: nobody is left to report it
                    client.set_flow_run_state(run_id, Crashed(message="its sender leases expired: the run's process "
                                                              "died; a new run of its group replaces it"), force=True)
                replaced[index] += 1
                runs[index] = start(index, replaced[index])
                logger.warning("dispatch group %d: flow run %s %s; replaced by %s", index, run_id, why, runs[index])
            if len(results) + len(not_started) < len(parts):
                if spool_dir and Path(spool_dir).is_dir():
                    ingest_spool(db, spool_dir)
                time.sleep(poll_s)
        states = Ledger(db, campaign_id).counts()
    if not_started:  # the other groups finished what they could; the rest waits for a resume with a worker
        raise GroupsNotStarted("; ".join(not_started[i] for i in sorted(not_started)) + "; their messages stay "
                               f"queued (campaign states now: {states})")
    return add_up([results[i] for i in sorted(results)], states)


class GroupsNotStarted(RuntimeError):
    """A group run no worker started in time: cancelled, nothing of its group sent."""


def leases_expired(db: store.Store, campaign_id: str, senders: list[str], run_id: UUID) -> bool:
    """True when the run held sender leases and let one expire (it stopped renewing: its process died)."""
    names = [sender_lease_name(campaign_id, s) for s in senders]
    return bool(db.scalar("SELECT count(*) FROM leases WHERE name IN :names AND flow_run_id = :run "
                          "AND expires_at < :now", names=names, run=str(run_id), now=datetime.now(UTC)))


def read_result(client: Any, run_id: UUID) -> dict[str, Any]:
    """What a completed group run published (its table artifact), through the API."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
        any_=[run_id])))
    for artifact in artifacts:
        if artifact.description == RESULT_DESCRIPTION:
            data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
            row = dict(data[0])
            for key in JSON_FIELDS:
                row[key] = json.loads(row.get(key) or "{}")
            return row
    raise RuntimeError(f"dispatch group run {run_id} completed without publishing its result")
