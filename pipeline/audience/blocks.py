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
    # Its quotes do not read: a quoted field never closes before the end of the file, or its first bytes hold a
    # quote the CSV rules cannot read (5'11"), which would have run it over the rows after it: the file is broken.
    open_quote: bool


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


_LONE_CR = re.compile(rb"\r(?!\n)")


def lone_crs_to_newlines(block: bytes, *, final: bool = False) -> bytes:
    """`block` (which starts at a record) with each "\r" that is neither half of a "\r\n" nor inside a quoted
    field made a "\n": a line end, as Python's csv module (and a spreadsheet) reads it, where Polars would read
    it as data and merge two records. A final "\r" is left unless `final`: the next read may bring its "\n".
    Callers look for a CR inside a line first (read_block in its lines, blocks() only for a record over the row
    bound): counting "\r\n" in a CRLF file costs ~3 ms a MB here."""
    crs = block.count(b"\r")
    if not crs:
        return block
    lone = crs - block.count(b"\r\n")
    if lone == 0 or (lone == 1 and block.endswith(b"\r") and not final):
        return block
    out, quotes, pos = bytearray(block), 0, 0
    for match in _LONE_CR.finditer(block):
        at = match.start()
        if at == len(block) - 1 and not final:
            break
        quotes += block.count(b'"', pos, at)
        pos = at
        if quotes % 2 == 0:  # inside a quoted field a CR is data
            out[at] = 0x0A
    return bytes(out)


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
        cut, open_bytes = _open_record(block)
        if open_bytes > max_row_bytes and b"\r" in block:
            # Lines ended by lone CRs may be what looks like one long record. Only looked for here: elsewhere a
            # lone CR does not move where a block is cut (read_block reads it as a line end), and looking costs.
            block = lone_crs_to_newlines(block)
            cut, open_bytes = _open_record(block)
        if open_bytes <= max_row_bytes:
            pieces, carry = [block[:cut]] if cut else [], block[cut:]
            del block  # the consumer parses the piece: hold nothing else meanwhile, nor the piece itself
            if pieces:
                yield pieces.pop()
            continue
        pieces = [block[:cut]] if cut else []
        head, quotes, lines = block[cut : cut + max_row_bytes], block.count(b'"', cut), block.count(b"\n", cut)
        read, last = open_bytes + block.endswith(b"\r"), block[-1:]  # a final "\r" counted until a "\n" follows
        check = _QuoteCheck()
        check.feed(block, cut)
        del block
        if pieces:
            yield pieces.pop()
        # Newlines already read in the open record are inside quotes; it ends at the first newline after
        # balanced quotes, however far on: a long quoted field that closes is one row_too_long, not a broken file.
        skipped, carry = _skip(handle, Oversized(read, lines, head, False), check, quotes, last, min(size, 1 << 20), cr)
        yield skipped
    if carry:
        yield carry


def _open_record(block: bytes) -> tuple[int, int]:
    """(where the last whole record of `block` ends, the bytes of the open record after it as record_bytes
    counts them), measured in place, as it may be most of the block (a final "\r" not counted: it may be
    the first half of the record's "\r\n")."""
    cut = record_end(block)
    return cut, len(block) - cut - block.count(b"\n", cut) - block.count(b"\r\n", cut) - block.endswith(b"\r")


def _skip(
    handle: BinaryIO, record: Oversized, check: _QuoteCheck, quotes: int, last: bytes, step: int, cr: bool
) -> tuple[Oversized, bytes]:
    """Reads past a long record of which `record` counts what was read (`quotes` of it quotes, the last byte
    `last`, its quotes checked so far by `check`), in pieces of `step`, keeping only counts: (the Oversized
    record, what follows it in the last piece read). A newline ends it only after balanced quotes (inside a
    quoted field it is data)."""
    size, lines = record.size, record.lines
    while chunk := _read(handle, step, cr):
        end = _record_newline(chunk, quotes)
        part = chunk if end < 0 else chunk[: end + 1]
        # record_bytes counts neither "\n" nor the "\r" of "\r\n", also when the read split the pair
        size += record_bytes(part) - (last == b"\r" and part.startswith(b"\n"))
        lines, quotes, last = lines + part.count(b"\n"), quotes + part.count(b'"'), chunk[-1:]
        check.feed(part)
        if end >= 0:
            return Oversized(size, lines, record.head, check.bad), chunk[end + 1 :]
    return Oversized(size, lines, record.head, check.bad or quotes % 2 == 1), b""


