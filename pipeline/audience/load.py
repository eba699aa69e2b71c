"""Loading an audience CSV: every column as text, spreadsheet row numbers kept, malformed rows
turned into rejects and malformed files into one clear AudienceError (never a traceback).

Files are read in batches of whole records (`batch_bytes` at a time, cut by blocks.py), so a file
larger than memory streams through; reading in one batch or many gives the same rows. A field or
row over its bound (ReadLimits) is a rejected row, however the file is cut.
"""

from __future__ import annotations

import codecs
import csv
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline.audience.blocks import (
    Oversized,
    ReadLimits,
    blocks,
    lines_of,
    lone_crs_to_newlines,
    open_quote_problem,
    quote_problem,
    records_of,
    where,
)
from pipeline.audience.header import AudienceError, check_header, csv_problem, decode, open_file
from pipeline.records import REJECTS_SCHEMA, empty_rejects

# ≈ 350k rows of a typical audience (names, city, coupon) per batch. Preparing a batch takes about 20-25
# bytes of memory per byte of CSV (Polars' columns and the stages' intermediates), and preparation works on
# three batches at once (pipeline/render/prepare.py): about 1.3 GB at 16 MB, whatever the file's size
# (benchmarks/soak.py). Each batch costs about 0.2 s of CPU besides its rows, which the overlap hides.
DEFAULT_BATCH_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Loaded:
    frame: pl.DataFrame  # row_number (Int64, header = row 1) + every CSV column as String
    rejects: pl.DataFrame  # REJECTS_SCHEMA
    rows_read: int
    # The rejected rows as read (row_number + columns), so later stages can report their phone.
    rejected_rows: pl.DataFrame = field(default_factory=pl.DataFrame)
    # Every row as read, in order (row_number = first_row + position), for reporting rejects.
    rows: pl.DataFrame = field(default_factory=pl.DataFrame)


class AudienceReader:
    """An audience file, header checked on opening; iterate for its batches (each a Loaded,
    row numbers continuing across batches)."""

    def __init__(
        self, path: Path | str, *, required: Sequence[str] = ("phone", "opt_in"),
        batch_bytes: int = DEFAULT_BATCH_BYTES, limits: ReadLimits | None = None,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.limits = limits if limits is not None else ReadLimits.from_env()
        self._handle = open_file(self.path)
        try:
            self._open(required, batch_bytes)
        except BaseException:
            self.close()
            raise

    def _open(self, required: Sequence[str], batch_bytes: int) -> None:
        max_row = self.limits.max_row_bytes
        head = self._handle.read(max_row + 2)
        self._handle.seek(0)
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise AudienceError(f"{self.path}: the file is UTF-16; save it as CSV UTF-8")
        cr = b"\r" in head and b"\n" not in head  # old Mac line endings: every CR is a newline
        if len(head) > max_row + 1 and b"\n" not in head and not cr:
            binary = " and holds NUL bytes: a binary file, not CSV" if b"\0" in head else ""
            raise AudienceError(
                f"{self.path}: no line break in the first {max_row:,} bytes{binary}; an audience starts with a "
                f"header row (CAMPAIGN_MAX_ROW_BYTES raises the limit)"
            )
        self._blocks = blocks(self._handle, max(1, batch_bytes), max_row, cr=cr)
        first = next(self._blocks, b"")
        if isinstance(first, Oversized):  # the header line runs on inside quotes
            raise AudienceError(f"{self.path}: the header row has an unbalanced double quote")
        if first.startswith(codecs.BOM_UTF8):
            first = first[len(codecs.BOM_UTF8) :]
        head_end = first.find(b"\n") + 1 or len(first)
        if b"\0" in first[:head_end]:
            raise AudienceError(f"{self.path}: line 1 holds NUL bytes: a binary file, not CSV")
        header = decode(self.path, first[:head_end], 1).rstrip("\r\n")
        if not header.strip() and not first[head_end:].strip() and not self._peek():
            raise AudienceError(f"{self.path}: the file is empty (expected a header row and data rows)")
        self.columns = check_header(self.path, header, required, self.limits.max_columns)
        self._header_bytes = first[:head_end].rstrip(b"\r\n") + b"\n"
        # The first block is read with its own header line: no copy of a block of up to batch_bytes.
        self._first, self._has_rows = first, len(first) > head_end

    def _peek(self) -> bool:
        block = next(self._blocks, b"")
        if block:
            self._blocks = itertools.chain([block], self._blocks)
        return isinstance(block, Oversized) or bool(block.strip())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> AudienceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Loaded]:
        row, line = 2, 1
        # The first block is read with its own header line (no copy of it), the others after a copy of it.
        pending: list[tuple[bytes | None, bytes]] = [(None, self._first)] if self._has_rows else []
        if not self._has_rows:
            line += self._first.count(b"\n")
        self._first = b""
        try:
            while True:  # one block at a time: a file larger than memory streams through
                if pending:
                    header, item = pending.pop()
                else:
                    header, item = self._header_bytes, next(self._blocks, None)
                    if item is None:
                        break
                if isinstance(item, Oversized):
                    loaded, lines = self._oversized(item, row, line), item.lines
                else:
                    loaded = read_block(
                        self.path, self.columns, header, item, first_row=row, first_line=line, limits=self.limits
                    )
                    lines = item.count(b"\n")
                del item  # the block is parsed: none of it is held while the caller works on the batch
                row, line = row + loaded.rows_read, line + lines
                box = [loaded]  # handed over, not kept by this generator while it waits
                del loaded
                yield box.pop()
        finally:
            self.close()

    def _oversized(self, item: Oversized, row: int, line: int) -> Loaded:
        """A record skipped for its size: one row_too_long reject, its values not kept (they were never held)."""
        if item.open_quote:
            problem = open_quote_problem(item.head, self.columns, row, line, self.limits.max_row_bytes)
            raise AudienceError(f"{self.path}: {problem}")
        rows = pl.DataFrame(
            {"row_number": [row], **{c: [None] for c in self.columns}},
            schema={"row_number": pl.Int64, **dict.fromkeys(self.columns, pl.String)},
        )
        detail = f"row is {item.size} bytes, {_over(self.limits.max_row_bytes, 'row')}"
        rejects = pl.DataFrame([(row, "row_too_long", detail)], schema=REJECTS_SCHEMA, orient="row")
        return Loaded(frame=rows.clear(), rejects=rejects, rows_read=1, rejected_rows=rows, rows=rows)


