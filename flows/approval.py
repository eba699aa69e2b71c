"""Approval before sending, in the Prefect UI: after the estimate, a campaign that needs one waits for a person's
answer through Prefect's run input (a form: approve or reject, name, comment), shown under a description with the
estimate, the rejects and a masked sample of the rendered messages (pipeline/dispatch/approvals.py).

A run from a deployment is suspended (`suspend_flow_run`: its process ends; resuming runs the flow again from the
start, which is safe: preparation is repeated, queueing adds nothing, and the same key returns the answer given);
a run outside one (`campaign run`, tests) is paused in its process (`pause_flow_run`), as a suspended run has no
deployment to be started again from. Approve → dispatch; reject or timeout → nothing sent, the run fails with the
reason, recorded with the campaign. An answer the spec does not allow (an approver not listed; the person who
started the run, unless self-approval is allowed) is refused, recorded, and asked again (at most MAX_ASKS).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from prefect import get_client, get_run_logger
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound
from prefect.flow_runs import pause_flow_run, resume_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled

from pipeline import store
from pipeline.dispatch.approvals import (
    approval_brief,
    approved_through,
    decide,
    open_request,
    pending_request,
    queued_extent,
    queued_sample,
    standing_refusal,
)
from pipeline.render.prepare import Prepared
from pipeline.spec import CampaignSpec, controls

MAX_ASKS = 5


class ApprovalInput(RunInput):
    decision: Literal["approve", "reject"] = "reject"
    name: str = ""
    comment: str = ""


class CampaignNotApproved(RuntimeError):
    """Rejected, timed out, or never validly approved: nothing was sent."""


def run_origin(given: str | None) -> str:
    """manual | scheduled | upload: the flow's `origin` parameter when given, else a deployment schedule's run."""
    if given:
        return given
    if flow_run.id and deployment.id:
        with get_client(sync_client=True) as client:
            if client.read_flow_run(flow_run.id).auto_scheduled:
                return "scheduled"
    return "manual"


def needs_approval(spec: CampaignSpec, origin: str, settings: dict[str, Any]) -> bool:
    if spec.approval.required is not None:
        return spec.approval.required
    return origin in ((settings.get("approval") or {}).get("required_for") or [])


def refusal(answer: ApprovalInput, spec: CampaignSpec, started_by: str | None, settings: dict[str, Any]) -> str | None:
    name = answer.name.strip()
    defaults = settings.get("approval") or {}
    approvers = spec.approval.approvers or list(defaults.get("approvers") or [])
    allow_self = spec.approval.allow_self_approval
    allow_self = bool(defaults.get("allow_self_approval")) if allow_self is None else allow_self
    if not name:
        return "the approver's name is missing"
    if approvers and name not in approvers:
        return f"{name} is not one of the approvers ({', '.join(approvers)})"
    if answer.decision == "approve" and not allow_self:
        for role, who in (("started this run", started_by), ("uploaded this audience", spec.uploaded_by)):
            if who and name.casefold() == who.strip().casefold():
                return f"{name} {role} and may not approve it (self-approval is not allowed)"
    return None


def await_approval(spec: CampaignSpec, campaign_id: str, database: str, estimate: dict[str, Any], prepared: Prepared,
                   *, origin: str | None, started_by: str | None,
                   generation: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Returns the approval (None when none is needed or one already covers the queued messages); raises
    CampaignNotApproved on a rejection, a timeout or too many refused answers."""
    settings = controls()
    origin = run_origin(origin)
    with store.connect(database) as db:
        covered = approved_through(db, campaign_id)
        queued, top = queued_extent(db, campaign_id)
        waiting = pending_request(db, campaign_id)
        standing = standing_refusal(db, campaign_id)
    if queued == 0:
        return None  # nothing to send
    if waiting is not None and waiting["flow_run_id"] != str(flow_run.id):
        ended = _ended(waiting["flow_run_id"])
        if ended is None:
            # Another run waits for its answer (a suspended run holds no lease): this one must not send past it.
            raise CampaignNotApproved(
                f"campaign {campaign_id} waits for an approval in flow run {waiting['flow_run_id']}: answer it in the "
                f"Prefect UI or with `campaign approve {campaign_id}` (or cancel that run); this run sent nothing")
        with store.connect(database) as db:  # its run is gone: the request can no longer be answered
            decide(db, waiting["request_id"], "expired", approver=None,
                   comment=f"its flow run ended ({ended}) without an answer")
            standing = standing_refusal(db, campaign_id)
    if standing is not None and standing["decided_at"] is None and standing["flow_run_id"] != str(flow_run.id):
        _record_expiry(database, standing)
    if standing is None:
        if not needs_approval(spec, origin, settings) or (covered is not None and covered >= top):
            return None  # not needed, or approved already (a continuation, a resumed run)
    defaults = settings.get("approval") or {}
    timeout = int(spec.approval.timeout_s or defaults.get("timeout_s") or 86_400)
    logger = get_run_logger()
    # A rejection (or an unanswered request) stands until someone approves: whatever started this run.
    earlier = None if standing is None else _earlier(standing)
    refused: str | None = None
    # Prefect suspends only a deployment's own run, not a subflow (a campaign started by another flow's
    # run_deployment as its subflow): that one is paused in its process instead.
    suspend = deployment.id is not None and flow_run.parent_flow_run_id is None
    sample_size = int(defaults.get("sample_size") or 5)
    with store.connect(database) as db:  # what the outbox will send, per variant and language (queued above)
        sample = queued_sample(db, spec, campaign_id, prepared.accepted, sample_size=sample_size)
    for ask in range(1, MAX_ASKS + 1):
        request_id = f"{flow_run.id}:{ask}"
        with store.connect(database) as db:
            request = open_request(db, campaign_id, request_id, flow_run_id=str(flow_run.id), origin=origin,
                                   requested_by=started_by, estimate_usd=float(estimate["total_usd"]),
                                   timeout_s=timeout)
        brief = approval_brief(prepared.counts, prepared.accepted, estimate, refused=refused, earlier=earlier,
                               sample_size=sample_size, generation=generation, sample=sample)
        form = ApprovalInput.with_initial_data(description=brief)
        logger.warning("campaign %s waits for approval (%d messages, USD %.4f): approve or reject in the Prefect UI "
                       "or with `campaign approve %s`", campaign_id, request.messages, request.estimate_usd,
                       campaign_id)
        try:
            if suspend:
                answer = suspend_flow_run(wait_for_input=form, timeout=timeout, key=f"approval-{ask}")
            else:
                answer = pause_flow_run(wait_for_input=form, timeout=timeout, key=f"approval-{ask}", poll_interval=1)
        except FlowPauseTimeout:
            with store.connect(database) as db:
                decide(db, request_id, "expired", approver=None, comment=f"no answer within {timeout} s")
            raise CampaignNotApproved(f"no approval within {timeout} s: nothing was sent") from None
        refused = refusal(answer, spec, started_by, settings)
        with store.connect(database) as db:
            if refused:
                decide(db, request_id, "refused", approver=answer.name.strip() or None, comment=refused)
                logger.error("approval refused: %s; asking again", refused)
                continue
            decision = "approved" if answer.decision == "approve" else "rejected"
            decide(db, request_id, decision, approver=answer.name.strip(), comment=answer.comment)
        if decision == "rejected":
            raise CampaignNotApproved(f"rejected by {answer.name.strip()}: {answer.comment or 'no comment'}; "
                                      "nothing was sent")
        logger.info("approved by %s", answer.name.strip())
        return {"approver": answer.name.strip(), "comment": answer.comment, "request_id": request_id}
    raise CampaignNotApproved(f"{MAX_ASKS} answers refused (last: {refused}); nothing was sent")