def _record_newline(chunk: bytes, quotes: int) -> int:
    """The first newline of `chunk` that ends a record which had `quotes` quotes before the chunk (the first
    with an even number of quotes before it), or -1."""
    if b'"' not in chunk:
        return chunk.find(b"\n") if quotes % 2 == 0 else -1
    pos = 0
    while (newline := chunk.find(b"\n", pos)) >= 0:
        quotes += chunk.count(b'"', pos, newline)
        if quotes % 2 == 0:
            return newline
        pos = newline + 1
    return -1


class _QuoteCheck:
    """Whether a long record's quotes read by the CSV rules (records_of's `quoted`), fed in pieces and holding
    nothing of them: a quote outside a field opens one after a separator or a line start; inside, one doubles
    the next or closes the field before a separator or a line end. A stray quote (5'11") would otherwise run
    the record over the rows after it into one row_too_long; with it the file is refused, as read_block does."""

    def __init__(self) -> None:
        self.inside, self.closing, self.bad, self.prev = False, False, False, b"\n"

    def feed(self, data: bytes, pos: int = 0) -> None:
        if self.closing and pos < len(data):  # the last piece ended on a quote inside a field
            self.closing = False
            if data[pos : pos + 1] == b'"':
                pos += 1
            else:
                self.inside, self.bad = False, data[pos : pos + 1] not in (b",", b"\n", b"\r")
        while not self.bad and (at := data.find(b'"', pos)) >= 0:
            pos = at + 1
            if not self.inside:
                self.inside, self.bad = True, (data[at - 1 : at] if at else self.prev) not in (b",", b"\n")
            elif (after := data[pos : pos + 1]) == b'"':
                pos += 1
            elif not after:
                self.closing = True
            else:
                self.inside, self.bad = False, after not in (b",", b"\n", b"\r")
        self.prev = data[-1:] or self.prev


def _head_problem(head: bytes) -> tuple[int, int, int, str] | None:
    """quote_problem of a long record's first bytes, up to their last separator or newline: the bytes after it
    may stop between the two quotes of a "" pair, which would read as text after a closing quote."""
    end = max(head.rfind(b","), head.rfind(b"\n") + 1, 0)
    return quote_problem(head[:end].decode("utf-8", errors="replace"))


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
    # inside throughout, or closing a field and opening another further on ("a\n","b\n": found with the row
    # bound's check, which reads this since long quoted records over lines became rows)
    (True, True): f'^(?:[^"]|"")*(?:"(?:,{_FIELD})*,"(?:[^"]|"")*)?$',
}


def records_of(block: bytes, lines: pl.Series | None = None) -> pl.DataFrame:
    """fields (0 for a blank line), bytes (as record_bytes counts them), lines and whether every quote
    in it is where the CSV rules put quotes (`quoted`), for every record of `block`, in order; quotes
    may hold separators and newlines. Vectorised: a newline ends a record when the quotes before it
    are balanced, and a comma separates fields when the quotes before it on its line (counting from
    the record's state at the line start) are balanced. `lines`: lines_of(block), when the caller has it."""
    lines = lines_of(block) if lines is None else lines
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
_NEVER_CLOSES = "a quoted field whose closing double quote never comes"
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
                return record, line, field, _NEVER_CLOSES
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
    found = _head_problem(head)
    if found is not None and found[3] != _NEVER_CLOSES:
        return f"{where(columns, row, line + found[1], found[2])}: {found[3]}"
    field = f", field {columns[found[2]]!r}" if found is not None and found[2] < len(columns) else ""
    return (
        f"row {row} (line {line}){field}: a quoted field does not close within the {max_row_bytes:,}-byte row limit; "
        f"is a closing double quote missing? (CAMPAIGN_MAX_ROW_BYTES raises the limit)"
    )