def _over(limit: int, what: str) -> str:
    env = {"row": "CAMPAIGN_MAX_ROW_BYTES", "field": "CAMPAIGN_MAX_FIELD_BYTES"}[what]
    return f"over the {limit:,}-byte {what} limit ({env})"


def _csv_records(path: Path, block: bytes, first_line: int) -> pl.DataFrame:
    """records_of(block) by the csv module, for quotes in mid-field ("5'11"") that defeat the
    vectorised count (lines split on "\\n" only, as lines_of splits them)."""
    lines = block.decode("utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    sizes = [len(line.encode()) - line.endswith("\r") for line in lines]
    reader = csv.reader(line + "\n" for line in lines)
    fields: list[int] = []
    spans: list[tuple[int, int]] = []
    try:
        for record in reader:
            start = spans[-1][1] if spans else 0
            fields.append(len(record))
            spans.append((start, reader.line_num))
    except csv.Error as exc:
        raise AudienceError(f"{path}: line {first_line + reader.line_num - 1} cannot be read as CSV: {exc}") from None
    return pl.DataFrame(
        {"fields": fields, "bytes": [sum(sizes[a:b]) for a, b in spans], "lines": [b - a for a, b in spans]},
        schema={"fields": pl.Int64, "bytes": pl.Int64, "lines": pl.Int64},
    )


def _misquoted(block: bytes, records: pl.DataFrame, at: int, names: list[str], first_row: int, first_line: int) -> str:
    """Where and what the quote problem of the block's record `at` is."""
    line = int(records["lines"].head(at).sum())
    start = _line_start(block, line)
    text = block[start : start + int(records["bytes"][at]) + 2 * int(records["lines"][at])].decode("utf-8", "replace")
    found = quote_problem(text)
    if found is None:  # not expected: the line check and the scan follow the same rules
        return f"row {first_row + at} (line {first_line + line}): a double quote the CSV rules cannot read"
    _, offset, field_index, what = found
    return f"{where(names, first_row + at, first_line + line + offset, field_index)}: {what}"


def _line_start(block: bytes, line: int) -> int:
    pos = 0
    for _ in range(line):
        pos = block.index(b"\n", pos) + 1
    return pos


def read_block(
    path: Path, columns: Sequence[str], header: bytes | None, block: bytes, *, first_row: int, first_line: int,
    limits: ReadLimits | None = None,
) -> Loaded:  # fmt: skip
    """The records of `block` (whole records of `path`, cut where blocks.blocks cuts), rows numbered
    from `first_row`; `header` is the file's header line (it fixes the number of columns) and
    `first_line` the block's first line in the file, for error messages. With `header` None the
    block starts with the file's header line itself."""
    names, limits = list(columns), limits if limits is not None else ReadLimits()
    skip = int(header is None)  # the header line's own record
    try:
        lines = lines_of(block)
        if b"\r" in block and lines.str.contains("\r", literal=True).any():  # a CR inside a line: rare, then walked
            block = lone_crs_to_newlines(block, final=True)
            lines = lines_of(block)
        frame = pl.read_csv(
            block if header is None else header + block, has_header=True, new_columns=names, infer_schema=False,
            truncate_ragged_lines=True,  # ragged rows are counted below and rejected one by one
            raise_if_empty=False,
        )  # fmt: skip
    except pl.exceptions.PolarsError as exc:  # Polars checks UTF-8 too; we name the line
        text = decode(path, block, first_line)
        found = quote_problem(text)
        if found is not None:
            record, line, field_index, what = found
            place = where(names, first_row - skip + record, first_line + line, field_index)
            raise AudienceError(f"{path}: {place}: {what}") from None
        raise AudienceError(f"{path}: not a readable CSV file: {csv_problem(text, str(exc), first_line)}") from None
    if frame.width != len(names):
        raise AudienceError(f"{path}: expected {len(names)} columns, the CSV reader found {frame.width}")
    records = records_of(block, lines)
    # A stray quote (5'11") that runs a record over several lines is an error wherever the file is cut:
    # Polars reads such a record one way or another depending on the block. (On one line, as in
    # =HYPERLINK("x"), Polars reads the quotes as text, or fails and the row and field are named below.)
    # A record over the row bound is left to the check after this one, as blocks() would see it.
    misquoted = ~records["quoted"] & (records["lines"] > 1) & (records["bytes"] <= limits.max_row_bytes)
    if misquoted.any():
        at = int(misquoted.arg_true()[0])
        raise AudienceError(f"{path}: {_misquoted(block, records, at, names, first_row - skip, first_line)}")
    if records.height - skip != frame.height:
        records = _csv_records(path, block, first_line)  # quotes in mid-field ("5'11"") defeat the vectorised count
    if records.height - skip != frame.height:
        raise AudienceError(
            f"{path}: malformed CSV after line {first_line - 1 + skip} (found {records.height - skip} records but read "
            f"{frame.height} rows); check for unbalanced quotes"
        )
    # A record over the bound that runs over lines is a row_too_long like any other when its quotes read; one
    # that does not is refused, as blocks() refuses it when the record does not fit in one block.
    spans = (records["bytes"] > limits.max_row_bytes) & (records["lines"] > 1) & ~records["quoted"]
    if spans.any():
        at = int(spans.arg_true()[0])
        line = int(records["lines"].head(at).sum())
        start = _line_start(block, line)
        problem = open_quote_problem(
            block[start : start + limits.max_row_bytes], names, first_row - skip + at, first_line + line,
            limits.max_row_bytes,
        )  # fmt: skip
        raise AudienceError(f"{path}: {problem}")
    records = records.slice(skip)
    frame = frame.with_columns(
        pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64).alias("row_number"),
        records["fields"].alias("_fields"),
        records["bytes"].alias("_bytes"),
    ).select("row_number", *names, "_fields", "_bytes")
    # Which check a row fails is decided with comparisons alone; the reasons' wording is built
    # for the rejected rows only (a when/then would build it for every row).
    frame = frame.with_columns(_check=_first_problem(names, limits))
    if (records["bytes"] > limits.max_row_bytes).any():  # the values of a row over the bound are not kept,
        long_row = pl.col("_check") == _ROW_TOO_LONG  # as when blocks() skips it
        frame = frame.with_columns(pl.when(long_row).then(None).otherwise(pl.col(c)).alias(c) for c in names)
    good = pl.col("_check").is_null()
    bad = frame.filter(~good)
    rejects = _described(bad, names, limits) if bad.height else empty_rejects()
    rows = frame.drop("_fields", "_bytes", "_check")
    return Loaded(
        frame=rows.filter(frame["_check"].is_null()),
        rejects=rejects,
        rows_read=frame.height,
        rejected_rows=bad.drop("_fields", "_bytes", "_check"),
        rows=rows,
    )


