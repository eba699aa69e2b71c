"""The frequency cap: who has had as many messages as the team allows within its period, counted in the store's
outbox across campaigns and across the channels that reach the same app (Chat App's WhatsApp with WhatsApp's), so
preparation rejects them as frequency_capped with what was counted.

The cap is the spec's `frequency_cap`, else the team's default in pipeline/data/controls.yaml (one message per
24 h, marketing). A message counts once it was sent, or may have been (`unknown`: the provider may have it).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import polars as pl

from pipeline import store
from pipeline.audience.address_sets import AddressSet, split_plain
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
) -> AddressSet:
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
        return AddressSet.from_column(pl.Series("key", [], dtype=pl.String))
    keys = pl.Series("key", parts, dtype=pl.String).str.split(dialect.KEY_SEPARATOR).explode()
    # Plain E.164 keys (a phone channel's, all of them) counted as Int64 digits, which name exactly one text each
    # (0.36 s for 4M sends where the texts take 0.65 s), and handed on so (pipeline/audience/address_sets.py).
    del parts  # what is in memory here is beside the preparation's batches (capped_meanwhile)
    numbers, others = split_plain(keys)
    del keys
    return AddressSet(_reaching(numbers, cap.max), _reaching(others, cap.max))


def _reaching(keys: pl.Series, times: int) -> pl.Series:
    """The keys that occur at least `times` times, each once: runs of the sorted keys (for the week's 4.2M sends
    0.12 s, where a group-by took 0.31 s)."""
    runs = keys.sort().rle()
    return runs.filter(runs.struct.field("len") >= times).struct.field("value").rename(keys.name)


@contextmanager
def capped_meanwhile(url: str, cap: FrequencyCap, *, exclude_campaign: str | None = None) -> Iterator[AddressSet]:
    """`capped_recipients` read in a thread of its own while the caller goes on: the set it yields waits for the
    query where it is first needed. Preparation checks its first batches' numbers meanwhile (the cap is matched
    after them). On leaving, the query has ended; an error of it that nothing met yet is raised then."""
    def read() -> AddressSet:
        with store.connect(url) as db:
            return capped_recipients(db, cap, exclude_campaign=exclude_campaign)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frequency-cap")
    try:
        future = pool.submit(read)
        yield AddressSet.later(future)
    finally:
        pool.shutdown(wait=True)  # the store is not left with a reader the caller does not know of
    future.result()


def recently_messaged(
    db: Store,
    channel: str,
    *,
    window: timedelta = DEFAULT_FREQUENCY_WINDOW,
    now: datetime | None = None,
    exclude_campaign: str | None = None,
) -> AddressSet:
    """Recipient keys with a marketing message sent on `channel` within `window` before `now` (`campaign prepare`'s
    `--frequency-window-hours` without a spec: one message per window)."""
    return capped_recipients(db, window_cap(channel, window), now=now, exclude_campaign=exclude_campaign)


def window_cap(channel: str, window: timedelta = DEFAULT_FREQUENCY_WINDOW) -> FrequencyCap:
    """One marketing message on `channel` per `window` as a cap."""
    minutes = max(1, round(window.total_seconds() / 60))
    return FrequencyCap(max=1, per=f"{minutes}m", channels=[channel])  # type: ignore[list-item]