def _record_expiry(database: str, request: dict[str, Any]) -> None:
    """A request past its time that nobody answered, seen by a later run: recorded as expired, and its run, if it
    still waits (Prefect ends a suspended run only when someone resumes it) ended: cancelled, which Prefect turns
    into its own Failed state ("paused and never resumed") for an overdue pause."""
    why = f"no answer by {store.utc(request['expires_at']):%Y-%m-%d %H:%M:%S} UTC"
    with store.connect(database) as db:
        decide(db, request["request_id"], "expired", approver=None, comment=why)
    if _ended(request["flow_run_id"]) is None:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(request["flow_run_id"], Cancelled(message=f"approval request expired: {why}"),
                                      force=True)
    get_run_logger().warning("approval request %s expired (%s)", request["request_id"], why)


def _ended(flow_run_id: str | None) -> str | None:
    """The final state's name of a flow run that ended (or cannot be found), else None: it may still be answered."""
    if not flow_run_id:
        return "no flow run"
    with get_client(sync_client=True) as client:
        try:
            state = client.read_flow_run(flow_run_id).state
        except ObjectNotFound:
            return "not found"
    return state.name if state is None or state.is_final() else None


def _earlier(outcome: dict[str, Any]) -> str:
    when = outcome["decided_at"] or outcome["expires_at"]
    said = f" ({outcome['comment']})" if outcome.get("comment") else ""
    who = f" by {outcome['approver']}" if outcome.get("approver") else ""
    return (f"this campaign was {outcome['decision']}{who}{said} at {store.utc(when):%Y-%m-%d %H:%M} UTC; "
            "nothing is sent until someone approves")


def approve_from_cli(campaign_id: str, database: str | None, *, name: str, comment: str, reject: bool) -> str:
    """`campaign approve ID`: answers the campaign's waiting request as the UI form would; what happened."""
    with store.connect(store.database_url(database)) as db:
        waiting = pending_request(db, campaign_id)
    if waiting is None:
        raise LookupError(f"campaign {campaign_id}: no approval is waiting (or it expired)")
    _wait_until_paused(waiting["flow_run_id"], float((controls().get("approval") or {}).get("answer_wait_s") or 30))
    resume_flow_run(waiting["flow_run_id"], run_input={
        "decision": "reject" if reject else "approve", "name": name, "comment": comment})
    return f"campaign {campaign_id}: {'rejection' if reject else 'approval'} sent to flow run {waiting['flow_run_id']}"


def _wait_until_paused(flow_run_id: str, wait_s: float) -> None:
    """The request is written just before the run pauses: an answer given in between waits for the pause (at most
    wait_s), rather than failing while the run goes on to wait for an answer that was already given."""
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_paused():
                return
            if state is not None and state.is_final():
                raise LookupError(f"flow run {flow_run_id} ended ({state.name}) before it could be answered")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"flow run {flow_run_id} did not reach its pause within {wait_s:g} s "
                                   f"(now {state.name if state else 'no state'}); try again")
            time.sleep(0.2)
