"""Reading a price CSV (a rate card, the shipped data files) into its rows, bounded and checked: every problem one
PriceDataError naming the file, the row and the field. pipeline/costs/pricing.py reads the values of the rows."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.spec import SpecError, positive_setting, read_at_most

# Bounds of a price file (a Meta card is ~80 rows, 5 KB; a global SMS card a few thousand rows).
MAX_BYTES_ENV, DEFAULT_MAX_BYTES = "CAMPAIGN_PRICES_MAX_BYTES", 16 * 1024 * 1024
MAX_ROWS_ENV, DEFAULT_MAX_ROWS = "CAMPAIGN_PRICES_MAX_ROWS", 100_000
MAX_FIELD_CHARS = 1_024  # a market, a category, a rate or a count: anything longer is not one
_BAD_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8
_DATE_LINE = re.compile(r"#\s*effective_from:\s*(\d{4}-\d{2}-\d{2}|\S*)")


class PriceDataError(ValueError):
    """A price file that cannot be loaded; the message names the file, the row and the problem."""


Row = dict[str, str | None]


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[tuple[int, Row]]  # (the line the row starts on, counting every line of the file, its fields)
    effective_from: tuple[int, str] | None  # the line and value of the first '# effective_from:' comment


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a data CSV; lines starting with '#' are comments. A short row's missing fields are None."""
    return [row for _, row in read_table(Path(path), strict=False).rows]  # type: ignore[misc]


def _bound(name: str, given: int | None, default: int) -> int:
    if given is not None:
        return given
    try:
        return positive_setting(name, default)
    except SpecError as exc:
        raise PriceDataError(str(exc)) from None


def read_table(path: Path, *, strict: bool, max_bytes: int | None = None, max_rows: int | None = None) -> Table:
    """The header and rows of a price CSV, every problem a PriceDataError naming the file, row and field.
    Rows are numbered by the line they start on (the header's is 1 when no comment precedes it). `strict` (a
    card) refuses a row with fewer fields than the header, or with more that are not empty; otherwise (the
    shipped data files) those fields are None or left out, as csv.DictReader has them."""
    max_bytes = _bound(MAX_BYTES_ENV, max_bytes, DEFAULT_MAX_BYTES)
    max_rows = _bound(MAX_ROWS_ENV, max_rows, DEFAULT_MAX_ROWS)
    try:
        data = read_at_most(path, max_bytes)
    except OSError as exc:
        raise PriceDataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if data is None:
        raise PriceDataError(f"{path.name}: larger than {max_bytes:,} bytes ({MAX_BYTES_ENV} raises the bound)")
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    pending: list[tuple[int, str]] = []  # the lines of the record being read
    dated: list[tuple[int, str]] = []

    def lines() -> Iterator[str]:
        for number, line in enumerate(io.StringIO(text, newline=""), 1):
            if line.lstrip().startswith("#"):
                found = _DATE_LINE.match(line)
                if found and not dated:
                    dated.append((number, found.group(1)))
                continue
            pending.append((number, line))
            yield line

    reader = csv.reader(lines())
    header: list[str] | None = None
    rows: list[tuple[int, Row]] = []
    while True:
        pending.clear()
        try:
            record = next(reader, None)
        except csv.Error as exc:
            line = pending[0][0] if pending else 1
            raise PriceDataError(_unreadable(path, line, "".join(t for _, t in pending), header, exc)) from None
        if record is None:
            break
        line = pending[0][0]
        if not any(field.strip() for field in record):
            continue  # a blank line, or a row of empty fields as spreadsheets leave at the end
        for index, field in enumerate(record):
            where = _column(header, index)
            if len(field) > MAX_FIELD_CHARS:
                raise PriceDataError(f"{path.name} row {line}: {where} is longer than {MAX_FIELD_CHARS:,} characters")
            bad = _BAD_BYTE.search(field)
            if bad:
                raise PriceDataError(f"{path.name} row {line}: {where} is not UTF-8 text "
                                     f"(byte 0x{ord(bad.group()) - 0xDC00:02x})")
        if header is None:
            twice = [name for name in dict.fromkeys(record) if name.strip() and record.count(name) > 1]
            if strict and twice:
                raise PriceDataError(f"{path.name} row {line}: column {twice[0]!r} appears twice")
            header = record
            continue
        if len(rows) >= max_rows:
            raise PriceDataError(f"{path.name} row {line}: more than {max_rows:,} rows ({MAX_ROWS_ENV} raises the "
                                 "bound)")
        if strict and len(record) < len(header):
            raise PriceDataError(f"{path.name} row {line}: {header[len(record)]} is missing (the row has "
                                 f"{len(record)} of the header's {len(header)} fields)")
        if strict and any(field.strip() for field in record[len(header):]):
            raise PriceDataError(f"{path.name} row {line}: {len(record)} fields where the header has "
                                 f"{len(header)} ({_column(header, len(header))}: {show(record[len(header)])})")
        row: Row = dict.fromkeys(header)
        row.update(zip(header, record, strict=False))
        rows.append((line, row))
    return Table(header=header or [], rows=rows, effective_from=dated[0] if dated else None)


def _column(header: list[str] | None, index: int) -> str:
    if header is None:
        return f"column {index + 1} of the header"
    return header[index] if index < len(header) else f"field {index + 1} (past the header's {len(header)})"


def _unreadable(path: Path, line: int, text: str, header: list[str] | None, exc: csv.Error) -> str:
    """The message of a record the csv module refuses; for a field past its size limit, which field."""
    index, length, quoted = 0, 0, False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            index, length = index + 1, 0
        else:
            length += 1
            if length > MAX_FIELD_CHARS:
                return f"{path.name} row {line}: {_column(header, index)} is longer than {MAX_FIELD_CHARS:,} characters"
    return f"{path.name} row {line}: cannot read the row: {exc}"


def show(raw: str | None) -> str:
    """A field's value for a one-line message: quoted, escaped, cut at 40 characters."""
    if raw is None:
        return "nothing"
    return repr(raw[:40] + "...") if len(raw) > 40 else repr(raw)
