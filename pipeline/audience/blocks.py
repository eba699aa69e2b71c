"""Cutting an audience file into blocks of whole records in bounded memory (a block holds about `size`
bytes; a record longer than the row bound is never held but skipped and reported as Oversized), and
measuring the records of a block (fields, bytes, lines). Also the bounds themselves (ReadLimits),
old-Mac CR-only line endings, and naming the row and field of a double quote the CSV rules cannot read.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import polars as pl

from pipeline.spec import positive_setting

DEFAULT_MAX_FIELD_BYTES = 64 * 1024
DEFAULT_MAX_ROW_BYTES = 1024 * 1024
DEFAULT_MAX_COLUMNS = 1_000
FIELD_ENV, ROW_ENV, COLUMNS_ENV = "CAMPAIGN_MAX_FIELD_BYTES", "CAMPAIGN_MAX_ROW_BYTES", "CAMPAIGN_MAX_COLUMNS"


@dataclass(frozen=True)
class ReadLimits:
    """The bounds on one record of an audience; a longer field or row is a rejected row."""

    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES
    max_row_bytes: int = DEFAULT_MAX_ROW_BYTES  # line endings not counted
    max_columns: int = DEFAULT_MAX_COLUMNS  # a wider header is not an audience

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] = os.environ, *, max_field_bytes: int | None = None,
        max_row_bytes: int | None = None,
    ) -> ReadLimits:  # fmt: skip
        """Values given (command-line options) win over CAMPAIGN_MAX_FIELD_BYTES / _ROW_BYTES / _COLUMNS,
        which win over the defaults."""
        return cls(
            max_field_bytes or positive_setting(FIELD_ENV, DEFAULT_MAX_FIELD_BYTES, environ),
            max_row_bytes or positive_setting(ROW_ENV, DEFAULT_MAX_ROW_BYTES, environ),
            positive_setting(COLUMNS_ENV, DEFAULT_MAX_COLUMNS, environ),
        )


@dataclass(frozen=True)
class Oversized:
    """A record longer than the row bound, skipped without being held."""

    size: int  # its bytes, line endings not counted
    lines: int  # newlines read with it, its own line ending included
    head: bytes  # its first bytes (up to the row bound), to say what is wrong with it
    open_quote: bool  # a quoted field in it runs over lines or never closes: the file is broken there


def record_bytes(data: bytes) -> int:
    """The bytes of `data` that count towards a row's size: "\\n" and the "\\r" of "\\r\\n" do not."""
    return len(data) - data.count(b"\n") - data.count(b"\r\n")


def record_end(block: bytes) -> int:
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


def _read(handle: BinaryIO, size: int, cr: bool) -> bytes:
    chunk = handle.read(size)
    return chunk.replace(b"\r", b"\n") if cr else chunk


def _rest_of(handle: BinaryIO) -> int:
    """The bytes of the file after the handle's position (0 when that cannot be told)."""
    try:
        return max(0, os.fstat(handle.fileno()).st_size - handle.tell())
    except (OSError, ValueError, io.UnsupportedOperation):
        return 0


def blocks(handle: BinaryIO, size: int, max_row_bytes: int, *, cr: bool = False) -> Iterator[bytes | Oversized]:
    """The file in pieces of about `size` bytes, each ending at a record boundary, with an
    Oversized in place of each record longer than `max_row_bytes`: what is held at once is a
    piece plus at most one bounded partial record, whatever the file holds.

    A rest of the file of at most a quarter of `size` is read with the piece before it rather than
    become a piece of its own: each batch costs a fixed share of CPU for the number checks (the number
    types' plan and regexes per region it holds: ~0.25 s when measured, before the parse ran as one plan),
    and the last batch of a file runs alone, so a 28k-row tail after three 16 MB batches made a 1M-row
    preparation 0.45 s longer. Pieces stay under 1.25 `size`."""
    carry = b""
    while chunk := _read(handle, size, cr):
        rest = _rest_of(handle)
        if 0 < rest <= size // 4:
            chunk += _read(handle, rest, cr)
        block = carry + chunk if carry else chunk
        del chunk
        cut = record_end(block)
        # After `cut`: the start of one record, still open; measured in place, as it may be most of the block.
        # (+ 1: a final "\r" may be the first half of the record's "\r\n")
        open_bytes = len(block) - cut - block.count(b"\n", cut) - block.count(b"\r\n", cut) - block.endswith(b"\r")
        if open_bytes <= max_row_bytes:
            pieces, carry = [block[:cut]] if cut else [], block[cut:]
            del block  # the consumer parses the piece: hold nothing else meanwhile, nor the piece itself
            if pieces:
                yield pieces.pop()
            continue
        pieces = [block[:cut]] if cut else []
        head, quotes = block[cut : cut + max_row_bytes], block.count(b'"', cut)
        spans, read, last = block.find(b"\n", cut) >= 0, len(block) - cut, block[-1:]
        del block
        if pieces:
            yield pieces.pop()
        if spans:  # no newline in an open record ends it: each is inside quotes
            yield Oversized(open_bytes, 0, head, True)
            return
        skipped, carry = _skip(handle, head, read, quotes, last, min(size, 1 << 20), cr)
        yield skipped
    if carry:
        yield carry


def _skip(
    handle: BinaryIO, head: bytes, read: int, quotes: int, last: bytes, step: int, cr: bool
) -> tuple[Oversized, bytes]:
    """Reads past a long record whose first `read` bytes (`quotes` of them quotes, the last one
    `last`) were read, in pieces of `step`, keeping only counts: (the Oversized record, what follows
    it in the last piece read)."""
    while chunk := _read(handle, step, cr):
        newline = chunk.find(b"\n")
        if newline < 0:
            read, last = read + len(chunk), chunk[-1:]
            quotes += chunk.count(b'"') if b'"' in chunk else 0
            continue
        quotes += chunk.count(b'"', 0, newline)
        before = chunk[newline - 1 : newline] if newline else last
        read += newline - (before == b"\r")
        return Oversized(read, 1, head, quotes % 2 == 1), chunk[newline + 1 :]
    return Oversized(read, 0, head, quotes % 2 == 1), b""


