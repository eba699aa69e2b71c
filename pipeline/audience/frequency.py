"""The marketing frequency cap: who got a marketing message on a channel recently, read from
the outbox, so preparation can reject them as frequency_capped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.store import Store

DEFAULT_FREQUENCY_WINDOW = timedelta(hours=24)


def recently_messaged(
    db: Store,
    channel: str,
    *,
    window: timedelta = DEFAULT_FREQUENCY_WINDOW,
    now: datetime | None = None,
    exclude_campaign: str | None = None,
) -> set[str]:
    """Recipient keys (E.164 for phone channels) with an outbox message in state 'sent',
    category 'marketing', on `channel`, sent within `window` before `now`. A campaign being
    resumed passes its own id as `exclude_campaign`, so its own sends do not cap it."""
    since = (now or datetime.now(UTC)) - window
    sql = """
        SELECT DISTINCT recipient_key FROM outbox
        WHERE channel = :channel AND state = 'sent' AND category = 'marketing' AND sent_at >= :since
    """
    params: dict[str, object] = {"channel": channel, "since": since}
    if exclude_campaign is not None:
        sql += " AND campaign_id <> :exclude"
        params["exclude"] = exclude_campaign
    return {row[0] for row in db.rows(sql, **params)}
