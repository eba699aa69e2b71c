"""The campaign flow: a table of contents over pipeline/ stages, one Prefect task per stage."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.approval import await_approval
from flows.artifacts import artifact_key, publish_rejects, publish_report
from flows.continuation import lease_wait_s, schedule_continuation, wait_for_scheduled_start, waiting_for
from flows.fleet import DISPATCH_DEPLOYMENT, dispatch_in_groups, result_dict
from flows.logging_mask import install_log_masking
from flows.personalise import personalise_task
from flows.prepare_parallel import audience_preparer
from flows.reapproval import record_template_wait, settle_template_wait
from pipeline import store
from pipeline.audience.timezones import recipient_timezones
from pipeline.channels import channel_for
from pipeline.channels.template_rules import checked_spec
from pipeline.channels.template_sync import registry_target, sync
from pipeline.channels.whatsapp_media import with_uploaded_media
from pipeline.costs.costing import estimate_cost, load_prices
from pipeline.costs.report import write_report
from pipeline.costs.summary import campaign_summary
from pipeline.dispatch.budget import check_budget, price_queued_messages
from pipeline.dispatch.cap_at_send import withhold_capped
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.experiment import queue_experiment
from pipeline.dispatch.fallback import fallback_leg_id, send_fallback
from pipeline.dispatch.locks import campaign_lock, cap_check_over
from pipeline.dispatch.operations import after_lease, is_paused, record_status
from pipeline.dispatch.outbox import enqueue_messages, register_campaign, store_preparation
from pipeline.dispatch.policy import DispatchResult, Guards
from pipeline.dispatch.preparation import prepare_campaign
from pipeline.dispatch.schedule import release_times
from pipeline.dispatch.template_resume import Target, dispatch_with_holds, is_template_stop
from pipeline.dispatch.template_watch import TemplateWatch, ends_not_completed
from pipeline.receipts.collect import collect_receipts
from pipeline.receipts.ingest import ingest_spool
from pipeline.render.personalise import stand_in
from pipeline.render.prepare import Prepared
from pipeline.render.prepare_ids import id_channel
from pipeline.spec import CampaignSpec, load_spec

install_log_masking()


@task(name="template check", cache_policy=NO_CACHE)
def template_check(spec: CampaignSpec, database: str, base_url: str | None) -> CampaignSpec:
    """Before anything is prepared or sent: the template as the provider knows it now (synced), refused with every
    reason when it cannot be sent; the spec as it will send (the provider's category). Specs that do not name their
    provider account (pipeline/channels/template_sync.py) pass unchecked."""
    target = registry_target(spec)
    if target is None:
        return spec
    with store.connect(database) as db:
        sync(db, spec, base_url=base_url)
        checked, notes = checked_spec(db, spec, *target)
    for note in notes:
        get_run_logger().warning("%s", note)
    if notes:
        create_markdown_artifact("\n".join(f"- {n}" for n in notes), key=artifact_key(spec.name, "template"))
    return checked


@task(name="prepare", cache_policy=NO_CACHE)
def prepare(spec: CampaignSpec, campaign_id: str, database: str, out_dir: Path) -> Prepared:
    # In this process, or in chunks on a Dask cluster when the spec's `prepare.runner` says so; test sends
    # prepare through the same call (pipeline/dispatch/preparation.py).
    return prepare_campaign(spec, campaign_id, database, out_dir, preparer=audience_preparer(spec))


@task(name="queue", cache_policy=NO_CACHE)
def queue(spec: CampaignSpec, campaign_id: str, prepared: Prepared, database: str, base_url: str | None) -> int:
    accepted = prepared.accepted
    timed = spec.send_window or spec.send_at
    if timed is not None and not id_channel(spec.channel, spec.provider.options):
        accepted = accepted.with_columns(recipient_timezones(accepted, timed.timezone_column))
        if spec.send_at is not None:  # each recipient's 10:00 in their own zone
            accepted = accepted.with_columns(release_times(accepted["timezone"], spec.send_at, datetime.now(UTC)))
    with store.connect(database) as db:
        if spec.template.header_media is not None and spec.template.header_media.file is not None:
            # The header file, uploaded once for the campaign: every message names the same media id.
            spec = with_uploaded_media(db, spec, campaign_id, access_token=spec.secret(
                "access_token", "WHATSAPP_ACCESS_TOKEN"),
                base_url=base_url or spec.provider.base_url or "https://graph.facebook.com")
        register_campaign(db, spec, campaign_id)
        if spec.experiment is not None:  # variants and a holdout: arms recorded, the holdout sent nothing
            return queue_experiment(db, spec, campaign_id, channel_for(spec, base_url=base_url), accepted,
                                    prepared.rejects, senders=spec.all_senders)
        store_preparation(db, campaign_id, prepared.accepted, prepared.rejects)
        return enqueue_messages(
            db, spec, campaign_id, channel_for(spec, base_url=base_url), accepted, senders=spec.all_senders
        )


@task(name="estimate", cache_policy=NO_CACHE)
def estimate(spec: CampaignSpec, campaign_id: str, database: str,
             generation: dict[str, Any] | None = None) -> dict[str, Any]:
    with store.connect(database) as db:
        load_prices(db, service_fee_usd=spec.service_fee_usd if spec.service_fee_usd is not None else 0.005)
        price_queued_messages(db, campaign_id)
        result = estimate_cost(db, campaign_id)
    totals = {"messages": result.messages, "total_usd": float(result.total_usd)}
    if generation is not None:  # the model's tokens are part of what the campaign costs
        totals |= {"generation_usd": generation["cost_usd"], "total_usd": totals["total_usd"] + generation["cost_usd"],
                   "tokens": generation["prompt_tokens"] + generation["completion_tokens"]}
    get_run_logger().info("estimate: %d messages, USD %.4f", totals["messages"], totals["total_usd"])
    # The budget guard refuses before anything is sent.
    check_budget(totals["total_usd"], spec.budget_usd, campaign_id)
    return totals


@task(name="frequency cap", cache_policy=NO_CACHE)
def cap_queued(spec: CampaignSpec, campaign_id: str, database: str) -> int:
    """The cap again on what is still queued, as the dispatch starts (pipeline/dispatch/cap_at_send.py): sends
    since the preparation (another campaign queued alongside this one) withhold this campaign's messages."""
    with store.connect(database) as db:
        withheld = withhold_capped(db, spec, campaign_id)
    if withheld.messages:
        get_run_logger().warning("frequency cap: %d queued message(s) withheld, not sent (%s)", withheld.messages,
                                 withheld.detail)
    else:
        get_run_logger().info("frequency cap: no queued message withheld")
    return withheld.messages


@task(name="dispatch", cache_policy=NO_CACHE)
def dispatch(
    spec: CampaignSpec, campaign_id: str, database: str, base_url: str | None, spool_dir: Path
) -> DispatchResult:
    logger = get_run_logger()
    progress_id = create_progress_artifact(
        0.0, key=artifact_key(campaign_id, "progress"), description="Messages dispatched"
    )

    def on_progress(info: dict[str, Any]) -> None:
        # Every few seconds, never per message: progress in the logs and one artifact updated.
        logger.info("dispatch: %(sent)d sent, %(failed)d failed of %(total)d (%(per_s).0f/s)", info)
        update_progress_artifact(
            progress_id, min(100.0, 100.0 * info["fraction"]),
            description=f"{info['sent']} sent, {info['failed']} failed of {info['total']} ({info['per_s']}/s)",
        )

    channels = {sender: channel_for(spec, base_url=base_url, sender=sender) for sender in spec.all_senders}
    with store.connect(database) as db:
        target = registry_target(spec)

        def one_pass() -> DispatchResult:
            watch, limit = None, spec.messaging_limit
            if target is not None:  # the template and numbers at the provider, watched while sending
                watch = TemplateWatch(db, provider=target[0], account=target[1], name=spec.template.name,
                                      language=spec.template.language, senders=spec.all_senders,
                                      ingest=lambda: ingest_spool(db, spool_dir), campaign_id=campaign_id)
                known = watch.messaging_limit()
                limit = limit if known is False else known  # the provider's tier, not the spec's, when it is known
            whatsapp = spec.channel == "whatsapp" or spec.provider.options.get("channel_type") == "whatsapp"
            guards = Guards(
                budget_usd=spec.budget_usd, send_window=spec.send_window,
                pause_check=lambda: is_paused(db, campaign_id), messaging_limit=limit if whatsapp else None,
                watch=watch,
            )
            return asyncio.run(dispatch_campaign(
                db, campaign_id, channels, rate=spec.rate_limit, retry=spec.retry, guards=guards,
                reconcile=lambda: ingest_spool(db, spool_dir), on_progress=on_progress,
                timeout_s=spec.provider.timeout_s, on_status=lambda info: record_status(db, campaign_id, info),
            ))

        if target is None:
            result = one_pass()
        else:  # a template stop holds for its re-approval, then continues (pipeline/dispatch/template_resume.py)
            result, resumed = dispatch_with_holds(
                db, one_pass, Target(*target, spec.template.name, spec.template.language),
                ingest=lambda: ingest_spool(db, spool_dir))
            if resumed:
                logger.warning("the template was APPROVED again: dispatch continued %d time(s) in this run", resumed)
    if result.stopped_reason:
        logger.error("dispatch stopped: %s; unsent messages stay queued", result.stopped_reason)
    for sender, reason in result.lanes_paused.items():
        logger.error("lane %s paused: %s", sender, reason)
    return result


@task(name="receipts", cache_policy=NO_CACHE)
def receipts(spec: CampaignSpec, campaign_id: str, database: str, spool_dir: Path) -> dict[str, int]:
    with store.connect(database) as db:
        return collect_receipts(db, spool_dir, campaign_id, wait_s=spec.receipts_wait_s)


@task(name="report", cache_policy=NO_CACHE)
def report(campaign_id: str, database: str, out_dir: Path, prepared: Prepared) -> dict[str, Any]:
    with store.connect(database) as db:
        summary = campaign_summary(db, campaign_id, rows_read=prepared.rows_read)
        files = write_report(db, campaign_id, out_dir, summary=summary)
        publish_report(db, campaign_id, summary, files)
    return {**summary, "report_html": str(files.html), "report_csv": str(files.csv)}


@task(name="fallback", cache_policy=NO_CACHE)
def fallback(
    spec: CampaignSpec, campaign_id: str, database: str, base_url: str | None, spool_dir: Path, reports_dir: Path
) -> dict[str, Any]:
    """The second channel for recipients the first could not reach, then its receipts and report."""
    leg_spec, leg_id = spec.fallback_leg(), fallback_leg_id(campaign_id)
    with store.connect(database) as db:
        counts = send_fallback(db, spec, campaign_id, channel_for(leg_spec, base_url=base_url),
                               reconcile=lambda: ingest_spool(db, spool_dir))
        if counts["sent"]:
            collect_receipts(db, spool_dir, leg_id, wait_s=leg_spec.receipts_wait_s)
        leg = campaign_summary(db, leg_id, rows_read=counts["selected"])
        files = write_report(db, leg_id, reports_dir / leg_id, summary=leg)
    get_run_logger().info(
        "fallback over %s: %d selected, %d sent", leg_spec.channel, counts["selected"], counts["sent"]
    )
    return {**leg, "channel": leg_spec.channel, "report_html": str(files.html)}


@flow(name="campaign", log_prints=False)
def campaign_flow(
    spec_path: str,
    campaign_id: str | None = None,
    database: str | None = None,
    spool_dir: str = "spool",
    reports_dir: str = "reports",
    provider_base_url: str | None = None,
    fallback_base_url: str | None = None,
    origin: str | None = None,
    started_by: str | None = None,
    dispatch_groups: int = 1,
    dispatch_deployment: str = DISPATCH_DEPLOYMENT,
) -> dict[str, Any]:
    """Load → validate → render → estimate → dispatch → receipts → report, for one campaign spec
    (and, when the spec names one, the fallback leg for recipients the first channel missed).
    `database`: the store's URL or SQLite path (default: CAMPAIGN_DATABASE_URL, else data/campaigns.sqlite).
    `origin` (manual | scheduled | upload) and `started_by` decide whether it waits for an approval and who may
    not give it (flows/approval.py).
    `dispatch_groups` > 1 on a PostgreSQL store: the senders are split into that many groups, each dispatched by a
    run of `dispatch_deployment` on whichever worker takes it (flows/fleet.py); otherwise in this process."""
    install_log_masking()  # again: a worker's subprocess may have reconfigured logging since import
    spec = load_spec(spec_path)
    campaign_id = campaign_id or spec.name
    wait_for_scheduled_start()
    db, out = store.database_url(database), Path(reports_dir) / campaign_id
    # One run per campaign, wherever it runs: a second one refuses here, naming the running one, before it
    # touches the store or the report folder (pipeline/dispatch/locks.py: a lease the holder renews).
    # A continuation due while the run before it still holds the lease waits for it (flows/continuation.py).
    with store.connect(db) as shared, campaign_lock(shared, campaign_id, flow_run_id=flow_run.id,
                                                    flow_run_name=flow_run.name, wait_s=lease_wait_s(),
                                                    on_wait=waiting_for):
        # `campaign resume / retry-failed / resend-unknown`: the flag cleared, failures re-queued, only now that this
        # run holds the campaign (a refused run changed nothing under the run that holds it). Unknown sends are
        # settled from the spool's receipts first (the dispatch's own ingest), then re-queued.
        for done in after_lease(shared, campaign_id, ingest=lambda: ingest_spool(shared, Path(spool_dir)),
                                grace_s=spec.retry.reconcile_grace_s):
            get_run_logger().info("%s", done)
        spec = template_check(spec, db, provider_base_url)
        # With `generate:`, preparation renders each generated variable as its fallback; personalise writes them.
        prepared = prepare(stand_in(spec), campaign_id, db, out)
        publish_rejects(campaign_id, prepared)
        generation = None
        if spec.generate is not None:
            prepared, generation = personalise_task(spec, campaign_id, db, prepared)
        queued = queue(spec, campaign_id, prepared, db, provider_base_url)
        get_run_logger().info("%d recipients accepted, %d new messages queued", prepared.accepted.height, queued)
        totals = estimate(spec, campaign_id, db, generation)
        # A person approves here when the spec or the team's controls ask for it; a rejection sends nothing.
        approval = await_approval(spec, campaign_id, db, totals, prepared, origin=origin, started_by=started_by,
                                  generation=generation)  # the model's values shown masked
        cap_queued(spec, campaign_id, db)  # every run, continuations and resumes too: before anything is sent
        groups = min(dispatch_groups, len(spec.all_senders)) if shared.dialect == "postgresql" else 1
        if groups > 1:
            result = dispatch_in_groups(
                str(Path(spec_path).resolve()), campaign_id, list(spec.all_senders), groups,
                database=database,  # as given (None: each worker's CAMPAIGN_DATABASE_URL): no password in parameters
                spool_dir=str(Path(spool_dir).resolve()), provider_base_url=provider_base_url,
                deployment=dispatch_deployment)
            get_run_logger().info("dispatch: %d sent, %d failed over %d groups; states %s", result.sent,
                                  result.failed, groups, result.states)
        else:  # one group, and every SQLite store: in this process
            if dispatch_groups > 1:
                get_run_logger().info("dispatch in this process: groups of senders need a PostgreSQL store and more "
                                      "than one sender")
            result = dispatch(spec, campaign_id, db, provider_base_url, Path(spool_dir))
        cap_check_over(shared, campaign_id)  # what is left queued is not about to be sent: other caps stop counting it
        receipts(spec, campaign_id, db, Path(spool_dir))
        summary = report(campaign_id, db, out, prepared)
        summary["dispatch"] = {**result_dict(result), "groups": groups}
        summary["approval"] = approval
        if spec.fallback is not None:
            summary["fallback"] = fallback(spec, campaign_id, db, fallback_base_url, Path(spool_dir), Path(reports_dir))
    # Outside the lease: a continuation due at once must find the campaign free.
    summary["continues"] = schedule_continuation(campaign_id, spec_path, result)
    if result.stopped_reason:
        create_markdown_artifact(f"**Channel stopped:** {result.stopped_reason}",
                                 key=artifact_key(campaign_id, "stopped"))
    # A template or a number the provider stopped leaves the campaign unfinished: the run ends Failed with the
    # reason (what was sent is reported above; the rest stays queued for the next run).
    target = registry_target(spec)
    if target is not None and is_template_stop(result.stopped_reason):  # continues once APPROVED (flows/reapproval.py)
        summary["continues_on_approval"] = record_template_wait(
            db, campaign_id, Target(*target, spec.template.name, spec.template.language),
            str(result.stopped_reason), spec_path)
    elif target is not None:
        settle_template_wait(db, campaign_id)
    reasons = ([result.stopped_reason] if ends_not_completed(result.stopped_reason) else []) + [
        f"lane {sender}: {why}" for sender, why in result.lanes_paused.items()]
    if reasons:
        raise CampaignNotCompleted("; ".join(reasons))
    return summary


class CampaignNotCompleted(RuntimeError):
    """The provider stopped the template or a number mid-campaign: unsent messages stay queued."""


if __name__ == "__main__":
    import sys

    campaign_flow(sys.argv[1])
