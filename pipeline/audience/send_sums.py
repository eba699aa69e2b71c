"""The frequency cap's counts per recipient over the closed hours of its window, kept once per cap (migration 0013).

Counting a week of sends from the send history's blobs (pipeline/audience/send_history.py) decompresses, filters and
sorts millions of keys: ~0.6 s of CPU for 10M sends, on every preparation and every dispatch start. Until an hour
closes or a blob changes the counts are the same, so the first read keeps them (`keep`), sorted by recipient, and
the next reads take them (`counted`): a few MB instead of a few hundred blobs.

A row is used only while every blob it was counted from is the current one: each blob gets a new version each
time it is stored, triggers delete a blob whose sends change, and the row keeps a digest of the (hour, channel,
version) it counted, compared with the store's on every read. A row is per cap: its channels, its categories, and
the campaigns left out (a resumed campaign's own sends; Chat App campaigns sent over another app) among those the
blobs hold (a campaign with no send in the window leaves nothing out, so every new campaign shares one row).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
from sqlalchemy.exc import DBAPIError

from pipeline.audience import send_history
from pipeline.audience.send_history import Sends
from pipeline.store import Store, StoreError, dialect, run

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Counts:
    """Sends per recipient: plain E.164 keys as Int64 digits (`numbers`) and the rest as text (`others`), each a
    frame (value, len) sorted by value, one row per recipient."""

    numbers: pl.DataFrame
    others: pl.DataFrame

    @classmethod
    def of(cls, sends: Sends) -> Counts:
        """Counted by runs of the sorted keys (for a week's 4.2M sends 0.12 s, where a group-by took 0.31 s)."""
        return cls(_runs(sends.numbers), _runs(sends.others))

    def reaching(self, live: pl.Series, times: int, plain: bool) -> pl.Series:
        """The keys with at least `times` sends, counting these and `live` (the sends of the window no blob holds,
        each key once per send)."""
        counted = self.numbers if plain else self.others
        capped = counted.filter(pl.col("len") >= times)["value"]
        if live.len() == 0:
            return capped.rename("key")
        runs, values = _runs(live), counted["value"]
        if values.len():  # each live key's kept count, found in the sorted values (a join hashed them all: ~0.1 s)
            at = values.search_sorted(runs["value"]).clip(0, values.len() - 1)
            kept = counted["len"].gather(at) * (values.gather(at) == runs["value"]).cast(pl.UInt32)
        else:
            kept = pl.repeat(0, runs.height, dtype=pl.UInt32, eager=True)
        more = runs.with_columns(kept=kept).filter(pl.col("kept") < times,
                                                   pl.col("len") + pl.col("kept") >= times)["value"]
        return pl.concat([capped, more]).rename("key")


def _runs(keys: pl.Series) -> pl.DataFrame:
    runs = keys.sort().rle()
    return pl.DataFrame({"value": runs.struct.field("value"), "len": runs.struct.field("len").cast(pl.UInt32)})


def cap_key(hours: int, channels: Sequence[str], categories: Sequence[str], left_out: Mapping[str, set[str]]) -> str:
    """The row's key: a prefix naming the cap's window (in hours), channels and categories, then the campaigns left
    out. (Two caps that differ in their window only, a team's 24 h and a spec's 7 days, keep a row each.)"""
    return _prefix(hours, channels, categories) + json.dumps({c: sorted(s) for c, s in sorted(left_out.items()) if s})


def _prefix(hours: int, channels: Sequence[str], categories: Sequence[str]) -> str:
    return json.dumps([hours, sorted(channels), sorted(categories)]) + "|"


def digest(covered: Mapping[tuple[str, str], str | None]) -> str:
    """What the counts were counted from: every (hour, channel) blob and its version."""
    text = "\n".join(f"{h}\t{c}\t{v or ''}" for (h, c), v in sorted(covered.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def counted(db: Store, hours: Sequence[str], channels: Sequence[str], categories: Sequence[str],
            excluded: Mapping[str, set[str]]) -> tuple[Counts, dict[tuple[str, str], str | None]] | None:
    """The kept counts of these closed hours' blobs for this cap and the (hour, channel) blobs they cover, when a row
    was counted from exactly the blobs the store holds for them now; else None (the caller counts the blobs). Hours
    without a blob (one closed minutes ago, not storable yet: dialect.HISTORY_MARGIN) are the caller's to read."""
    if not hours or not channels:
        return None
    with db.read() as conn:
        current = {(h, c): v for h, c, v, _ in dialect.history_blobs(conn, channels, min(hours), max(hours),
                                                                     data=False)}
    wanted = {(h, c) for h in hours for c in channels}
    current = {pair: v for pair, v in current.items() if pair in wanted}
    if not current:
        return None
    prefix, made_from = _prefix(len(hours), channels, categories), digest(current)
    rows = db.rows("SELECT cap, campaigns FROM send_history_sums WHERE substr(cap, 1, :n) = :prefix "
                   "AND blobs = :blobs", n=len(prefix), prefix=prefix, blobs=made_from)
    if not rows:
        return None
    held = json.loads(rows[0][1])  # the same blobs: the same campaigns in them
    key = cap_key(len(hours), channels, categories, _left_out(excluded, held))
    if key not in {cap for cap, _ in rows}:
        return None
    # Again with the digest: another process may have replaced the row since (counted from other blobs).
    data = db.scalar("SELECT data FROM send_history_sums WHERE cap = :cap AND blobs = :blobs", cap=key, blobs=made_from)
    return (_decode(bytes(data)), current) if data is not None else None


def keep(db: Store, hours: Sequence[str], channels: Sequence[str], categories: Sequence[str],
         excluded: Mapping[str, set[str]], sends: Sends, counts: Counts) -> None:
    """Keeps `counts` (of `sends`, the blobs of the window's closed `hours` it read) for the next reads, replacing
    this cap's rows counted from other blobs. A store that cannot be written, or whose writers hold it longer than
    the send history waits for them, keeps none: the next read counts again."""
    held = {c: sorted(s) for c, s in sends.campaigns.items()}
    key = cap_key(len(hours), channels, categories, _left_out(excluded, held))
    prefix = _prefix(len(hours), channels, categories)
    made_from = digest(sends.covered)
    try:
        with dialect.bounded_write(db.engine, send_history.LOCK_WAIT_S) as conn:
            run(conn, "DELETE FROM send_history_sums WHERE substr(cap, 1, :n) = :prefix AND blobs <> :blobs",
                n=len(prefix), prefix=prefix, blobs=made_from)
            run(conn, "INSERT INTO send_history_sums (cap, blobs, campaigns, data) VALUES (:cap, :blobs, :campaigns, "
                      ":data) ON CONFLICT (cap) DO UPDATE SET blobs = excluded.blobs, campaigns = excluded.campaigns, "
                      "data = excluded.data",
                cap=key, blobs=made_from, campaigns=json.dumps(held), data=_encode(counts))
    except (StoreError, DBAPIError) as exc:
        log.warning("cap counts not kept (%s); the next read counts again", str(exc).splitlines()[0])


def _left_out(excluded: Mapping[str, set[str]], held: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    """The campaigns left out that the blobs hold sends of: the others change nothing."""
    return {c: set(out) & set(held.get(c, ())) for c, out in excluded.items() if set(out) & set(held.get(c, ()))}


def _encode(counts: Counts) -> bytes:
    table = pl.concat([
        counts.numbers.select(pl.col("value").alias("number"), pl.lit(None, pl.String).alias("other"), "len"),
        counts.others.select(pl.lit(None, pl.Int64).alias("number"), pl.col("value").cast(pl.String).alias("other"),
                             "len"),
    ]).to_arrow()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _decode(data: bytes) -> Counts:
    frame = pl.from_arrow(pa.ipc.open_stream(data).read_all())
    assert isinstance(frame, pl.DataFrame)
    plain = pl.col("number").is_not_null()
    return Counts(frame.filter(plain).select(pl.col("number").alias("value"), "len"),
                  frame.filter(~plain).select(pl.col("other").alias("value"), "len"))