def lines_of(block: bytes) -> pl.Series:
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


# A line of well-quoted fields, by whether it starts and ends inside a quoted field.
_FIELD = '(?:[^",]*|"(?:[^"]|"")*")'
_WELL_QUOTED = {
    (False, False): f"^{_FIELD}(?:,{_FIELD})*$",
    (False, True): f'^(?:{_FIELD},)*"(?:[^"]|"")*$',
    (True, False): f'^(?:[^"]|"")*"(?:,{_FIELD})*$',
    (True, True): '^(?:[^"]|"")*$',
}


def records_of(block: bytes) -> pl.DataFrame:
    """fields (0 for a blank line), bytes (as record_bytes counts them), lines and whether every quote
    in it is where the CSV rules put quotes (`quoted`), for every record of `block`, in order; quotes
    may hold separators and newlines. Vectorised: a newline ends a record when the quotes before it
    are balanced, and a comma separates fields when the quotes before it on its line (counting from
    the record's state at the line start) are balanced."""
    lines = lines_of(block)
    size = lines.str.len_bytes().fill_null(0).cast(pl.Int64)
    if b'"' not in block:
        fields = ((lines.str.count_matches(",", literal=True) + 1) * lines.is_not_null()).fill_null(0)
        return pl.DataFrame({"fields": fields.cast(pl.Int64), "bytes": size}).with_columns(
            lines=pl.lit(1, pl.Int64), quoted=pl.lit(True)
        )
    frame = pl.DataFrame({"line": lines, "size": size}).with_columns(
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
        fields=pl.col("commas").sum() + 1, blank=(pl.len() == 1) & pl.col("line").first().is_null(),
        bytes=pl.col("size").sum(), lines=pl.len(),
    )  # fmt: skip
    return records.select(
        fields=pl.when(pl.col("blank")).then(0).otherwise("fields").cast(pl.Int64),
        bytes=pl.col("bytes").cast(pl.Int64),
        lines=pl.col("lines").cast(pl.Int64),
        quoted=~pl.col("record").is_in(_misquoted(frame).implode()),
    )


def _misquoted(lines: pl.DataFrame) -> pl.Series:
    """The records holding a line whose quotes the CSV rules cannot read (5'11", "a"b): only lines with a
    quote or inside one are looked at, each with the one pattern that fits where it starts and ends."""
    check = lines.filter((pl.col("q") > 0) | pl.col("inside")).with_columns(
        ends=pl.col("inside") ^ (pl.col("q") % 2 == 1), line=pl.col("line").fill_null("")
    )
    bad = [
        part.filter(~pl.col("line").str.contains(pattern))["record"]
        for (starts, ends), pattern in _WELL_QUOTED.items()
        if (part := check.filter((pl.col("inside") == starts) & (pl.col("ends") == ends))).height
    ]
    return pl.concat(bad) if bad else pl.Series("record", [], dtype=lines.schema["record"])


_QUOTED = re.compile(r'"[^"]*(?:""[^"]*)*"')
_PLAIN = re.compile(r'[^,\n"]*')
_INSIDE = 'a double quote inside a field that does not start with one (quote the field, double the quote: "5\'11""")'


def quote_problem(text: str) -> tuple[int, int, int, str] | None:
    """(record, line, field), each counted from 0 in `text`, of the first field the CSV rules
    cannot read, and what is wrong with it; None when every field reads. For error messages only:
    it walks the text field by field."""
    pos, record, line, field, end = 0, 0, 0, 0, len(text)
    while pos < end:
        if text[pos] == '"':
            match = _QUOTED.match(text, pos)
            if match is None:
                return record, line, field, "a quoted field whose closing double quote never comes"
            line += text.count("\n", pos, match.end())
            pos = match.end()
            if pos < end and text[pos] != "," and not text.startswith(("\n", "\r\n"), pos):
                return record, line, field, "text after the closing double quote of a quoted field"
        else:
            match = _PLAIN.match(text, pos)
            pos = match.end() if match else pos
            if pos < end and text[pos] == '"':
                return record, line, field, _INSIDE
        if pos >= end:
            break
        if text[pos] == ",":
            field, pos = field + 1, pos + 1
        else:
            record, line, field, pos = record + 1, line + 1, 0, pos + (2 if text[pos] == "\r" else 1)
    return None


def where(columns: Sequence[str], row: int, line: int, field: int) -> str:
    name = repr(columns[field]) if field < len(columns) else f"{field + 1} (past the header's {len(columns)})"
    return f"row {row} (line {line}), field {name}"


def open_quote_problem(head: bytes, columns: Sequence[str], row: int, line: int, max_row_bytes: int) -> str:
    """What is wrong with a record whose quoted field runs past the row bound, from its first bytes."""
    found = quote_problem(head.decode("utf-8", errors="replace"))
    if found is not None and found[3] == _INSIDE:
        return f"{where(columns, row, line + found[1], found[2])}: {found[3]}"
    field = f", field {columns[found[2]]!r}" if found is not None and found[2] < len(columns) else ""
    return (
        f"row {row} (line {line}){field}: a quoted field does not close within the {max_row_bytes:,}-byte row limit; "
        f"is a closing double quote missing? (CAMPAIGN_MAX_ROW_BYTES raises the limit)"
    )
