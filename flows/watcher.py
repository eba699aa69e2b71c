"""The audience drop folder watcher (a deployment running every minute): each new CSV in `audiences/inbox/`
is claimed, checked (spec + preparation), and started as its own campaign; the file ends in `processed/` or
`failed/` with a reason file beside it. The folder logic is pipeline/upload/inbox.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.logging_mask import install_log_masking
from pipeline.audience.load import AudienceError
from pipeline.audience.policy import PolicyError, blocked_policy
from pipeline.render.prepare import prepare_audience
from pipeline.render.templates import TemplateProblem
from pipeline.spec import SpecError
from pipeline.upload import inbox


class NoEligibleRecipients(ValueError):
    """Every row of the upload was rejected: there is no campaign to start."""


# Bad input: the upload goes to failed/ with the message. Anything else is our bug: the upload goes to failed/
# too (it never stays half-claimed) and the watcher run fails, so the bug shows in the UI.
REJECTED = (SpecError, AudienceError, PolicyError, TemplateProblem, NoEligibleRecipients)


@task(name="check-upload", cache_policy=NO_CACHE)
def check_upload(claimed: inbox.Claimed, default_spec: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The upload's spec is valid and its audience prepares with at least one eligible recipient. Returns the
    spec (as data, the audience named relative to the spec file so both can move together) and the counts."""
    spec, data = inbox.resolve_spec(claimed, default_spec, Path(claimed.csv.name))
    prepared = prepare_audience(
        claimed.csv, channel=spec.channel, category=spec.template.category, template=spec.template,
        variables=spec.variables, policy=blocked_policy(spec.channel, spec.blocked_countries),
    )
    counts = {"rows_read": prepared.rows_read, "accepted": prepared.accepted.height,
              "rejected": prepared.rejects.height, "rejects_by_reason": prepared.counts}
    if prepared.accepted.height == 0:
        raise NoEligibleRecipients(f"{claimed.original_name}: no eligible recipient in {prepared.rows_read} rows "
                         f"(rejects by reason: {prepared.counts})")
    return data, counts


@flow(name="inbox-watcher", log_prints=False)
def inbox_watcher_flow(
    audiences_dir: str = "audiences",
    default_spec: str = "campaigns/inbox-default.yaml",
    database: str | None = None,
    spool_dir: str = "spool",
    reports_dir: str = "reports",
    provider_base_url: str | None = None,
    campaign_deployment: str | None = None,
    settle_s: float = 2.0,
    max_files: int = 10,
) -> list[dict[str, Any]]:
    """Picks up to `max_files` uploads. With `campaign_deployment` ("campaign/inbox-campaign"), each campaign
    starts as its own deployment run and this run returns at once; without it, each runs here as a subflow."""
    install_log_masking()
    logger = get_run_logger()
    folders = inbox.Folders.under(audiences_dir)
    results = []
    for upload in inbox.ready_uploads(folders.inbox, settle_s=settle_s)[:max_files]:
        claimed = inbox.claim(upload, folders)
        if claimed is None:
            continue  # another watcher run took it
        results.append(_handle(claimed, folders, Path(default_spec), {
            "database": database, "spool_dir": spool_dir, "reports_dir": reports_dir,
            "provider_base_url": provider_base_url,
        }, campaign_deployment))
        logger.info("%s -> %s: %s", claimed.original_name, results[-1]["outcome"], results[-1]["reason"] or "started")
    if not results:
        logger.info("no new uploads in %s", folders.inbox)
    return results


def _handle(
    claimed: inbox.Claimed, folders: inbox.Folders, default_spec: Path, run_args: dict[str, Any],
    deployment: str | None,
) -> dict[str, Any]:
    result = {"file": claimed.original_name, "campaign_id": claimed.campaign_id}
    if not claimed.supported:
        reason = f"not a CSV file: {claimed.original_name}"
        inbox.finish(claimed, folders, "failed", reason=reason)
        return {**result, "outcome": "failed", "reason": reason}
    state = check_upload(claimed, default_spec, return_state=True)
    if state.is_failed():
        exc = _exception(state)
        if not isinstance(exc, REJECTED):
            inbox.finish(claimed, folders, "failed", reason=f"internal error: {exc!r}", details={"stage": "check"})
            raise exc
        inbox.finish(claimed, folders, "failed", reason=str(exc), details={"stage": "check"})
        return {**result, "outcome": "failed", "reason": str(exc)}
    spec_data, counts = state.result()
    # In processed/ before the campaign starts: its spec names the CSV beside it.
    moved = inbox.finish(claimed, folders, "started", spec_data=spec_data, details=counts)
    spec_path = moved.csv.with_suffix(".yaml")
    # origin "upload": the team's controls decide whether it waits for an approval (on by default for uploads).
    params = {"spec_path": str(spec_path), "campaign_id": claimed.campaign_id, **run_args, "origin": "upload",
              "started_by": spec_data.get("uploaded_by")}
    if deployment:
        from prefect.deployments import run_deployment

        try:
            # Not a subflow of this watcher run: a campaign run of its own, which Prefect lets suspend while it
            # waits for its approval (a subflow cannot be suspended).
            run = run_deployment(deployment, parameters=params, timeout=0, flow_run_name=claimed.campaign_id,
                                 idempotency_key=claimed.campaign_id, as_subflow=False)
        except Exception as exc:  # no such deployment, API down: nothing was sent
            reason = f"could not start the campaign through deployment {deployment!r}: {exc}"
            inbox.finish(moved, folders, "failed", reason=reason, spec_data=spec_data, details=counts)
            return {**result, "outcome": "failed", "reason": reason}
        details = {**counts, "flow_run_id": str(run.id), "deployment": deployment}
        inbox.finish(moved, folders, "started", spec_data=spec_data, details=details)
        return {**result, "outcome": "started", "reason": None, "flow_run_id": str(run.id)}

    from flows.campaign import campaign_flow

    run_state = campaign_flow(**params, return_state=True)
    if run_state.is_failed() or run_state.is_crashed():
        reason = f"campaign run {run_state.name}: {run_state.message}"
        inbox.finish(moved, folders, "failed", reason=reason, spec_data=spec_data, details=counts)
        return {**result, "outcome": "failed", "reason": reason}
    summary = run_state.result()
    details = {**counts, "sent": summary.get("sent"), "report_html": summary.get("report_html")}
    inbox.finish(moved, folders, "started", spec_data=spec_data, details=details)
    return {**result, "outcome": "started", "reason": None}


def _exception(state: Any) -> BaseException:
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001 - the task's own exception, re-raised by Prefect
        return exc
    return RuntimeError(f"task state {state.name} without an exception")
