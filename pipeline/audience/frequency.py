"""The frequency cap: who has had as many messages as the team allows within its period, counted in the store's
outbox across campaigns and across the channels that reach the same app (Chat App's WhatsApp with WhatsApp's), so
preparation rejects them as frequency_capped with what was counted.

The cap is the spec's `frequency_cap`, else the team's default in pipeline/data/controls.yaml (one message per
24 h, marketing). A message counts once it was sent, or may have been (`unknown`: the provider may have it).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import polars as pl

from pipeline.audience.address_sets import AddressSet
from pipeline.spec import CampaignSpec, FrequencyCap, controls
from pipeline.store import Store, dialect

DEFAULT_FREQUENCY_WINDOW = timedelta(hours=24)
# The period is read in slices this long: one slice's keys are one text in memory (6 h of 10M sends a day: ~40 MB).
SLICE = timedelta(hours=6)
READERS = 2
_LATER = datetime(9999, 1, 1, tzinfo=UTC)


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
) -> frozenset[str]:
    """Recipient keys (E.164 for phone channels) with at least `cap.max` messages of the cap's categories on its
    channels within its period before `now`. A campaign being resumed passes its own id as `exclude_campaign`, so
    its own sends do not cap it.

    The store reads the sends in the window through `outbox_recent`, which holds every column the filter names
    (no table lookups), one slice of the period at a time, each slice's keys joined into one text by the store
    (`dialect.joined_keys`): millions of sends reach Python as a few strings, not millions of rows, and the count
    per recipient is Polars' (a GROUP BY in the store sorted ~4M keys in 3-5 s on either store)."""
    end = now or datetime.now(UTC)
    since = end - cap.window
    where = "channel IN :channels AND sent_at >= :low AND sent_at < :high AND state IN ('sent', 'unknown') " \
            "AND category IN :categories"
    params: dict[str, object] = {"channels": list(cap.channels), "categories": list(cap.categories)}
    if exclude_campaign is not None:
        where += " AND campaign_id <> :exclude"
        params["exclude"] = exclude_campaign
    sql = f"SELECT {dialect.joined_keys(db.dialect, 'recipient_key')} FROM outbox WHERE {where}"
    slices = []
    while since + SLICE < end:
        slices.append((since, since + SLICE))
        since += SLICE
    slices.append((since, _LATER))  # a send stamped after `now` (another machine's clock ahead) counts too
    # Two slices at a time: the store's work is most of it, and both drivers let go of the GIL while it runs.
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        parts = [joined for joined in pool.map(lambda s: db.scalar(sql, **params, low=s[0], high=s[1]), slices)
                 if joined]
    if not parts:
        return frozenset()
    keys = pl.Series("recipient_key", parts, dtype=pl.String).str.split(dialect.KEY_SEPARATOR).explode()
    counts = keys.to_frame().group_by("recipient_key").len()
    # Normalised for matching here, from the column (pipeline/audience/address_sets.py).
    return AddressSet.from_column(counts.filter(pl.col("len") >= cap.max)["recipient_key"])


def recently_messaged(
    db: Store,
    channel: str,
    *,
    window: timedelta = DEFAULT_FREQUENCY_WINDOW,
    now: datetime | None = None,
    exclude_campaign: str | None = None,
) -> frozenset[str]:
    """Recipient keys with a marketing message sent on `channel` within `window` before `now` (`campaign prepare`'s
    `--frequency-window-hours` without a spec: one message per window)."""
    minutes = max(1, round(window.total_seconds() / 60))
    cap = FrequencyCap(max=1, per=f"{minutes}m", channels=[channel])  # type: ignore[list-item]
    return capped_recipients(db, cap, now=now, exclude_campaign=exclude_campaign)
