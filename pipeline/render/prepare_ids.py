"""Preparation for channels that address people by an id, not a phone number.

Messenger and Instagram send to a page-scoped id (`user_id`: PSID / IGSID), Viber's bot API to a
Viber user id (`user_id`), e-mail to an address (`email`). Same stages as for phones: consent,
suppression, dedupe, the 24-hour window for Messenger/Instagram marketing, render — and the same
outputs, with the address in `recipient_key`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.audience.blocks import ReadLimits
from pipeline.audience.consent import parse_opt_in
from pipeline.audience.load import load_audience
from pipeline.audience.numbers import suppression_detail
from pipeline.audience.windows import outside_window
from pipeline.records import empty_rejects, make_rejects
from pipeline.render.limits import RenderLimits
from pipeline.render.prepare import Prepared, escape_formulas
from pipeline.render.templates import render_messages
from pipeline.spec import TemplateSpec

# channel -> the audience column holding its address
ID_COLUMNS = {"messenger": "user_id", "instagram": "user_id", "viber": "user_id", "email": "email"}
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
_META_ID = re.compile(r"^\d{5,32}$")
_VIBER_ID = re.compile(r"^[A-Za-z0-9+/=]{8,64}$")


# Chat App channel types whose recipients are ids (Alibaba's SendChatappMessage `To`: a Messenger PSID, an
# Instagram user id); its WhatsApp and Viber recipients are phone numbers.
CHATAPP_ID_TYPES = frozenset({"messenger", "instagram"})


def uses_ids(channel: str) -> bool:
    return channel in ID_COLUMNS


def id_channel(channel: str, options: Mapping[str, Any] | None = None) -> str | None:
    """The id channel a campaign's recipients are prepared as (Chat App to Messenger or Instagram is
    prepared as that channel: user ids, its window), or None for phone numbers."""
    if channel in ID_COLUMNS:
        return channel
    kind = (options or {}).get("channel_type")
    return str(kind) if channel == "chatapp" and kind in CHATAPP_ID_TYPES else None


def _valid(channel: str) -> pl.Expr:
    column = pl.col("recipient_key")
    if channel == "email":
        return column.str.contains(_EMAIL.pattern)
    if channel == "viber":
        return column.str.contains(_VIBER_ID.pattern)
    return column.str.contains(_META_ID.pattern)


def prepare_ids(
    path: Path | str, *, channel: str, category: str, template: TemplateSpec | None = None,
    variables: dict[str, str] | None = None, suppressed: Mapping[str, str] | frozenset[str] | set[str] = frozenset(),
    last_inbound: dict[str, datetime] | None = None, now: datetime | None = None,
    message_tag: str | None = None, out_dir: Path | None = None, read_limits: ReadLimits | None = None,
    render_limits: RenderLimits | None = None,
) -> Prepared:
    column = ID_COLUMNS[channel]
    loaded = load_audience(path, required=(column, "opt_in"), limits=read_limits)
    frame = loaded.frame.with_columns(
        pl.col(column).str.strip_chars().alias("recipient_key"), parse_opt_in().alias("_opt_in"),
    )
    if channel == "email":  # addresses compare case-insensitively in practice
        frame = frame.with_columns(pl.col("recipient_key").str.to_lowercase())
    parts = [loaded.rejects]

    def reject(mask: pl.Expr, reason: str, detail: pl.Expr | str) -> None:
        nonlocal frame
        parts.append(make_rejects(frame.filter(mask), reason, detail))  # type: ignore[arg-type]
        frame = frame.filter(~mask)

    reject(pl.col("recipient_key").is_null() | (pl.col("recipient_key") == ""), "bad_row", f"{column} is empty")
    reject(pl.col("_opt_in").is_null(), "bad_row",
           pl.format("opt_in value '{}' is not yes/no, true/false, 1/0 or y/n", pl.col("opt_in").fill_null("")))
    reject(~_valid(channel), "invalid_number" if channel != "email" else "bad_row",
           pl.format("{} '{}' is not a valid {} address", pl.lit(column), pl.col("recipient_key"), pl.lit(channel)))
    if category == "marketing":
        reject(~pl.col("_opt_in"), "no_opt_in", "opt_in is no and the template is marketing")
    if suppressed:
        reasons = suppressed if isinstance(suppressed, Mapping) else None  # address -> why, when the caller knows
        reject(pl.col("recipient_key").is_in(list(suppressed)), "suppressed",
               suppression_detail(channel, reasons, column="recipient_key"))
    first = pl.col("row_number").min().over("recipient_key")
    reject(pl.col("row_number") != first, "duplicate", pl.format("same {} as row {}", pl.lit(column), first))
    if channel in ("messenger", "instagram"):
        frame, outside = outside_window(
            frame, user_column="recipient_key", last_inbound=last_inbound or {}, now=now or datetime.now(UTC),
            category=category, message_tag=message_tag,  # type: ignore[arg-type]
        )
        parts.append(outside)
    frame = frame.drop("_opt_in").with_columns(
        pl.lit(None, dtype=pl.String).alias("phone_e164"), pl.lit(None, dtype=pl.String).alias("region"),
        pl.lit(None, dtype=pl.String).alias("number_type"),
    )
    if template is not None:
        limits = render_limits if render_limits is not None else RenderLimits.for_channel(channel)
        frame, render_rejects = render_messages(frame, template, variables or {}, limits)
        parts.append(render_rejects)
    rejects = pl.concat([p.select("row_number", "reason", "detail") for p in parts if p.height] or [empty_rejects()])
    rejects = rejects.sort("row_number").join(loaded.frame, on="row_number", how="left")
    counts = dict(rejects.group_by("reason").len().iter_rows())
    prepared = Prepared(accepted=frame, rejects=rejects, rows_read=loaded.rows_read, counts=counts,
                        accepted_rows=frame.height)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(out_dir / "accepted.parquet")
        rejects.write_parquet(out_dir / "rejects.parquet")
        escape_formulas(rejects).write_csv(out_dir / "rejects.csv")
    return prepared
