"""`campaign conversions import FILE`: outcomes of a campaign (recipient, converted_at, value) into the store's
`conversions`, read row by row with every bad row named by file, row and field; all or nothing, and importing the
same file again adds nothing (a recipient's conversion at one time is one row). The report
(pipeline/costs/uplift.py) counts a recipient as converted when it has one.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from pipeline.costs.billing import chatapp_channel
from pipeline.render.prepare_ids import id_channel
from pipeline.spec import positive_setting
from pipeline.store import Store
from pipeline.store.bulk import insert_frame

MAX_ROWS_ENV = "CAMPAIGN_CONVERSIONS_MAX_ROWS"
DEFAULT_MAX_ROWS = 5_000_000
MAX_FIELD_CHARS = 256  # a recipient key, a time or a number: anything longer is not one
MAX_ERRORS_SHOWN = 20
REQUIRED = ("recipient", "converted_at")
_PHONE = re.compile(r"^\+?[\d\s().-]{6,32}$")


class ConversionsError(ValueError):
    """A conversions file that cannot be imported: one line per bad row (file, row, field), or the file's fault."""


@dataclass(frozen=True)
class Imported:
    rows: int
    added: int  # rows new to the store (a re-import adds none)
    unknown: int  # recipients the campaign never had (stored, but counted in no arm)


def _recipient(raw: str, ids: str | None) -> str:
    """The key the outbox has for this recipient of a campaign sending to `ids` (pipeline/render/prepare_ids.py:
    `id_channel`, None for phone numbers): a phone number in E.164 (+ and digits); on an id channel the address
    as prepare_ids makes it (stripped; an e-mail address lower-cased), never read as a phone number, since a
    Messenger or Instagram id is digits too."""
    if ids is None:
        return "+" + re.sub(r"\D", "", raw) if _PHONE.match(raw) else raw
    return raw.lower() if ids == "email" else raw


def _time(raw: str) -> datetime:
    value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def read_conversions(path: Path, *, max_rows: int | None = None, ids: str | None = None) -> pl.DataFrame:
    """recipient_key, converted_at, value of every row; ConversionsError naming each bad one. `ids`: the id channel
    the campaign's recipients are keyed by (see `_recipient`), None for phone numbers."""
    max_rows = max_rows or positive_setting(MAX_ROWS_ENV, DEFAULT_MAX_ROWS)
    errors: list[str] = []
    keys, times, values = [], [], []
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise ConversionsError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        reader = csv.reader(handle)
        try:
            header = [h.strip().lower() for h in next(reader, [])]
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise ConversionsError(f"{path}: row 1: the header lacks {', '.join(missing)} (it has {header})")
            at = {name: header.index(name) for name in (*REQUIRED, "value") if name in header}
            for row_number, row in enumerate(reader, start=2):
                if row_number - 1 > max_rows:
                    raise ConversionsError(f"{path}: more than {max_rows:,} rows ({MAX_ROWS_ENV} raises the bound)")
                if not any(cell.strip() for cell in row):
                    continue
                problem, parsed = _parse_row(row, at, ids)
                if problem:
                    errors.append(f"{path}: row {row_number}: {problem}")
                    continue
                keys.append(parsed[0])
                times.append(parsed[1])
                values.append(parsed[2])
        except UnicodeDecodeError as exc:
            raise ConversionsError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
        except csv.Error as exc:
            raise ConversionsError(f"{path}: row {reader.line_num}: {exc}") from None
    if errors:
        more = f"\n... and {len(errors) - MAX_ERRORS_SHOWN} more" if len(errors) > MAX_ERRORS_SHOWN else ""
        raise ConversionsError("\n".join(errors[:MAX_ERRORS_SHOWN]) + more)
    frame = pl.DataFrame({"recipient_key": keys, "converted_at": times, "value": values},
                         schema={"recipient_key": pl.String, "converted_at": pl.Datetime("us", "UTC"),
                                 "value": pl.Float64})
    return frame.unique(["recipient_key", "converted_at"], keep="first", maintain_order=True)


def _parse_row(row: list[str], at: dict[str, int], ids: str | None = None
               ) -> tuple[str | None, tuple[str, datetime, float | None]]:
    cells = {name: (row[i].strip() if i < len(row) else "") for name, i in at.items()}
    for name, cell in cells.items():
        if len(cell) > MAX_FIELD_CHARS:
            return f"field {name}: longer than {MAX_FIELD_CHARS} characters", ("", datetime.min, None)
    if not cells["recipient"]:
        return "field recipient: empty", ("", datetime.min, None)
    try:
        when = _time(cells["converted_at"])
    except ValueError:
        return f"field converted_at: not an ISO 8601 time ({cells['converted_at']!r})", ("", datetime.min, None)
    value = None
    if cells.get("value"):
        try:
            value = float(cells["value"])
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            return f"field value: not a number of at least 0 ({cells['value']!r})", ("", datetime.min, None)
    return None, (_recipient(cells["recipient"], ids), when, value)


def import_conversions(db: Store, campaign_id: str, path: Path, *, max_rows: int | None = None) -> Imported:
    """Reads the whole file first (nothing is stored when any row is bad), then adds its rows in one transaction."""
    channel = db.scalar("SELECT channel FROM campaigns WHERE campaign_id = :c", c=campaign_id)
    if channel is None:
        raise ConversionsError(f"--campaign: no campaign {campaign_id!r} in the store")
    # Keyed as the campaign's preparation keyed its recipients (a Chat App campaign by the channel it sends on).
    ids = id_channel(channel, {"channel_type": chatapp_channel(db, campaign_id)})
    frame = read_conversions(path, max_rows=max_rows, ids=ids)
    rows = frame.select(pl.lit(campaign_id).alias("campaign_id"), "recipient_key", "converted_at", "value",
                        pl.lit(f"import:{path.name}"[:200]).alias("source"))
    known = {k for (k,) in db.rows("SELECT recipient_key FROM experiment_arms WHERE campaign_id = :c UNION "
                                   "SELECT recipient_key FROM recipients WHERE campaign_id = :c", c=campaign_id)}
    with db.write() as conn:
        added = insert_frame(conn, "conversions", rows, on_conflict="ignore")
    unknown = frame.filter(~pl.col("recipient_key").is_in(list(known)))["recipient_key"].n_unique()
    return Imported(rows=frame.height, added=added, unknown=unknown)
