"""Loading an audience CSV: every column as text, spreadsheet row numbers kept, malformed rows
turned into rejects and malformed files into one clear AudienceError (never a traceback).

Files are read in batches of whole records (`batch_bytes` at a time), so a file larger than
memory streams through; reading in one batch or many gives the same rows.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import polars as pl

from pipeline.records import empty_rejects, make_rejects

# Columns the stages add (or use internally); an upload may not bring its own.
RESERVED_COLUMNS = frozenset(
    {"row_number", "phone_e164", "region", "number_type", "text", "params_json", "segments", "encoding"}
    | {"_fields", "_problem", "_phone", "_country", "_invalid", "_blocked", "_reason", "_detail", "_first"}
)
# ≈ 1M rows of a typical audience (names, city, coupon) per batch.
DEFAULT_BATCH_BYTES = 128 * 1024 * 1024


class AudienceError(ValueError):
    """An audience file that cannot be used at all; the message names the file and the problem."""


@dataclass(frozen=True)
class Loaded:
    frame: pl.DataFrame  # row_number (Int64, header = row 1) + every CSV column as String
    rejects: pl.DataFrame  # REJECTS_SCHEMA
    rows_read: int
    # The rejected rows as read (row_number + columns), so later stages can report their phone.
    rejected_rows: pl.DataFrame = field(default_factory=pl.DataFrame)
    # Every row as read, in order (row_number = first_row + position), for reporting rejects.
    rows: pl.DataFrame = field(default_factory=pl.DataFrame)


def _decode(path: Path, data: bytes, first_line: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = first_line + data.count(b"\n", 0, exc.start)
        raise AudienceError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{data[exc.start]:02X} at column "
            f"{exc.start - line_start + 1}); save the file as CSV UTF-8"
        ) from None


def _looks_like_data(name: str) -> bool:
    return bool(re.fullmatch(r"[+(]?\d[\d\s().\-]{5,}", name)) or name.lower() in ("yes", "no", "true", "false")


def _header(path: Path, line: str, required: Sequence[str]) -> list[str]:
    try:
        first = next(csv.reader([line], strict=True), [])
    except csv.Error:
        raise AudienceError(f"{path}: the header row has an unbalanced double quote") from None
    names = [name.strip() for name in first]
    if not any(names):
        raise AudienceError(f"{path}: the first line must be a header row naming the columns")
    missing = [c for c in required if c not in names]
    if missing:
        hint = ""
        if len(names) == 1 and (";" in names[0] or "\t" in names[0]):
            hint = " (is the separator ';' or a tab? save as comma-separated CSV)"
        elif any(_looks_like_data(n) for n in names):
            hint = " (the first line looks like data: the file needs a header row naming the columns)"
        raise AudienceError(f"{path}: missing required column(s) {missing}; columns found: {names}{hint}")
    if any(not name for name in names):
        raise AudienceError(f"{path}: the header has an empty column name (columns found: {names})")
    reserved = [n for n in names if n in RESERVED_COLUMNS]
    if reserved:
        raise AudienceError(f"{path}: rename column(s) {reserved}: the pipeline adds columns of those names")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AudienceError(f"{path}: the header repeats column(s) {duplicates}")
    return names


def _record_end(block: bytes) -> int:
    """Just past the last newline of `block` that ends a record (an even number of quotes
    before it), or 0 when there is none yet."""
    before = block.count(b'"')
    end = len(block)
    while (newline := block.rfind(b"\n", 0, end)) >= 0:
        before -= block.count(b'"', newline, end)
        if before % 2 == 0:
            return newline + 1
        end = newline
    return 0


def _blocks(handle: BinaryIO, size: int) -> Iterator[bytes]:
    """The file in pieces of about `size` bytes, each ending at a record boundary."""
    carry = b""
    while chunk := handle.read(size):
        block = carry + chunk
        cut = _record_end(block)
        carry = block[cut:]
        if cut:
            yield block[:cut]
    if carry:
        yield carry


def _lines(block: bytes) -> pl.Series:
    """The physical lines of `block` (null for a blank one), "\r\n" endings stripped."""
    if b"\x1f" in block:  # our stand-in separator occurs: split the slow way
        text = block.decode("utf-8")
        lines = pl.Series("line", [text], dtype=pl.String).str.split("\n").explode()
        lines = (lines.head(-1) if text.endswith("\n") else lines).str.strip_suffix("\r")
        return lines.replace("", None)
    frame = pl.read_csv(
        block, has_header=False, separator="\x1f", quote_char=None, new_columns=["line"], infer_schema=False,
        raise_if_empty=False, truncate_ragged_lines=True,
    )  # fmt: skip
    return frame["line"] if frame.width else pl.Series("line", [], dtype=pl.String)


def _field_counts(block: bytes) -> pl.Series:
    """Fields per record (0 for a blank line), in record order; quotes may hold separators and
    newlines. Vectorised: a newline ends a record when the quotes before it are balanced, and
    a comma separates fields when the quotes before it on its line (counting from the
    record's state at the line start) are balanced."""
    lines = _lines(block)
    if b'"' not in block:
        return ((lines.str.count_matches(",", literal=True) + 1) * lines.is_not_null()).fill_null(0).cast(pl.Int64)
    frame = pl.DataFrame({"line": lines}).with_columns(
        q=pl.col("line").str.count_matches('"', literal=True).fill_null(0)
    )
    frame = frame.with_columns(inside=((pl.col("q").cum_sum() - pl.col("q")) % 2 == 1)).with_columns(
        record=(~pl.col("inside")).cum_sum()
    )
    segments = pl.col("line").str.split('"')
    commas = pl.element().str.count_matches(",", literal=True)
    frame = frame.with_columns(
        commas=pl.when(pl.col("q") == 0)
        .then(pl.when(pl.col("inside")).then(0).otherwise(pl.col("line").str.count_matches(",", literal=True)))
        .when(pl.col("inside"))
        .then(segments.list.gather_every(2, 1).list.eval(commas).list.sum())
        .otherwise(segments.list.gather_every(2, 0).list.eval(commas).list.sum())
        .fill_null(0)
    )
    records = frame.group_by("record", maintain_order=True).agg(
        fields=pl.col("commas").sum() + 1, blank=(pl.len() == 1) & pl.col("line").first().is_null()
    )
    return records.select(pl.when(pl.col("blank")).then(0).otherwise("fields").cast(pl.Int64).alias("fields"))["fields"]


def _csv_problem(text: str, message: str, first_line: int) -> str:
    """Polars' parse error, shortened and pointed at a line where we can find it."""
    match = re.search(r"Field `(.*?)` is not properly escaped", message, re.DOTALL)
    if match:
        value = match.group(1)
        at = text.find(value)
        where = f"line {first_line + text.count(chr(10), 0, at)}: " if at >= 0 else ""
        return f"{where}field {value[:60]!r} has a stray or unbalanced double quote"
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown parse error"


class AudienceReader:
    """An audience file, header checked on opening; iterate for its batches (each a Loaded,
    row numbers continuing across batches)."""

    def __init__(
        self, path: Path | str, *, required: Sequence[str] = ("phone", "opt_in"), batch_bytes: int = DEFAULT_BATCH_BYTES
    ) -> None:
        self.path = Path(path)
        try:
            self._handle: BinaryIO = self.path.open("rb")
        except OSError as exc:
            raise AudienceError(f"{self.path}: cannot read the audience file: {exc.strerror}") from None
        try:
            self._open(required, batch_bytes)
        except BaseException:
            self.close()
            raise

    def _open(self, required: Sequence[str], batch_bytes: int) -> None:
        self._blocks = _blocks(self._handle, max(1, batch_bytes))
        first = next(self._blocks, b"")
        if first.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise AudienceError(f"{self.path}: the file is UTF-16; save it as CSV UTF-8")
        if first.startswith(codecs.BOM_UTF8):
            first = first[len(codecs.BOM_UTF8) :]
        head_end = first.find(b"\n") + 1 or len(first)
        header = _decode(self.path, first[:head_end], 1).rstrip("\r\n")
        if not header.strip() and not first[head_end:].strip() and not self._peek():
            raise AudienceError(f"{self.path}: the file is empty (expected a header row and data rows)")
        self.columns = _header(self.path, header, required)
        self._header_bytes = first[:head_end].rstrip(b"\r\n") + b"\n"
        # The first block is read with its own header line: no copy of a block of up to batch_bytes.
        self._first, self._has_rows = first, len(first) > head_end

    def _peek(self) -> bool:
        block = next(self._blocks, b"")
        if block:
            self._blocks = itertools.chain([block], self._blocks)
        return bool(block.strip())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> AudienceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Loaded]:
        row, line = 2, 1
        first, self._first = self._first, b""
        blocks: Iterator[tuple[bytes | None, bytes]] = ((self._header_bytes, block) for block in self._blocks)
        if self._has_rows:
            blocks = itertools.chain([(None, first)], blocks)
        else:
            line += first.count(b"\n")
        try:
            for header, block in blocks:  # one at a time: a file larger than memory streams through
                loaded = read_block(self.path, self.columns, header, block, first_row=row, first_line=line)
                row += loaded.rows_read
                line += block.count(b"\n")
                yield loaded
        finally:
            self.close()


