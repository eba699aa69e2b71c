"""The frequency cap: who has had as many messages as the team allows within its period, counted in the store's
outbox across campaigns and across the channels that reach the same app (Chat App's WhatsApp with WhatsApp's), so
preparation rejects them as frequency_capped with what was counted.

The cap is the spec's `frequency_cap`, else the team's default in pipeline/data/controls.yaml (one message per
24 h, marketing). A message counts once it was sent, or may have been (`unknown`: the provider may have it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import polars as pl

from pipeline import store
from pipeline.audience import send_history, send_sums
from pipeline.audience.address_sets import AddressSet, split_plain
from pipeline.records import CHATAPP_CHANNEL_TYPES
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


def app_of(spec: CampaignSpec) -> str:
    """The app a campaign's messages reach: its channel, or for Chat App the channel type it sends over."""
    return str(spec.provider.options.get("channel_type") or "") if spec.channel == "chatapp" else spec.channel


def describe(cap: FrequencyCap) -> str:
    """The reject's detail: what the cap counted."""
    return (f"reached the cap of {cap.max} {'/'.join(cap.categories)} message{'s' if cap.max > 1 else ''} per "
            f"{cap.per} on {' + '.join(cap.channels)}, counted across campaigns")


def capped_recipients(
    db: Store, cap: FrequencyCap, *, now: datetime | None = None, exclude_campaign: str | None = None,
    app: str | None = None, in_flight: Sequence[str] = (),
) -> AddressSet:
    """Recipient keys (E.164 for phone channels) with at least `cap.max` messages of the cap's categories on its
    channels within its period before `now`. A campaign being resumed passes its own id as `exclude_campaign`, so
    its own sends do not cap it. `app` (`app_of` the campaign): Chat App's sends count only when their campaign sent
    over that app (its WhatsApp with WhatsApp's, its Viber with Viber's), whatever the cap's channels list.

    The window's closed hours are read from the send history (pipeline/audience/send_history.py: one compressed blob
    per hour and channel, stored the first time an hour is read); the rest (the window's first part-hour, the open
    hour, an hour whose blob a change has just deleted) from the outbox (`_read_outbox`). The count per recipient
    is Polars', over Int64 digits for plain E.164 keys; the closed hours' counts are kept for the next reads while
    their blobs stay the same (pipeline/audience/send_sums.py).

    `in_flight`: campaigns whose queued and sending messages count as sends as well (the running dispatches a
    dispatch's start must not send alongside: pipeline/dispatch/cap_at_send.py)."""
    end = now or datetime.now(UTC)
    since = end - cap.window
    channels = list(cap.channels)
    hours = send_history.hours_between(since, end)
    categories = list(cap.categories)
    excluded = {c: {exclude_campaign} - {None} for c in channels}
    if CHATAPP in channels and app:
        excluded[CHATAPP] |= _chatapp_elsewhere(db, app)
    found = send_sums.counted(db, hours, channels, categories, excluded)
    if found is not None:
        counts, covered = found
    else:
        kept = send_history.read(db, hours, channels, categories, excluded=excluded)
        missing = sorted({h for h in hours for c in channels if (h, c) not in kept.covered})
        keep = timedelta(days=float((controls().get("send_history") or {}).get("keep_days", 35)))
        if missing and send_history.build(db, missing, channels, keep):
            more = send_history.read(db, missing, channels, categories, excluded=excluded, skip=kept.covered)
            kept = kept.with_(more)
        counts, covered = send_sums.Counts.of(kept), kept.covered
        if covered:  # kept for the next reads while these blobs stay the ones the store holds for the window
            send_sums.keep(db, hours, channels, categories, excluded, kept, counts)
        del kept
    # What is about to be sent before what was sent: a message sent between the two reads is then counted twice
    # (withholding rather than sending twice), never missed.
    coming = _read_in_flight(db, cap, in_flight, excluded)
    live = pl.concat([_read_outbox(db, cap, _uncovered(since, hours, channels, set(covered)), excluded), coming])
    numbers, others = split_plain(live)
    del live
    return AddressSet(counts.reaching(numbers, cap.max, plain=True), counts.reaching(others, cap.max, plain=False))


CHATAPP = "chatapp"


def _chatapp_elsewhere(db: Store, app: str) -> set[str]:
    """The Chat App campaigns that sent over another app than `app` (by their stored spec's channel type); none when
    Chat App cannot reach `app` at all (then a cap naming chatapp counts all of its sends, as it says)."""
    if app not in CHATAPP_CHANNEL_TYPES:
        return set()
    other = set()
    for campaign_id, spec_json in db.rows("SELECT campaign_id, spec_json FROM campaigns WHERE channel = :c",
                                          c=CHATAPP):
        try:
            via = ((json.loads(spec_json or "{}").get("provider") or {}).get("options") or {}).get("channel_type")
        except (ValueError, AttributeError):
            continue
        if via and via != app:
            other.add(campaign_id)
    return other


