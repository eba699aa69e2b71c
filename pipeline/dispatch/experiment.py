"""Queueing a campaign with variants and a holdout: every accepted recipient's arm recorded in the store
(`experiment_arms`, the holdout too), each sent arm's rows queued with its own template, the holdout's never.

The flow's queue step calls `queue_experiment` instead of store_preparation + enqueue_messages when the spec
has an `experiment`; the fallback leg calls `enqueue_fallback_by_arm`, which reads the first leg's arms, so a
recipient gets the fallback message of the arm it was in and a holdout recipient (never in the first leg's
outbox) never gets one. Arms are a pure function of campaign id and recipient (pipeline/render/arms.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from pipeline.channels.base import Channel
from pipeline.dispatch.outbox import enqueue_messages, store_preparation
from pipeline.render.arms import HOLDOUT, arms_of, assign_arms, render_arms
from pipeline.render.limits import RenderLimits
from pipeline.render.personalise import gen_column
from pipeline.spec import CampaignSpec
from pipeline.store import Store, run
from pipeline.store.bulk import insert_frame

# An outcome cell that means "converted" without a value (read as people write it).
_YES = {"yes", "y", "true", "1", "converted"}


def _with_key(frame: pl.DataFrame) -> pl.DataFrame:
    if "recipient_key" in frame.columns:
        return frame
    return frame.with_columns(pl.col("phone_e164").alias("recipient_key"))


def queue_experiment(
    db: Store, spec: CampaignSpec, campaign_id: str, channel: Channel, accepted: pl.DataFrame,
    rejects: pl.DataFrame, *, senders: list[str] | None = None, now: datetime | None = None,
) -> int:
    """Records the preparation and every recipient's arm; queues the sent arms. Returns how many messages
    were newly queued (a resume queues none of those already in the outbox, each keeps its arm)."""
    assert spec.experiment is not None
    now = now or datetime.now(UTC)
    arms = arms_of(spec.experiment, spec.template)
    frame = _with_key(accepted)
    frame = frame.with_columns(assign_arms(campaign_id, frame["recipient_key"], arms))
    variables = {**spec.variables, **{n: gen_column(n) for n in (spec.generate.variables if spec.generate else {})}}
    frame, failed = render_arms(frame, arms, variables, RenderLimits.for_spec(spec))
    if failed.height:  # the arm's template could not render this row: rejected as in preparation
        frame = frame.filter(~pl.col("row_number").is_in(failed["row_number"].implode()))
        rejects = pl.concat([rejects, failed], how="diagonal_relaxed")
    store_preparation(db, campaign_id, frame, rejects)
    record_arms(db, campaign_id, frame.select("recipient_key", pl.col("region").alias("country"), "arm"), now)
    if spec.experiment.outcome_column:
        record_audience_outcomes(db, campaign_id, frame, spec.experiment.outcome_column, now)
    added = 0
    for arm in arms:
        if arm.template is None:
            continue  # the holdout: recorded above, sent nothing
        rows = frame.filter(pl.col("arm") == arm.name)
        if rows.height:
            arm_spec = spec.model_copy(update={"template": arm.template})
            added += enqueue_messages(db, arm_spec, campaign_id, channel, rows.drop("arm"), senders=senders)
    return added


def record_arms(db: Store, campaign_id: str, arms: pl.DataFrame, now: datetime) -> None:
    """recipient_key, country, arm of this preparation, added to the earlier runs' (kept: a recipient suppressed
    since, say by an opt-out, stays in the arm it was measured in; a key's arm is the same on every run)."""
    rows = arms.with_columns(pl.lit(campaign_id).alias("campaign_id"), pl.lit(now).alias("assigned_at"))
    with db.write() as conn:
        insert_frame(conn, "experiment_arms", rows.select(
            "campaign_id", "recipient_key", "arm", "country", "assigned_at"), on_conflict="ignore")


def record_audience_outcomes(db: Store, campaign_id: str, frame: pl.DataFrame, column: str, now: datetime) -> int:
    """The audience's outcome column as conversions (source `audience`): a positive number is a conversion of
    that value, yes/true/1 one without a value, anything else none. Replaces the audience's earlier ones."""
    if column not in frame.columns:
        raise ValueError(f"experiment.outcome_column: the audience has no column {column!r}")
    cell = pl.col(column).cast(pl.String).str.strip_chars()
    number = cell.cast(pl.Float64, strict=False)
    rows = frame.select(
        "recipient_key", value=pl.when(number > 0).then(number),
        converted=(number > 0).fill_null(False) | cell.str.to_lowercase().is_in(list(_YES)).fill_null(False),
    ).filter("converted")
    out = rows.select(pl.lit(campaign_id).alias("campaign_id"), "recipient_key",
                      pl.lit(now).alias("converted_at"), pl.col("value"), pl.lit("audience").alias("source"))
    with db.write() as conn:
        run(conn, "DELETE FROM conversions WHERE campaign_id = :c AND source = 'audience'", c=campaign_id)
        insert_frame(conn, "conversions", out)
    return out.height


def arms_by_key(db: Store, campaign_id: str) -> dict[str, str]:
    return dict(db.rows("SELECT recipient_key, arm FROM experiment_arms WHERE campaign_id = :c", c=campaign_id))


def enqueue_fallback_by_arm(
    db: Store, spec: CampaignSpec, campaign_id: str, leg_spec: CampaignSpec, leg_id: str, channel: Channel,
    chosen: pl.DataFrame,
) -> int:
    """The fallback leg's messages, each with the template of the arm its recipient was in on the first leg;
    the leg's arms are recorded under its own id. A recipient without a sent arm is not queued."""
    assert spec.experiment is not None
    templates = {arm.name: arm.template for arm in arms_of(spec.experiment, spec.template) if arm.template}
    known = arms_by_key(db, campaign_id)
    frame = _with_key(chosen).with_columns(
        pl.col("recipient_key").replace_strict(known, default=HOLDOUT, return_dtype=pl.String).alias("arm"))
    frame = frame.filter(pl.col("arm").is_in(list(templates)))
    if frame.is_empty():
        return 0
    with db.write() as conn:  # added to the leg's earlier ones (a key's arm never changes: kept as it is)
        insert_frame(conn, "experiment_arms", frame.select(
            pl.lit(leg_id).alias("campaign_id"), "recipient_key", "arm", pl.col("region").alias("country"),
            pl.lit(datetime.now(UTC)).alias("assigned_at")), on_conflict="ignore")
    added = 0
    for name, template in templates.items():
        rows = frame.filter(pl.col("arm") == name)
        if rows.height:
            arm_spec = leg_spec.model_copy(update={"template": template})
            added += enqueue_messages(db, arm_spec, leg_id, channel, rows.drop("arm", "recipient_key"))
    return added