# The checks, in the order they win: a blank line, a row or a field over its bound, a ragged row, an empty phone.
_EMPTY, _ROW_TOO_LONG, _RAGGED, _FIELD_TOO_LONG, _NO_PHONE = range(5)


def _first_problem(names: list[str], limits: ReadLimits) -> pl.Expr:
    """The first check each row fails (null for a good row)."""
    checks = [
        (pl.col("_fields") == 0, _EMPTY),
        (pl.col("_bytes") > limits.max_row_bytes, _ROW_TOO_LONG),
        (pl.col("_fields") != len(names), _RAGGED),
        (pl.max_horizontal(pl.col(c).str.len_bytes() for c in names) > limits.max_field_bytes, _FIELD_TOO_LONG),
    ]
    if "phone" in names:
        checks.append((pl.col("phone").str.strip_chars().fill_null("") == "", _NO_PHONE))
    expr = pl.when(checks[0][0]).then(pl.lit(checks[0][1], dtype=pl.Int8))
    for condition, check in checks[1:]:
        expr = expr.when(condition).then(pl.lit(check, dtype=pl.Int8))
    return expr.otherwise(None)


def _described(bad: pl.DataFrame, names: list[str], limits: ReadLimits) -> pl.DataFrame:
    """REJECTS_SCHEMA rows for the rejected rows of a batch, each check in its words."""
    check = pl.col("_check")
    sizes = [pl.col(c).str.len_bytes() for c in names]
    long_field = pl.coalesce([
        pl.when(size > limits.max_field_bytes).then(pl.concat_str(pl.lit(f"field {c!r} is "), size, pl.lit(" bytes, ")))
        for c, size in zip(names, sizes, strict=True)
    ]) + pl.lit(_over(limits.max_field_bytes, "field"))  # fmt: skip
    reason = (
        pl.when(check == _ROW_TOO_LONG).then(pl.lit("row_too_long"))
        .when(check == _FIELD_TOO_LONG).then(pl.lit("field_too_long"))
        .otherwise(pl.lit("bad_row"))
    )  # fmt: skip
    row_limit = _over(limits.max_row_bytes, "row")
    long_row = pl.concat_str(pl.lit("row is "), pl.col("_bytes"), pl.lit(f" bytes, {row_limit}"))
    ragged = pl.format("row has {} field(s), the header has " + str(len(names)), pl.col("_fields"))
    detail = (
        pl.when(check == _EMPTY).then(pl.lit("row is empty"))
        .when(check == _ROW_TOO_LONG).then(long_row)
        .when(check == _RAGGED).then(ragged)
        .when(check == _FIELD_TOO_LONG).then(long_field)
        .otherwise(pl.lit("phone is empty"))
    )  # fmt: skip
    return bad.select(pl.col("row_number"), reason.alias("reason"), detail.alias("detail"))


def load_audience(
    path: Path | str, *, required: Sequence[str] = ("phone", "opt_in"), batch_bytes: int = DEFAULT_BATCH_BYTES,
    limits: ReadLimits | None = None,
) -> Loaded:  # fmt: skip
    """Reads all of `path`; rows with an empty phone, a ragged number of fields or a field or row over its
    bound become rejects."""
    reader = AudienceReader(path, required=required, batch_bytes=batch_bytes, limits=limits)
    batches = list(reader)
    empty = pl.DataFrame(schema={"row_number": pl.Int64, **dict.fromkeys(reader.columns, pl.String)})
    return Loaded(
        frame=pl.concat([empty, *(b.frame for b in batches)]),
        rejects=pl.concat([empty_rejects(), *(b.rejects for b in batches)]),
        rows_read=sum(b.rows_read for b in batches),
        rejected_rows=pl.concat([empty, *(b.rejected_rows for b in batches)]),
        rows=pl.concat([empty, *(b.rows for b in batches)]),
    )
