"""Fallback: recipients the first channel could not reach get the message once on a second one.

"Could not reach" is an undeliverable failure (WhatsApp 131026 and its kin on other channels) or a
message sent but not delivered within the spec's `fallback.after_s`. The fallback is its own
campaign leg (`<campaign>-fallback`) with its own outbox rows, so the report shows both legs and
deterministic message ids make "once" hold across re-runs.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from pipeline.channels.base import Channel
    from pipeline.spec import CampaignSpec
from pipeline.store import Store

# Failure codes meaning "this address cannot get messages on this channel".
UNDELIVERABLE: dict[str, list[str]] = {
    "whatsapp": ["131026"],
    "chatapp": ["131026"],
    "viber": ["5", "6", "11"],  # receiverNotRegistered, receiverNotSubscribed, receiverNoSuitableDevice
    "messenger": ["551"],
    "instagram": ["551"],
    "sms": ["30003", "30005", "30006", "21614"],
    "email": ["5.1.1", "5.1.10", "550"],
}


def fallback_leg_id(campaign_id: str) -> str:
    return f"{campaign_id}-fallback"


def select_fallback(
    db: Store, campaign_id: str, *, channel: str, fallback_channel: str, after_s: float,
    now: datetime | None = None,
) -> pl.DataFrame:
    """The recipients of `campaign_id` to send the fallback to, shaped like prepared recipients."""
    now = now or datetime.now(UTC)
    codes = UNDELIVERABLE.get(channel, []) or [""]
    rows = db.rows("""
        SELECT r.row_number, r.phone_e164, r.country AS region, r.number_type, r.text,
               r.variables_json AS params_json
        FROM outbox o
        JOIN recipients r ON r.campaign_id = o.campaign_id AND r.recipient_key = o.recipient_key
        LEFT JOIN message_status s ON s.message_id = o.message_id
        WHERE o.campaign_id = :campaign
          AND r.phone_e164 IS NOT NULL
          AND (   (o.state = 'failed' AND o.error_code IN :codes)
               OR (s.status = 'failed' AND s.error_code IN :codes)
               OR (o.state = 'sent' AND coalesce(s.status, 'sent') = 'sent' AND o.sent_at < :cutoff))
          AND r.phone_e164 NOT IN (SELECT address FROM suppressions WHERE channel = :fallback_channel)
        ORDER BY r.row_number
        """, campaign=campaign_id, codes=codes, cutoff=now - timedelta(seconds=after_s),
        fallback_channel=fallback_channel)
    return _recipients(rows)


def _recipients(rows: list) -> pl.DataFrame:
    return pl.DataFrame([tuple(r) for r in rows], schema=_RECIPIENTS, orient="row")


_RECIPIENTS = {"row_number": pl.Int64, "phone_e164": pl.String, "region": pl.String, "number_type": pl.String,
               "text": pl.String, "params_json": pl.String}


def send_fallback(
    db: Store, spec: CampaignSpec, campaign_id: str, channel: Channel, *,
    reconcile: Callable[[], object] | None = None, now: datetime | None = None,
) -> dict[str, int]:
    """Queues and sends the fallback leg; returns how many were selected, newly queued and sent."""
    import asyncio

    from pipeline.dispatch.budget import price_queued_messages
    from pipeline.dispatch.engine import dispatch_campaign
    from pipeline.dispatch.outbox import enqueue_messages, register_campaign, store_preparation
    from pipeline.records import empty_rejects

    assert spec.fallback is not None
    leg_spec, leg_id = spec.fallback_leg(), fallback_leg_id(campaign_id)
    chosen = select_fallback(db, campaign_id, channel=spec.channel, fallback_channel=leg_spec.channel,
                             after_s=spec.fallback.after_s, now=now)
    register_campaign(db, leg_spec, leg_id)
    # Recipients accumulate over re-runs: a later run may add late non-deliveries.
    earlier = _recipients(db.rows(
        "SELECT row_number, phone_e164, country AS region, number_type, text, variables_json AS params_json "
        "FROM recipients WHERE campaign_id = :leg", leg=leg_id))
    everyone = chosen
    if not earlier.is_empty():
        everyone = pl.concat([earlier, chosen], how="vertical_relaxed").unique("row_number", keep="first")
    store_preparation(db, leg_id, everyone.sort("row_number"), empty_rejects())
    if spec.experiment is not None:  # each recipient's arm of the first leg, its template; never the holdout
        from pipeline.dispatch.experiment import enqueue_fallback_by_arm

        queued = enqueue_fallback_by_arm(db, spec, campaign_id, leg_spec, leg_id, channel, chosen)
    else:
        queued = enqueue_messages(db, leg_spec, leg_id, channel, chosen)
    price_queued_messages(db, leg_id)
    result = asyncio.run(dispatch_campaign(
        db, leg_id, channel, rate=leg_spec.rate_limit, retry=leg_spec.retry, reconcile=reconcile,
        timeout_s=leg_spec.provider.timeout_s, progress_every_s=30,
    ))
    return {"selected": chosen.height, "queued": queued, "sent": result.sent, "failed": result.failed}
