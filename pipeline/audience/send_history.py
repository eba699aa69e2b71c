"""The outbox's sends of each closed hour per channel, kept in columns for the frequency cap (migration 0012).

A closed hour's blob holds the sends the cap may count (a `sent_at` in the hour, state `sent` or `unknown`): the
recipient as Int64 digits when it is plain E.164 (`number`) or as text (`other`), its category and its campaign,
as Arrow IPC compressed with zstd. Reading a week of 10M sends this way is a few hundred blobs, where the outbox's
index holds millions of entries to walk.

Correctness rests on two things. Triggers on the outbox (pipeline/store/dialect.py `history_triggers`) delete an
hour's blob whenever a send of a closed hour changes, appears or goes (a reconciliation, a retry, an import, a
deletion); and an hour is read and stored in one transaction that holds those deletes back (`history_write`), so a
change committed meanwhile either is in the blob or deletes it after. Hours are closed by the database's clock, and
stored only some minutes after they closed (`dialect.HISTORY_MARGIN`).
Whatever is not in a blob (the open hour, a deleted blob, a store that cannot be written) is read from the outbox
by the caller.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.exc import DBAPIError

from pipeline.audience.address_sets import PLAIN_E164
from pipeline.store import Store, StoreError, dialect, run

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
# Hours built per write transaction: each holds the store's writers back while its hours are read (a few ms an hour).
HOURS_PER_TRANSACTION = 6
# Hours older than this are not kept (a cap reaching further back reads them from the outbox): the team's
# settings `send_history.keep_days` (pipeline/data/controls.yaml).
KEEP = timedelta(days=35)
LOCK_WAIT_S = 2.0  # how long storing hours waits for the store's writers; past it the cap reads the outbox
SCHEMA = {"number": pl.Int64, "other": pl.String, "category": pl.String, "campaign_id": pl.String}


def hour_key(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H")


def hour_start(key: str) -> datetime:
    return datetime.strptime(key, "%Y-%m-%d %H").replace(tzinfo=UTC)


def hours_between(low: datetime, high: datetime) -> list[str]:
    """The hours wholly inside [low, high)."""
    first = low.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if first < low:
        first += HOUR
    keys = []
    while first + HOUR <= high:
        keys.append(hour_key(first))
        first += HOUR
    return keys


@dataclass
class Sends:
    """The keys of the sends read from blobs (plain E.164 as Int64 digits, the rest as text), the (hour, channel)
    pairs the blobs covered with each blob's version, and the campaigns each channel's blobs hold."""

    numbers: pl.Series
    others: pl.Series
    covered: dict[tuple[str, str], str | None]
    campaigns: dict[str, set[str]] = field(default_factory=dict)

    def with_(self, more: Sends) -> Sends:
        campaigns = {c: self.campaigns.get(c, set()) | more.campaigns.get(c, set())
                     for c in self.campaigns.keys() | more.campaigns.keys()}
        return Sends(pl.concat([self.numbers, more.numbers]), pl.concat([self.others, more.others]),
                     self.covered | more.covered, campaigns)


def read(db: Store, hours: Sequence[str], channels: Sequence[str], categories: Sequence[str], *,
         excluded: Mapping[str, set[str]] | None = None, skip: Iterable[tuple[str, str]] | None = None) -> Sends:
    """The keys of the sends of `categories` (not of a channel's `excluded` campaigns) in the blobs of `hours` x
    `channels` that exist, but those of the (hour, channel) pairs in `skip`. Each blob is filtered on its
    dictionaries (a few categories and campaigns) before its keys are taken: no text per send is made."""
    numbers: list[pa.Array] = []
    others: list[pa.Array] = []
    covered: dict[tuple[str, str], str | None] = {}
    campaigns: dict[str, set[str]] = {}
    if hours and channels:
        with db.read() as conn:
            rows = dialect.history_blobs(conn, channels, min(hours), max(hours))
        wanted, skip = set(hours), set(skip or ())
        allowed = _texts(categories)
        away = {c: _texts(sorted(out)) for c, out in (excluded or {}).items() if out}
        for hour, channel, version, data in rows:
            if hour not in wanted or (hour, channel) in skip:
                continue
            covered[(hour, channel)] = version
            table = pa.ipc.open_stream(data).read_all()
            if not table.num_rows:
                continue
            held = campaigns.setdefault(channel, set())
            for chunk in table["campaign_id"].chunks:  # the dictionary: a few campaigns, not a value per send
                held.update(chunk.dictionary.to_pylist())
            keep = _where(table["category"], lambda d: pc.is_in(d, value_set=allowed))
            if channel in away:
                kept_out = away[channel]
                keep = pc.and_(keep, _where(table["campaign_id"],
                                            lambda d, out=kept_out: pc.invert(pc.is_in(d, value_set=out))))
            numbers.append(pc.drop_null(pc.filter(table["number"], keep)).combine_chunks())
            if table["other"].null_count < table.num_rows:  # a phone channel's blob has none
                others.append(pc.drop_null(pc.filter(table["other"], keep)).combine_chunks())
    return Sends(_series(numbers, pl.Int64), _series(others, pl.String), covered, campaigns)


def _texts(values: Iterable[str]) -> pa.Array:
    """Values to test a dictionary against, made by Polars: pyarrow's `pa.array` of Python objects imports pandas on
    its first call in a process (~0.2 s of a cold preparation, holding the interpreter while the audience waits)."""
    return pl.Series(list(values), dtype=pl.String).to_arrow()


def _where(column: pa.ChunkedArray, test: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """`test` of a dictionary column, evaluated once per distinct value and spread over the rows: null where the
    row's value is null, which `pc.and_` keeps null and `pc.filter` drops (no `fill_null`: its Python scalar, like
    any of pyarrow's first conversions of Python values, imports pandas, ~0.2 s)."""
    codes = column.combine_chunks()
    return pc.take(test(codes.dictionary), codes.indices)


def _series(parts: list[pa.Array], dtype: pl.DataType) -> pl.Series:
    if not parts:
        return pl.Series("key", [], dtype=dtype)
    return pl.Series("key", pa.chunked_array(parts), dtype=dtype)


def encode(frame: pl.DataFrame) -> bytes:
    """A blob: SCHEMA's columns as Arrow IPC (zstd), category and campaign dictionary-encoded."""
    table = frame.to_arrow()
    for name in ("category", "campaign_id"):
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pc.dictionary_encode(table[name].cast(pa.string())))
    for name in ("number", "other"):
        table = table.set_column(table.schema.get_field_index(name), name,
                                 table[name].cast(pa.int64() if name == "number" else pa.string()))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def build(db: Store, hours: Iterable[str], channels: Sequence[str], keep: timedelta = KEEP) -> int:
    """Stores the blobs of the closed ones among `hours` x `channels` not stored yet, within `keep` of now, and
    deletes those older than that; returns how many it stored. A store that cannot be written (read-only file, a
    replica) stores none: the caller reads the outbox instead."""
    try:
        current = db.scalar(dialect.storable_before_sql(db.dialect))
        oldest = hour_key(hour_start(current) - keep)
        closed = sorted(h for h in set(hours) if oldest <= h < current)
        stored = 0
        for i in range(0, len(closed), HOURS_PER_TRANSACTION):
            stored += _build_some(db, closed[i : i + HOURS_PER_TRANSACTION], channels)
        if stored:
            # A new hour stored: the window of every cap moved on, so every count kept before (send_sums.py) is
            # counted again at its next read; deleted here, a row of a cap no longer used does not stay for ever.
            with dialect.bounded_write(db.engine, LOCK_WAIT_S) as conn:
                run(conn, "DELETE FROM send_history WHERE hour < :oldest", oldest=oldest)
                run(conn, "DELETE FROM send_history_sums")
        return stored
    except (StoreError, DBAPIError) as exc:
        log.warning("send history not stored (%s); the cap reads the outbox", str(exc).splitlines()[0])
        return 0


