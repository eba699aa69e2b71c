"""The frequency cap: who has had as many messages as the team allows within its period, counted in the store's
outbox across campaigns and across the channels that reach the same app (Chat App's WhatsApp with WhatsApp's), so
preparation rejects them as frequency_capped with what was counted.

The cap is the spec's `frequency_cap`, else the team's default in pipeline/data/controls.yaml (one message per
24 h, marketing). A message counts once it was sent, or may have been (`unknown`: the provider may have it).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.spec import CampaignSpec, FrequencyCap, controls
from pipeline.store import Store

DEFAULT_FREQUENCY_WINDOW = timedelta(hours=24)


def frequency_cap_for(spec: CampaignSpec, settings: dict | None = None) -> FrequencyCap:
    """The spec's cap, else the team's default; with no channels named, the campaign's channel and every channel
    reaching the same app (Chat App only when it sends to WhatsApp)."""
    settings = settings if settings is not None else controls()
    cap = spec.frequency_cap or FrequencyCap.model_validate(settings.get("frequency_cap") or {"max": 1, "per": "24h"})
    if cap.channels:
        return cap
    via = spec.provider.options.get("channel_type") if spec.channel == "chatapp" else None
    group = {spec.channel}
    for same in settings.get("same_app") or []:
        if spec.channel in same and via in (None, "whatsapp"):
            group |= set(same)
    return cap.model_copy(update={"channels": sorted(group)})


def describe(cap: FrequencyCap) -> str:
    """The reject's detail: what the cap counted."""
    return (f"reached the cap of {cap.max} {'/'.join(cap.categories)} message{'s' if cap.max > 1 else ''} per "
            f"{cap.per} on {' + '.join(cap.channels)}, counted across campaigns")


def capped_recipients(
    db: Store, cap: FrequencyCap, *, now: datetime | None = None, exclude_campaign: str | None = None
) -> set[str]:
    """Recipient keys (E.164 for phone channels) with at least `cap.max` messages of the cap's categories on its
    channels within its period before `now`. A campaign being resumed passes its own id as `exclude_campaign`, so
    its own sends do not cap it."""
    since = (now or datetime.now(UTC)) - cap.window
    sql = """
        SELECT recipient_key FROM outbox
        WHERE channel IN :channels AND sent_at >= :since AND state IN ('sent', 'unknown') AND category IN :categories
    """
    params: dict[str, object] = {"channels": list(cap.channels), "since": since, "categories": list(cap.categories)}
    if exclude_campaign is not None:
        sql += " AND campaign_id <> :exclude"
        params["exclude"] = exclude_campaign
    if cap.max == 1:
        distinct = sql.replace("SELECT recipient_key", "SELECT DISTINCT recipient_key")
        return {row[0] for row in db.rows(distinct, **params)}
    sql += " GROUP BY recipient_key HAVING count(*) >= :max"
    return {row[0] for row in db.rows(sql, **params, max=cap.max)}


def recently_messaged(
    db: Store,
    channel: str,
    *,
    window: timedelta = DEFAULT_FREQUENCY_WINDOW,
    now: datetime | None = None,
    exclude_campaign: str | None = None,
) -> set[str]:
    """Recipient keys with a marketing message sent on `channel` within `window` before `now` (`campaign prepare`'s
    `--frequency-window-hours` without a spec: one message per window)."""
    minutes = max(1, round(window.total_seconds() / 60))
    cap = FrequencyCap(max=1, per=f"{minutes}m", channels=[channel])  # type: ignore[list-item]
    return capped_recipients(db, cap, now=now, exclude_campaign=exclude_campaign)
