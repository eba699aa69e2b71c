"""Closed vocabularies and frozen records shared by every stage."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import polars as pl
from pydantic import BaseModel, ConfigDict

ChannelName = Literal["whatsapp", "messenger", "instagram", "viber", "sms", "email", "chatapp"]
# The apps Chat App sends over (its `ChannelType`): a campaign's `provider.options.channel_type`.
CHATAPP_CHANNEL_TYPES = frozenset({"whatsapp", "viber", "messenger", "instagram"})
Category = Literal["marketing", "utility", "authentication", "service"]

RejectReason = Literal[
    "bad_row",
    "invalid_number",
    "not_mobile",
    "blocked_country",
    "no_opt_in",
    "duplicate",
    "suppressed",
    "missing_variable",
    "frequency_capped",
    "stale_opt_in",
    "outside_window",
    "field_too_long",  # a field over the field bound (ReadLimits)
    "row_too_long",  # a row over the row bound
    "message_too_long",  # the rendered text or a parameter over the channel's limit, or the template over its budget
]
REJECT_REASONS: tuple[str, ...] = RejectReason.__args__  # type: ignore[attr-defined]

# Outbox states (a message's place in the send ledger).
# `withheld`: never to be sent (error_code says why: frequency_capped at the dispatch's start).
OutboxState = Literal["queued", "sending", "sent", "failed", "deferred", "unknown", "withheld"]
# Delivery statuses derived from receipts; rank orders them (failed is terminal).
DeliveryStatus = Literal["sent", "delivered", "read", "failed"]
STATUS_RANK: dict[str, int] = {"sent": 1, "delivered": 2, "read": 3, "failed": 9}

# Every rejects frame has exactly these columns, so stages can concatenate them.
REJECTS_SCHEMA: dict[str, pl.DataType] = {
    "row_number": pl.Int64(),
    "reason": pl.String(),
    "detail": pl.String(),
}


def empty_rejects() -> pl.DataFrame:
    return pl.DataFrame(schema=REJECTS_SCHEMA)


def make_rejects(frame: pl.DataFrame, reason: RejectReason, detail: pl.Expr | str) -> pl.DataFrame:
    """Rejects for every row of `frame` (which must carry `row_number`) with one reason."""
    detail_expr = pl.lit(detail) if isinstance(detail, str) else detail
    return frame.select(
        pl.col("row_number").cast(pl.Int64),
        pl.lit(reason).alias("reason"),
        detail_expr.cast(pl.String).alias("detail"),
    )


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Receipt(_Frozen):
    """One provider status report, normalised; `raw_json` keeps the payload for audits."""

    provider: str
    provider_message_id: str
    message_id: str | None  # our id, echoed back (biz_opaque_callback_data, tracking_data, TaskId)
    status: DeliveryStatus
    error_code: str | None = None
    error_title: str | None = None
    category: str | None = None  # WhatsApp pricing.category as billed
    pricing_type: str | None = None  # regular | free_customer_service | free_entry_point
    recipient: str | None = None
    occurred_at: datetime
    raw_json: str


class Inbound(_Frozen):
    """An inbound message from a recipient (a reply; STOP keywords become suppressions)."""

    provider: str
    sender: str
    text: str | None
    occurred_at: datetime
    raw_json: str
    # A tapped button's payload (quick reply, postback), apart from the words shown on it.
    payload: str | None = None
    # The provider's id of the message this one answers (WhatsApp context.id, Messenger reply_to.mid, ...).
    context_id: str | None = None