def _build_some(db: Store, hours: list[str], channels: Sequence[str]) -> int:
    with dialect.history_write(db.engine, LOCK_WAIT_S) as conn:
        have = {(h, c) for h, c in run(conn, "SELECT hour, channel FROM send_history WHERE channel IN :channels "
                                             "AND hour >= :low AND hour <= :high", channels=list(channels),
                                       low=hours[0], high=hours[-1]).all()}
        todo = [(h, c) for h in hours for c in channels if (h, c) not in have]
        joined = dialect.joined_rows(db.dialect, ["recipient_key", "coalesce(category, '')", "campaign_id"])
        for hour, channel in todo:
            start = hour_start(hour)
            text = run(conn, f"SELECT {joined} FROM outbox WHERE channel = :channel AND sent_at >= :low "
                             "AND sent_at < :high AND state IN ('sent', 'unknown')",
                       channel=channel, low=start, high=start + HOUR).scalar()
            frame = parse(text)
            # A new version each time: counts kept from the blob before (send_sums.py) no longer match it.
            run(conn, "INSERT INTO send_history (hour, channel, sends, data, version) VALUES (:hour, :channel, "
                      ":sends, :data, :version)",
                hour=hour, channel=channel, sends=frame.height, data=encode(frame), version=secrets.token_hex(8))
        return len(todo)


def parse(text: str | None) -> pl.DataFrame:
    """The store's joined rows (key, category, campaign) as SCHEMA."""
    if not text:
        return pl.DataFrame(schema=SCHEMA)
    parts = (pl.Series("row", [text]).str.split(dialect.KEY_SEPARATOR).explode()
             .str.split_exact(dialect.FIELD_SEPARATOR, 2).struct.rename_fields(["key", "category", "campaign_id"])
             .struct.unnest())
    plain = parts["key"].str.contains(PLAIN_E164).fill_null(False)  # as address_sets.split_plain splits them
    frame = parts.with_columns(
        number=pl.when(plain).then(pl.col("key").str.slice(1).cast(pl.Int64, strict=False)),
        other=pl.when(plain).then(None).otherwise(pl.col("key")),
        category=pl.when(pl.col("category") == "").then(None).otherwise(pl.col("category")),
    )
    return frame.select(SCHEMA.keys()).cast(SCHEMA)  # type: ignore[arg-type]
