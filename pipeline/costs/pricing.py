"""Prices as dated data: rate cards, pricing rules, service fees and volume tiers, read from CSV into the store.

A card is every price of one channel from one effective date (Meta publishes whole cards); the card in
force on a message's price day prices it, so an older campaign is priced by the card and rules of its day.
Shipped data lives in pipeline/data/ (listed in rate_cards.csv); `import_card` adds a card from any file.
A file is read whole (at most CAMPAIGN_PRICES_MAX_BYTES) and checked row by row before the store is touched:
a bad one is a PriceDataError of one line naming the file, the row and the field (not UTF-8, a short row, a
missing column, a rate that is not a finite number of at most the store's decimal places, a duplicate, volume
tiers that overlap or leave a gap), its rows bounded by CAMPAIGN_PRICES_MAX_ROWS. Its rows replace those of the same
key in one write transaction (pipeline.store.bulk.insert_frame), so a report never sees half a card and a refused
card changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Literal

import polars as pl
from sqlalchemy import Connection

from pipeline.costs.price_files import (  # noqa: F401 (the bounds, the error and read_csv, as callers know them)
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ROWS,
    MAX_BYTES_ENV,
    MAX_FIELD_CHARS,
    MAX_ROWS_ENV,
    PriceDataError,
    Row,
    Table,
    read_csv,
    read_table,
    show,
)
from pipeline.store import Store, run, run_many
from pipeline.store.bulk import insert_frame

DATA = Path(__file__).resolve().parents[1] / "data"
RATE_CARDS = DATA / "rate_cards.csv"
RULES = DATA / "pricing_rules.csv"
SERVICE_FEES = DATA / "service_fees.csv"
WHATSAPP_CARD = DATA / "whatsapp-rates-2026-10-usd.csv"
WHATSAPP_MARKETS = DATA / "whatsapp_markets.csv"

POINT_USD = Decimal("0.0001")  # ChatApp points: 1 point = USD 0.0001 (docs/providers.md 3.6)
WILDCARD = "*"  # the market of a card row that prices every destination the card does not list
WILDCARD_NAMES = frozenset({"Default", "All", WILDCARD})
CHANNELS = ("whatsapp", "messenger", "instagram", "viber", "sms", "email", "chatapp")
BASES = ("delivered", "sent", "segment", "none")
# Columns of a WhatsApp card (Meta's CSV shape) -> the category they price.
WHATSAPP_COLUMNS = {
    "marketing_usd": "marketing", "utility_usd": "utility", "authentication_usd": "authentication",
    "authentication_international_usd": "authentication_international",
}

CardKind = Literal["whatsapp_card", "rates", "tiers", "service_fees"]
# The columns each kind of file needs (to_messages of a tier is optional: an open top tier).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "whatsapp_card": ("market",), "rates": ("market", "category", "platform_fee_usd"),
    "tiers": ("market", "category", "from_messages", "platform_fee_usd"), "service_fees": ("fee_points",)}

# The amounts as the cards hold them (the store's Money is NUMERIC(18, 6)): a rate with more decimal places, or
# more digits before the point, is refused rather than rounded or stored as NULL.
USD = pl.Decimal(12, 6)
POINTS = pl.Decimal(12, 2)
_MAX_COUNT = 2**63 - 1  # from/to_messages: the store's BIGINT


@dataclass(frozen=True)
class Card:
    channel: str
    kind: CardKind
    effective_from: date
    source: str
    rows: pl.DataFrame  # prices: market, category, platform_fee_usd; tiers: + from/to_messages; fees: fee_points


def read_card(
    path: Path, *, channel: str = "whatsapp", effective_from: date | None = None, kind: CardKind | None = None,
    source: str | None = None, max_bytes: int | None = None, max_rows: int | None = None,
) -> Card:
    """Reads and checks one price file. The kind follows from its header, the date from the argument,
    a `# effective_from: YYYY-MM-DD` comment, or a YYYY-MM(-DD) in the file name (first of the month).
    The bounds default to CAMPAIGN_PRICES_MAX_BYTES and CAMPAIGN_PRICES_MAX_ROWS."""
    path = Path(path)
    if channel not in CHANNELS:
        raise PriceDataError(f"{path.name}: unknown channel {channel!r} (one of {', '.join(CHANNELS)})")
    table = read_table(path, strict=True, max_bytes=max_bytes, max_rows=max_rows)
    kind = kind or _kind_of(path, set(table.header))
    missing = [c for c in REQUIRED_COLUMNS[kind] if c not in table.header]
    if missing:
        raise PriceDataError(f"{path.name} row 1: no {missing[0]} column (the header has "
                             f"{', '.join(table.header)})")
    day = effective_from or _date_of(path, table)
    rows = table.rows
    if kind == "whatsapp_card":
        frame = _whatsapp_rows(path, rows)
    elif kind == "tiers":
        frame = _tier_rows(path, rows)
    elif kind == "service_fees":
        if len(rows) > 1:
            raise PriceDataError(f"{path.name} row {rows[1][0]}: a service-fee file holds exactly one row "
                                 "(fee_points)")
        frame = pl.DataFrame({"fee_points": [_decimal(path, i, r, "fee_points", POINTS) for i, r in rows]},
                             schema={"fee_points": POINTS})
        if frame.height != 1:
            raise PriceDataError(f"{path.name}: a service-fee file holds exactly one row (fee_points)")
    else:
        frame = _rate_rows(path, rows)
    if kind != "service_fees" and frame.height == 0:
        raise PriceDataError(f"{path.name}: no price rows")
    return Card(channel=channel, kind=kind, effective_from=day, source=source or path.name, rows=frame)


def load_reference_data(db: Store) -> dict[str, int]:
    """Loads the shipped rules, service fees, WhatsApp markets and every card of rate_cards.csv, in one
    transaction. Idempotent. A shipped card never overwrites a card imported for the same channel and date,
    and a corrected shipped file replaces its own earlier rows on the next load.
    """
    entries = read_csv(RATE_CARDS)
    cards = [read_card(DATA / e["file"], channel=e["channel"], kind=e["kind"],  # type: ignore[arg-type]
                       effective_from=date.fromisoformat(e["effective_from"]), source=e["file"]) for e in entries]
    fees = [Card(r["channel"], "service_fees", date.fromisoformat(r["effective_from"]), r["source"],
                 pl.DataFrame({"fee_points": [Decimal(r["fee_points"])]}, schema={"fee_points": pl.Decimal(12, 2)}))
            for r in read_csv(SERVICE_FEES)]
    with _transaction(db) as conn:
        counts = {"rules": _load_rules(conn, read_csv(RULES)), "markets": _load_markets(conn, WHATSAPP_MARKETS)}
        counts["service_fees"] = sum(_store(conn, fee, replace_imported=False) for fee in fees)
        counts["prices"] = sum(_store(conn, c, replace_imported=False) for c in cards if c.kind != "tiers")
        counts["tiers"] = sum(_store(conn, c, replace_imported=False) for c in cards if c.kind == "tiers")
    return counts


def import_card(
    db: Store, path: Path, *, channel: str = "whatsapp", effective_from: date | None = None
) -> Card:
    """Adds (or replaces) the card of `channel` from `effective_from`: read_import, then store_import."""
    card = read_import(path, channel=channel, effective_from=effective_from)
    store_import(db, card)
    return card


def read_import(path: Path, *, channel: str = "whatsapp", effective_from: date | None = None) -> Card:
    """A card to import, read and checked whole before the store is opened (`campaign prices import`)."""
    return read_card(path, channel=channel, effective_from=effective_from, source=f"import:{Path(path).name}")


def store_import(db: Store, card: Card) -> None:
    """Replaces the card of its channel and date in one transaction; a card refused here (a category no rule
    bills, a mapped market it lacks) leaves the store as it was."""
    with _transaction(db) as conn:
        _check_categories(conn, card)
        _store(conn, card, replace_imported=True)


def store_card(db: Store, card: Card, *, replace_imported: bool = True) -> int:
    """Writes a card as one whole: the rows of (channel, date) are replaced, in one transaction."""
    with _transaction(db) as conn:
        return _store(conn, card, replace_imported=replace_imported)


def _store(conn: Connection, card: Card, *, replace_imported: bool) -> int:
    table = {"whatsapp_card": "prices", "rates": "prices", "tiers": "price_tiers", "service_fees": "service_fees"}[
        card.kind]
    if card.kind == "whatsapp_card":
        _check_markets(conn, card)
    key = {"channel": card.channel, "day": card.effective_from}
    imported = run(conn, f"SELECT count(*) FROM {table} WHERE channel = :channel AND effective_from = :day "
                         "AND source LIKE 'import:%'", **key).scalar()
    if imported and not replace_imported:
        return 0
    frame = card.rows.with_columns(pl.lit(card.channel).alias("channel"), pl.lit(card.effective_from).alias(
        "effective_from"), pl.lit(card.source).alias("source"))
    if table == "prices":
        frame = frame.with_columns(pl.lit(Decimal("0")).cast(pl.Decimal(12, 6)).alias("service_fee_usd"))
    _replace(conn, table, "channel = :channel AND effective_from = :day", key, frame)
    if table in ("prices", "service_fees"):
        _fill_card_service_fees(conn, card.channel)
    return frame.height


def _fill_card_service_fees(conn: Connection, channel: str) -> None:
    """Fees live in service_fees; the older `prices.service_fee_usd` column stays filled (the fee in force on
    each card's date) for readers that still take it from there. Worked out here in exact decimals (SQLite
    would multiply its decimal text as floats)."""
    fees = sorted((_day(d), Decimal(str(p))) for d, p in run(
        conn, "SELECT effective_from, fee_points FROM service_fees WHERE channel = :c", c=channel).all())
    cards = [_day(d) for (d,) in run(conn, "SELECT DISTINCT effective_from FROM prices WHERE channel = :c",
                                     c=channel).all()]
    updates = []
    for card_day in cards:
        points = [p for since, p in fees if since <= card_day]
        updates.append({"fee": (points[-1] * POINT_USD) if points else Decimal(0), "c": channel, "day": card_day})
    run_many(conn, "UPDATE prices SET service_fee_usd = :fee WHERE channel = :c AND effective_from = :day", updates)


def _day(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


def set_service_fee(
    db: Store, channel: str, fee_usd: Decimal | float | str, effective_from: date, source: str
) -> None:
    points = Decimal(str(fee_usd)) / POINT_USD
    frame = pl.DataFrame({"fee_points": [points]}, schema={"fee_points": pl.Decimal(12, 2)})
    store_card(db, Card(channel, "service_fees", effective_from, source, frame))


def load_whatsapp_markets(db: Store, path: Path = WHATSAPP_MARKETS) -> int:
    """Region -> WhatsApp market (calling code -> Meta's market, incl. the +1 area codes of Latin America), and
    the country's own market where Meta prices it on its own (used once a card in force has that market)."""
    with _transaction(db) as conn:
        return _load_markets(conn, path)


def _load_markets(conn: Connection, path: Path) -> int:
    rows = [("whatsapp", r["region"], r["market"], r.get("own_market") or None) for r in read_csv(path)]
    frame = pl.DataFrame(rows, orient="row", schema={
        "channel": pl.String, "region": pl.String, "market": pl.String, "own_market": pl.String})
    _replace(conn, "markets", "channel = :channel", {"channel": "whatsapp"}, frame)
    return frame.height


def _load_rules(conn: Connection, rows: list[dict[str, str]]) -> int:
    records = []
    for line, r in enumerate(rows, 2):
        if r["channel"] not in CHANNELS or r["basis"] not in BASES or r["billable"] not in ("true", "false"):
            raise PriceDataError(f"{RULES.name} row {line}: bad channel, basis or billable: {r}")
        records.append({**r, "billable": r["billable"] == "true", "tiered": r["tiered"] == "true",
                        "rate_category": r["rate_category"] or None,
                        "effective_from": date.fromisoformat(r["effective_from"])})
    frame = pl.DataFrame(records)
    _replace(conn, "pricing_rules", "source NOT LIKE 'import:%'", {}, frame)
    return frame.height


_PRICE_DATA_LOCK = 0x70726963  # "pric": PostgreSQL advisory lock of the price-data writers


@contextmanager
def _transaction(db: Store) -> Iterator[Connection]:
    """A write transaction of the price data. On PostgreSQL two loads at once take turns (an advisory lock):
    each deletes then inserts the rows of a key, and the later one's delete would not see the earlier one's
    rows; on SQLite the write transaction already excludes the other writers."""
    with db.write() as conn:
        serialise(conn, _PRICE_DATA_LOCK)
        yield conn


def serialise(conn: Connection, key: int) -> None:
    """Waits for and holds, until this transaction ends, PostgreSQL's advisory lock `key` (no-op on SQLite,
    whose write transactions exclude each other)."""
    if conn.dialect.name == "postgresql":
        run(conn, "SELECT pg_advisory_xact_lock(:key)", key=key)


def _replace(conn: Connection, table: str, where: str, params: dict[str, object], frame: pl.DataFrame) -> None:
    # One bulk insert (insert_frame: executemany on SQLite, COPY on PostgreSQL); the caller holds the transaction.
    run(conn, f"DELETE FROM {table} WHERE {where}", **params)
    insert_frame(conn, table, frame)


def _kind_of(path: Path, header: set[str]) -> CardKind:
    if "marketing_usd" in header:
        return "whatsapp_card"
    if {"from_messages", "platform_fee_usd"} <= header:
        return "tiers"
    if "fee_points" in header:
        return "service_fees"
    if {"market", "category", "platform_fee_usd"} <= header:
        return "rates"
    raise PriceDataError(f"{path.name}: unknown card layout {sorted(header)}; expected market,category,"
                         "platform_fee_usd (or Meta's market,...,marketing_usd,utility_usd,authentication_usd)")


def _date_of(path: Path, table: Table) -> date:
    if table.effective_from:
        line, text = table.effective_from
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise PriceDataError(f"{path.name} row {line}: effective_from {show(text)} is not a day "
                                 "(YYYY-MM-DD)") from None
    found = re.search(r"(\d{4})-(\d{2})(?:-(\d{2}))?(?!\d)", path.name)
    if not found:
        raise PriceDataError(f"{path.name}: no effective date: pass --effective-from, add a "
                             "'# effective_from: YYYY-MM-DD' line, or put YYYY-MM in the file name")
    try:
        return date(int(found.group(1)), int(found.group(2)), int(found.group(3) or 1))
    except ValueError as exc:
        raise PriceDataError(f"{path.name}: file name: {found.group(0)} is not a day ({exc}); pass "
                             "--effective-from YYYY-MM-DD or rename the file") from None


def _decimal(path: Path, line: int, row: Row, column: str, kind: pl.Decimal = USD) -> Decimal:
    """An amount the card's column (and the store) holds exactly: finite, >= 0, at most `kind`'s decimal places and
    digits; anything else is refused, not rounded."""
    raw = row.get(column)
    if raw is None:
        raise PriceDataError(f"{path.name} row {line}: {column} is missing")
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise PriceDataError(f"{path.name} row {line}: {column} is not a number: {show(raw)}") from None
    if not value.is_finite():
        raise PriceDataError(f"{path.name} row {line}: {column} is not a finite number: {show(raw)}")
    if value < 0:
        raise PriceDataError(f"{path.name} row {line}: {column} must be >= 0, got {show(raw.strip())}")
    scale, digits = kind.scale or 0, (kind.precision or 38) - (kind.scale or 0)
    if value >= Decimal(10) ** digits:
        raise PriceDataError(f"{path.name} row {line}: {column} is too large: {show(raw.strip())} (at most "
                             f"{digits} digits before the point)")
    if value != value.quantize(Decimal(1).scaleb(-scale)):
        raise PriceDataError(f"{path.name} row {line}: {column} has more than {scale} decimal places: "
                             f"{show(raw.strip())} (the store keeps {scale}; it is not rounded)")
    return value


def _count(path: Path, line: int, raw: str, column: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise PriceDataError(f"{path.name} row {line}: {column} is not a whole number: {show(raw)}") from None
    if abs(value) > _MAX_COUNT:
        raise PriceDataError(f"{path.name} row {line}: {column} is too large: {show(raw.strip())}")
    return value


def _name(path: Path, line: int, row: Row, column: str) -> str:
    """A market or category: present and not empty."""
    raw = row.get(column)
    if raw is None or not raw.strip():
        raise PriceDataError(f"{path.name} row {line}: {column} is {'missing' if raw is None else 'empty'}")
    return raw.strip()


def _market(name: str) -> str:
    return WILDCARD if name.strip() in WILDCARD_NAMES else name.strip()


def _once(path: Path, line: int, seen: dict[tuple[object, ...], int], key: tuple[object, ...], what: str) -> None:
    if key in seen:
        raise PriceDataError(f"{path.name} row {line}: {what} listed twice: "
                             f"{', '.join(map(str, key))} (first on row {seen[key]})")
    seen[key] = line


def _price_frame(records: Iterable[tuple[str, str, Decimal]]) -> pl.DataFrame:
    return pl.DataFrame(list(records), orient="row", schema={
        "market": pl.String, "category": pl.String, "platform_fee_usd": USD})


def _whatsapp_rows(path: Path, rows: list[tuple[int, Row]]) -> pl.DataFrame:
    records: list[tuple[str, str, Decimal]] = []
    seen: dict[tuple[object, ...], int] = {}
    for line, row in rows:
        for column, category in WHATSAPP_COLUMNS.items():
            if row.get(column) not in (None, ""):  # a market without that rate has no row: its messages show unpriced
                market = _market(_name(path, line, row, "market"))
                _once(path, line, seen, (market, category), "market and category")
                records.append((market, category, _decimal(path, line, row, column)))
    return _price_frame(records)


def _rate_rows(path: Path, rows: list[tuple[int, Row]]) -> pl.DataFrame:
    records: list[tuple[str, str, Decimal]] = []
    seen: dict[tuple[object, ...], int] = {}
    for line, r in rows:
        market, category = _market(_name(path, line, r, "market")), _name(path, line, r, "category")
        _once(path, line, seen, (market, category), "market and category")
        records.append((market, category, _decimal(path, line, r, "platform_fee_usd")))
    return _price_frame(records)


def _tier_rows(path: Path, rows: list[tuple[int, Row]]) -> pl.DataFrame:
    records = []
    seen: dict[tuple[object, ...], int] = {}
    ladders: dict[tuple[str, str], list[tuple[int, int | None, int]]] = {}  # (from, to, line) per market, category
    for line, r in rows:
        market, category = _name(path, line, r, "market"), _name(path, line, r, "category")
        low = _count(path, line, r["from_messages"] or "", "from_messages")
        high = _count(path, line, r["to_messages"] or "", "to_messages") if (
            r.get("to_messages") or "").strip() else None
        if low < 1:
            raise PriceDataError(f"{path.name} row {line}: from_messages: bad tier range {low}..{high}")
        if high is not None and high < low:
            raise PriceDataError(f"{path.name} row {line}: to_messages: bad tier range {low}..{high}")
        _once(path, line, seen, (market, category, low), "market, category and from_messages")
        ladders.setdefault((market, category), []).append((low, high, line))
        records.append((market, category, low, high, _decimal(path, line, r, "platform_fee_usd")))
    for (market, category), steps in ladders.items():
        _check_ladder(path, f"{market}, {category}", sorted(steps))
    return pl.DataFrame(records, orient="row", schema={
        "market": pl.String, "category": pl.String, "from_messages": pl.Int64, "to_messages": pl.Int64,
        "platform_fee_usd": USD})


def _check_ladder(path: Path, what: str, steps: list[tuple[int, int | None, int]]) -> None:
    """One market and category's tiers (from, to or None for the open top, line), by from: they must cover every
    monthly count from 1 up, each count once (docs/providers.md 2.3: 0-100K, 100,001-1M, ..., 80M+). The report
    prices a message at every tier holding its rank (costing._apply_tiers): a rank in two tiers would pay twice,
    a rank in none (a gap, a ladder from above 1, a closed top) nothing at all."""
    low, _, line = steps[0]
    if low != 1:
        raise PriceDataError(f"{path.name} row {line}: from_messages: the first tier of {what} starts at {low}, "
                             f"not 1 (messages 1..{low - 1} of a month would have no rate)")
    for (before_low, before_high, before), (low, high, line) in zip(steps, steps[1:], strict=False):
        if before_high is None or low <= before_high:
            raise PriceDataError(f"{path.name} row {line}: from_messages: tier {_range(low, high)} of {what} "
                                 f"overlaps tier {_range(before_low, before_high)} on row {before}")
        if low > before_high + 1:
            raise PriceDataError(f"{path.name} row {line}: from_messages: tier {_range(low, high)} of {what} "
                                 f"leaves a gap after tier {_range(before_low, before_high)} on row {before} "
                                 f"(messages {before_high + 1}..{low - 1} would have no rate)")
    _, high, line = steps[-1]
    if high is not None:
        raise PriceDataError(f"{path.name} row {line}: to_messages: the top tier of {what} ends at {high}; leave "
                             f"it empty (messages past {high} would have no rate)")


def _range(low: int, high: int | None) -> str:
    return f"{low}..{'' if high is None else high}"


def _check_markets(conn: Connection, card: Card) -> None:
    # A mapped market the card does not price would make its messages unpriced; refuse the card instead.
    mapped = {m for (m,) in run(conn, "SELECT DISTINCT market FROM markets WHERE channel = :c", c=card.channel)}
    missing = mapped - set(card.rows["market"].to_list())
    if missing:
        raise PriceDataError(f"{card.source}: markets mapped in the region table are missing from the card: "
                             f"{sorted(missing)}")


def _check_categories(conn: Connection, card: Card) -> None:
    if card.kind not in ("rates", "whatsapp_card", "tiers"):
        return
    known = {c for (c,) in run(
        conn, "SELECT DISTINCT coalesce(rate_category, category) FROM pricing_rules WHERE channel = :c",
        c=card.channel)}
    unknown = set(card.rows["category"].to_list()) - known
    if unknown:
        raise PriceDataError(f"{card.source}: categories no {card.channel} pricing rule bills: {sorted(unknown)} "
                             f"(known: {sorted(known)})")
