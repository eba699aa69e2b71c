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
    (`message_tag`), and is rejected without one, since Meta would refuse it anyway.
    `now` should be the planned send time: a row inside the window now may be outside it later.
    """
    if frame.is_empty() or (category != "marketing" and message_tag):
        return frame, empty_rejects()
    cutoff = _utc(now) - timedelta(hours=hours)
    known = pl.DataFrame(
        {"_user": list(last_inbound), "_last_inbound": [_utc(t) for t in last_inbound.values()]},
        schema={"_user": pl.String, "_last_inbound": pl.Datetime("us", "UTC")},
    )
    joined = frame.with_row_index("_order").join(
        known, left_on=pl.col(user_column).cast(pl.String), right_on="_user", how="left"
    ).sort("_order")
    inside = pl.col("_last_inbound").is_not_null() & (pl.col("_last_inbound") >= pl.lit(cutoff))
    eligible = joined.filter(inside).select(frame.columns)
    outside = joined.filter(~inside)
    detail = (
        pl.when(pl.col("_last_inbound").is_null())
        .then(pl.lit("no message from this user on record"))
        .otherwise(
            pl.lit("last message from this user at ")
            + pl.col("_last_inbound").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            + pl.lit(f", more than {hours:g} h before the send")
        )
    )
    return eligible, make_rejects(outside, "outside_window", detail)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
