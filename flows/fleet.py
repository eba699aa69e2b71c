"""A campaign's dispatch spread over Prefect workers: one `dispatch-senders` flow run per group of senders.

The campaign flow (flows/campaign.py) splits its senders into groups and starts one run of the `dispatch-senders`
deployment per group (`run_deployment`, shown as subflow runs of the campaign); whichever worker picks a run, on this
machine or another, dispatches that group from the shared store (PostgreSQL). Each sender is sent for only by the
dispatcher holding its lease (pipeline/dispatch/locks.py), so a number's rate holds and nothing goes twice however
many runs there are. A group run that dies (its process or machine: its leases stop being renewed and expire, or
Prefect marks it Crashed) is replaced by a new run of the same group, which reconciles what the dead one left in
flight and sends the rest. The campaign flow waits for every group, adds up their results (each run publishes its
own as a table artifact, readable through the API from anywhere), then collects receipts and reports as before.
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
from pipeline.dispatch.ledger import Ledger
from pipeline.dispatch.locks import SenderLeases, sender_lease_name
from pipeline.dispatch.operations import is_paused
from pipeline.dispatch.policy import DispatchResult, Guards
from pipeline.receipts.ingest import ingest_spool
from pipeline.spec import load_spec

DISPATCH_DEPLOYMENT = "dispatch-senders/dispatch-senders"
RESULT_DESCRIPTION = "dispatch-senders result"
REPLACEMENTS = 3  # new runs of one group, at most, after runs of it died
POLL_S = 2.0


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
                ingest_spool(db, spool_dir)

        logger.info("group %d: dispatching %d sender(s) of campaign %s", group, len(senders), campaign_id)
        result = asyncio.run(dispatch_campaign(
            db, campaign_id, channels, rate=spec.rate_limit, retry=spec.retry, guards=guards, reconcile=reconcile,
            timeout_s=spec.provider.timeout_s, senders=senders, leases=leases,
            on_progress=lambda info: logger.info(
                "group %d: %d sent, %d failed of %d (%.0f/s)", group, info["sent"], info["failed"], info["total"],
                info["per_s"]),
        ))
    summary = result_dict(result)
    create_table_artifact([{**summary, "errors": json.dumps(summary["errors"]), "states": json.dumps(
        summary["states"]), "group": group, "senders": ",".join(senders)}], description=RESULT_DESCRIPTION)
    if result.stopped_reason:
        logger.error("group %d stopped: %s; unsent messages stay queued", group, result.stopped_reason)
    return summary


def result_dict(result: DispatchResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    data.pop("last_progress")
    return data


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
    return total


def dispatch_in_groups(
    spec_path: str, campaign_id: str, senders: list[str], groups: int, *, database: str, spool_dir: str | None,
    provider_base_url: str | None, deployment: str = DISPATCH_DEPLOYMENT, lease_ttl_s: float | None = None,
    lease_renew_s: float | None = None, work_queue_name: str | None = None, poll_s: float = POLL_S,
) -> DispatchResult:
    """Starts one `deployment` run per group of `senders` (subflow runs of the calling flow), replaces any that
    die, waits for all of them, and adds up their results. Meanwhile it ingests the webhook spool `spool_dir` (this
    machine's receivers') into the store every `poll_s`: the group runs, wherever they run, reconcile from the store."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.states import Crashed

    logger = get_run_logger()
    parts = split_senders(senders, groups)

    def start(index: int, attempt: int) -> UUID:
        run = run_deployment(
            deployment, timeout=0, as_subflow=True, work_queue_name=work_queue_name,
            flow_run_name=f"{campaign_id}-group-{index}" + (f"-replacement-{attempt}" if attempt else ""),
            parameters={"spec_path": spec_path, "campaign_id": campaign_id, "senders": parts[index], "group": index,
                        "database": database, "spool_dir": None, "provider_base_url": provider_base_url,
                        "lease_ttl_s": lease_ttl_s, "lease_renew_s": lease_renew_s},
        )
        return run.id

    runs = {i: start(i, 0) for i in range(len(parts))}
    logger.info("dispatch in %d groups of senders: %s", len(parts), "; ".join(",".join(p) for p in parts))
    replaced = dict.fromkeys(runs, 0)
    results: dict[int, dict[str, Any]] = {}
    with store.connect(database) as db, get_client(sync_client=True) as client:
        while len(results) < len(parts):
            for index, run_id in runs.items():
                if index in results:
                    continue
                state = client.read_flow_run(run_id).state
                kind = state.type if state is not None else None
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
            if len(results) < len(parts):
                if spool_dir and Path(spool_dir).is_dir():
                    ingest_spool(db, spool_dir)
                time.sleep(poll_s)
        states = Ledger(db, campaign_id).counts()
    return add_up([results[i] for i in sorted(results)], states)


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
            row["errors"], row["states"] = json.loads(row["errors"]), json.loads(row["states"])
            return row
    raise RuntimeError(f"dispatch group run {run_id} completed without publishing its result")
