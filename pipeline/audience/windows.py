"""Messenger / Instagram standard messaging window: who may be sent to, judged before sending.

Meta lets a Page message a user freely for 24 h after the user's last message; outside that window
only message tags may go out, and only for non-promotional content (docs/providers.md §5). So a
marketing campaign rejects (`outside_window`) every user whose last inbound is unknown or too old,
instead of collecting error 10/2018278 per message. Last-inbound times come from the store's `inbound`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

from pipeline.records import Category, empty_rejects, make_rejects
from pipeline.store import Store, utc

# Hours after the user's last message in which a tag may still be sent (Meta's message-tag reference:
# HUMAN_AGENT 7 days); tags not listed have no limit once the user has written (docs/providers.md §5).
TAG_WINDOW_H: dict[str, float] = {"HUMAN_AGENT": 7 * 24.0}


def last_inbound_times(db: Store, provider: str) -> dict[str, datetime]:
    """The latest inbound message time (UTC) per sender for `provider` ("messenger", "instagram", ...)."""
    rows = db.rows("SELECT sender, max(occurred_at) FROM inbound WHERE provider = :p GROUP BY sender", p=provider)
    return {sender: utc(at) for sender, at in rows if at is not None}


def outside_window(
    frame: pl.DataFrame,
    *,
    user_column: str,
    last_inbound: dict[str, datetime],
    now: datetime,
    hours: float = 24,
    category: Category,
    message_tag: str | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(eligible rows, `outside_window` rejects) for a send at `now`.

    A user is inside the window when their last inbound is at most `hours` old. Outside it, a
    marketing send is always rejected; a non-marketing one only goes out with a message tag
    (`message_tag`), and is rejected without one, since Meta would refuse it anyway. A tag has a
    window of its own (TAG_WINDOW_H: HUMAN_AGENT 7 days after the user's last message), and no tag
    reaches a user who never wrote: Meta's tags answer a conversation the user started.
    `now` should be the planned send time: a row inside the window now may be outside it later.
    """
    if frame.is_empty():
        return frame, empty_rejects()
    tagged = category != "marketing" and bool(message_tag)
    limit = TAG_WINDOW_H.get(message_tag or "") if tagged else hours
    known = pl.DataFrame(
        {"_user": list(last_inbound), "_last_inbound": [_utc(t) for t in last_inbound.values()]},
        schema={"_user": pl.String, "_last_inbound": pl.Datetime("us", "UTC")},
    )
    joined = frame.with_row_index("_order").join(
        known, left_on=pl.col(user_column).cast(pl.String), right_on="_user", how="left"
    ).sort("_order")
    inside = pl.col("_last_inbound").is_not_null()
    if limit is not None:
        inside = inside & (pl.col("_last_inbound") >= pl.lit(_utc(now) - timedelta(hours=limit)))
    eligible = joined.filter(inside).select(frame.columns)
    outside = joined.filter(~inside)
    why = "" if limit is None else f"more than {limit:g} h before the send" + (
        f" ({message_tag} allows {limit:g} h)" if tagged else "")
    detail = (
        pl.when(pl.col("_last_inbound").is_null())
        .then(pl.lit("no message from this user on record" + (f": {message_tag} needs one" if tagged else "")))
        .otherwise(
            pl.lit("last message from this user at ")
            + pl.col("_last_inbound").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            + pl.lit(f", {why}")
        )
    )
    return eligible, make_rejects(outside, "outside_window", detail)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


SESSION_HOURS = 24.0  # WhatsApp's customer-service window (docs/providers.md §1.10)


def session_window(
    frame: pl.DataFrame, *, last_inbound: dict[str, datetime], now: datetime, outside: str,
    key: str = "phone_e164", hours: float = SESSION_HOURS,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows to queue, `outside_window` rejects) for a campaign with a free-form session message: a recipient whose
    last message (keyed as `key` writes it) is at most `hours` old gets the free-form message (their
    `params_json` gains `"session": ["1"]`); the others get the template (`outside` "template") or are rejected.
    """
    if frame.is_empty():
        return frame, empty_rejects()
    known = pl.DataFrame(
        {"_user": list(last_inbound), "_last_inbound": [_utc(t) for t in last_inbound.values()]},
        schema={"_user": pl.String, "_last_inbound": pl.Datetime("us", "UTC")},
    )
    joined = frame.with_row_index("_order").join(known, left_on=key, right_on="_user", how="left").sort("_order")
    inside = pl.col("_last_inbound").is_not_null() & (
        pl.col("_last_inbound") >= pl.lit(_utc(now) - timedelta(hours=hours)))
    params = pl.col("params_json")
    marked = pl.when(params == "{}").then(pl.lit('{"session": ["1"]}')).otherwise(
        pl.lit('{"session": ["1"], ') + params.str.slice(1))
    joined = joined.with_columns(pl.when(inside).then(marked).otherwise(params).alias("params_json"),
                                 inside.alias("_inside"))
    if outside == "template":
        return joined.select(frame.columns), empty_rejects()
    rejected = joined.filter(~pl.col("_inside"))
    detail = pl.when(pl.col("_last_inbound").is_null()).then(pl.lit("no message from this recipient on record")) \
        .otherwise(pl.lit(f"last message more than {hours:g} h before the send, and the spec sends no template"))
    return joined.filter(pl.col("_inside")).select(frame.columns), make_rejects(rejected, "outside_window", detail)


def whatsapp_last_inbound(db: Store, provider: str) -> dict[str, datetime]:
    """Last inbound times keyed by E.164 (WhatsApp webhooks name senders by digits, Chat App's parser by +digits)."""
    return {f"+{sender.lstrip('+')}": at for sender, at in last_inbound_times(db, provider).items()
            if sender.lstrip("+").isdigit()}