def read_block(
    path: Path, columns: Sequence[str], header: bytes | None, block: bytes, *, first_row: int, first_line: int
) -> Loaded:
    """The records of `block` (whole records of `path`, cut where _blocks cuts), rows numbered
    from `first_row`; `header` is the file's header line (it fixes the number of columns) and
    `first_line` the block's first line in the file, for error messages. With `header` None the
    block starts with the file's header line itself."""
    names = list(columns)
    try:
        frame = pl.read_csv(
            block if header is None else header + block, has_header=True, new_columns=names, infer_schema=False,
            truncate_ragged_lines=True,  # ragged rows are counted below and rejected one by one
            raise_if_empty=False,
        )  # fmt: skip
    except pl.exceptions.PolarsError as exc:  # Polars checks UTF-8 too; we name the line
        problem = _csv_problem(_decode(path, block, first_line), str(exc), first_line)
        raise AudienceError(f"{path}: not a readable CSV file: {problem}") from None
    if frame.width != len(names):
        raise AudienceError(f"{path}: expected {len(names)} columns, the CSV reader found {frame.width}")
    skip = int(header is None)  # the header line's own count
    counts = _field_counts(block).slice(skip)
    if len(counts) != frame.height:
        # Quotes in mid-field ("5'11"") defeat the vectorised count: ask the csv module.
        text = io.StringIO(block.decode("utf-8"), newline="")
        counts = pl.Series([len(r) for r in csv.reader(text)], dtype=pl.Int64).slice(skip)
    if len(counts) != frame.height:
        raise AudienceError(
            f"{path}: malformed CSV after line {first_line - 1 + skip} (found {len(counts)} records but read "
            f"{frame.height} rows); check for unbalanced quotes"
        )
    frame = frame.with_columns(
        pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64).alias("row_number"),
        counts.alias("_fields"),
    ).select("row_number", *names, "_fields")
    # First matching problem wins: a blank line, a ragged row, then an empty phone.
    width = len(names)
    problem = (
        pl.when(pl.col("_fields") == 0)
        .then(pl.lit("row is empty"))
        .when(pl.col("_fields") != width)
        .then(pl.format("row has {} field(s), the header has " + str(width), pl.col("_fields")))
    )
    if "phone" in names:
        problem = problem.when(pl.col("phone").str.strip_chars().fill_null("") == "").then(pl.lit("phone is empty"))
    frame = frame.with_columns(problem.otherwise(None).alias("_problem")).drop("_fields")
    bad = frame.filter(pl.col("_problem").is_not_null())
    return Loaded(
        frame=frame.filter(pl.col("_problem").is_null()).drop("_problem"),
        rejects=make_rejects(bad, "bad_row", pl.col("_problem")) if bad.height else empty_rejects(),
        rows_read=frame.height,
        rejected_rows=bad.drop("_problem"),
        rows=frame.drop("_problem"),
    )


def load_audience(
    path: Path | str, *, required: Sequence[str] = ("phone", "opt_in"), batch_bytes: int = DEFAULT_BATCH_BYTES
) -> Loaded:
    """Reads all of `path`; rows with an empty phone or a ragged number of fields become `bad_row`."""
    reader = AudienceReader(path, required=required, batch_bytes=batch_bytes)
    batches = list(reader)
    empty = pl.DataFrame(schema={"row_number": pl.Int64, **dict.fromkeys(reader.columns, pl.String)})
    return Loaded(
        frame=pl.concat([empty, *(b.frame for b in batches)]),
        rejects=pl.concat([empty_rejects(), *(b.rejects for b in batches)]),
        rows_read=sum(b.rows_read for b in batches),
        rejected_rows=pl.concat([empty, *(b.rejected_rows for b in batches)]),
        rows=pl.concat([empty, *(b.rows for b in batches)]),
    )