def _uncovered(since: datetime, hours: list[str], channels: list[str], covered: set[tuple[str, str]],
               ) -> list[tuple[datetime, datetime, tuple[str, ...]]]:
    """The (low, high, channels) ranges the stored hours leave to the outbox: the window's start up to its first
    whole hour, every hour some channel has no blob for, and everything from the last whole hour on."""
    if not hours:
        return [(since, _LATER, tuple(channels))]
    ranges = [(since, send_history.hour_start(hours[0]), tuple(channels))]
    for hour in hours:
        lacking = tuple(c for c in channels if (hour, c) not in covered)
        if not lacking:
            continue
        low = send_history.hour_start(hour)
        last = ranges[-1]
        if last[1] == low and last[2] == lacking:
            ranges[-1] = (last[0], low + send_history.HOUR, lacking)
        else:
            ranges.append((low, low + send_history.HOUR, lacking))
    ranges.append((send_history.hour_start(hours[-1]) + send_history.HOUR, _LATER, tuple(channels)))
    return ranges


def _read_outbox(db: Store, cap: FrequencyCap, ranges: list[tuple[datetime, datetime, tuple[str, ...]]],
                 excluded: dict[str, set[str]]) -> pl.Series:
    """The keys of the cap's sends in `ranges`, read from `outbox_recent` in slices of at most SLICE, each slice's
    keys joined into one text by the store (`dialect.joined_keys`): millions of sends reach Python as a few strings,
    not millions of rows (a GROUP BY in the store sorted ~4M keys in 3-5 s on either store)."""
    params: dict[str, object] = {"categories": list(cap.categories)}
    where = "channel IN :channels AND sent_at >= :low AND sent_at < :high AND state IN ('sent', 'unknown') " \
            "AND category IN :categories" + _leaving_out(excluded, params)
    sql = f"SELECT {dialect.joined_keys(db.dialect, 'recipient_key')} FROM outbox WHERE {where}"
    slices = []
    for low, high, channels in ranges:
        if low >= high:
            continue
        while low + SLICE < high < _LATER:  # the open end is one slice: it holds what was sent since the window's end
            slices.append((low, low + SLICE, channels))
            low += SLICE
        slices.append((low, high, channels))
    # Two slices at a time: the store's work is most of it, and both drivers let go of the GIL while it runs.
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        return _keys(list(pool.map(lambda s: db.scalar(sql, **params, low=s[0], high=s[1], channels=list(s[2])),
                                   slices)))


def _keys(joined: list[str | None]) -> pl.Series:
    """The keys of texts the store joined (`dialect.joined_keys`; None for no rows), one per send."""
    parts = [text for text in joined if text]
    if not parts:
        return pl.Series("key", [], dtype=pl.String)
    return pl.Series("key", parts, dtype=pl.String).str.split(dialect.KEY_SEPARATOR).explode()


def _leaving_out(excluded: dict[str, set[str]], params: dict[str, object]) -> str:
    """The SQL condition leaving out each channel's `excluded` campaigns, its parameters added to `params`."""
    where = ""
    for n, (channel, campaigns) in enumerate(sorted((c, s) for c, s in excluded.items() if s)):
        where += f" AND NOT (channel = :ch{n} AND campaign_id IN :out{n})"
        params[f"ch{n}"], params[f"out{n}"] = channel, sorted(campaigns)
    return where


def _read_in_flight(db: Store, cap: FrequencyCap, campaigns: Sequence[str], excluded: dict[str, set[str]]) -> pl.Series:
    """The keys of `campaigns`' messages still to be sent (queued, or claimed and being sent) on the cap's channels
    and categories, one per message, but for the channels' `excluded` campaigns."""
    if not campaigns:
        return _keys([])
    params: dict[str, object] = {"campaigns": sorted(set(campaigns)), "channels": list(cap.channels),
                                 "categories": list(cap.categories)}
    sql = (f"SELECT {dialect.joined_keys(db.dialect, 'recipient_key')} FROM outbox WHERE campaign_id IN :campaigns "
           "AND state IN ('queued', 'sending') AND channel IN :channels AND category IN :categories"
           + _leaving_out(excluded, params))
    return _keys([db.scalar(sql, **params)])


@contextmanager
def capped_meanwhile(url: str, cap: FrequencyCap, *, exclude_campaign: str | None = None,
                     app: str | None = None) -> Iterator[AddressSet]:
    """`capped_recipients` read in a thread of its own while the caller goes on: the set it yields waits for the
    query where it is first needed. Preparation checks its first batches' numbers meanwhile (the cap is matched
    after them). On leaving, the query has ended; an error of it that nothing met yet is raised then."""
    def read() -> AddressSet:
        with store.connect(url) as db:
            return capped_recipients(db, cap, exclude_campaign=exclude_campaign, app=app)

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
