"""Hostile or careless audience files: bounded fields and rows, memory that does not grow with the file,
CR-only line endings, stray quotes named by row and field, links and binary files refused without
echoing them, and control characters escaped in rejects.csv."""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import polars as pl
import pytest

from pipeline.audience.blocks import Oversized, ReadLimits, blocks
from pipeline.audience.load import AudienceError, AudienceReader, load_audience
from pipeline.cli.prepare import add_prepare_command
from pipeline.render.prepare import prepare_audience
from pipeline.spec import SpecError

HEADER = b"phone,opt_in,first_name\n"
ROW = b"+447400123456,yes,Ann\n"


def write(tmp_path: Path, content: bytes, name: str = "audience.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def prepare_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="campaign")
    add_prepare_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["prepare", *argv])
    return args.func(args)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


# --- a record that never ends -------------------------------------------------------------------------------


def test_a_line_of_nul_bytes_longer_than_the_row_bound_is_one_rejected_row(tmp_path: Path) -> None:
    # A header, then 2 MiB of NUL without a newline (`truncate -s` in small), then a good row.
    path = write(tmp_path, HEADER + b"\0" * (2 << 20) + b"\n" + ROW)
    for batch_bytes in (64 << 10, 128 << 20):  # the record skipped piece by piece, or within one batch
        loaded = load_audience(path, batch_bytes=batch_bytes)
        assert loaded.rows_read == 2
        assert loaded.rejects.rows() == [
            (2, "row_too_long", "row is 2097152 bytes, over the 1,048,576-byte row limit (CAMPAIGN_MAX_ROW_BYTES)")
        ]
        assert loaded.frame["row_number"].to_list() == [3]
        # The long row's values are not kept (they are never held when it is skipped).
        assert loaded.rejected_rows.select("phone", "opt_in", "first_name").row(0) == (None, None, None)


def test_the_reader_never_holds_more_than_a_piece_and_one_bounded_record() -> None:
    """blocks() over 5 MB without a newline, in pieces of 64 KiB with a 1 KiB row bound: what it
    yields (and so what it held) stays within a piece plus the bound, never the file."""
    handle = io.BytesIO(b"\0" * 5_000_000 + b"\n" + ROW)
    items = list(blocks(handle, 64 << 10, 1024))
    assert isinstance(items[0], Oversized)
    assert (items[0].size, items[0].lines, items[0].open_quote) == (5_000_000, 1, False)
    assert len(items[0].head) == 1024
    assert items[1:] == [ROW]


def test_a_batch_handed_over_is_not_held_by_the_reader(tmp_path: Path) -> None:
    """While the caller works on a batch, neither the reader nor its block generator keeps the batch or
    the bytes it was parsed from (at most the start of the next record): one batch in memory, never two."""
    path = write(tmp_path, HEADER + ROW * 2_000)
    pieces = blocks(io.BytesIO(ROW * 2_000), 4096, 1024)
    for piece in pieces:
        assert sys.getrefcount(piece) == 2  # `piece` and getrefcount's argument: nobody else
    with AudienceReader(path, batch_bytes=4096, limits=ReadLimits(max_row_bytes=1024)) as reader:
        batches, count = iter(reader), 0
        for loaded in batches:
            assert sys.getrefcount(loaded) == 2
            frames = [batches.gi_frame, reader._blocks.gi_frame]
            held = sum(len(v) for frame in frames for v in frame.f_locals.values() if isinstance(v, bytes))
            assert held <= len(HEADER) + 1024, held
            count += 1
    assert count > 10


def test_an_unterminated_quote_past_the_row_bound_is_an_error_naming_row_and_field(tmp_path: Path) -> None:
    rows = b"".join(b"+4474001234%02d,yes,Ann\n" % i for i in range(40))
    path = write(tmp_path, HEADER + ROW + b'+447400123499,yes,"Bob\n' + rows * 40)
    for batch_bytes in (1024, 1 << 20):
        with pytest.raises(AudienceError) as err:
            load_audience(path, batch_bytes=batch_bytes, limits=ReadLimits(max_row_bytes=4096))
        message = str(err.value)
        assert "row 3 (line 3), field 'first_name'" in message and "closing double quote" in message


def test_an_unquoted_long_line_never_ending_is_rejected_at_the_end_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + ROW + b"x" * 10_000)
    loaded = load_audience(path, batch_bytes=512, limits=ReadLimits(max_row_bytes=1000))
    assert loaded.rejects.select("row_number", "reason").rows() == [(3, "row_too_long")]


# --- field and row bounds -------------------------------------------------------------------------------------


def test_a_field_over_the_bound_rejects_its_row_naming_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + ROW + b"+447400123457,yes," + b"a" * 70_000 + b"\n")
    loaded = load_audience(path)
    assert loaded.rejects.rows() == [
        (3, "field_too_long", "field 'first_name' is 70000 bytes, over the 65,536-byte field limit "
         "(CAMPAIGN_MAX_FIELD_BYTES)")
    ]  # fmt: skip


def test_bounds_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = b"+447400123457,yes,Annabelle-Marie\n" + b"+447400123458,yes,Bo" + b" " * 30 + b"\n"
    path = write(tmp_path, HEADER + ROW + rows)
    monkeypatch.setenv("CAMPAIGN_MAX_FIELD_BYTES", "14")  # the phone numbers are 13
    monkeypatch.setenv("CAMPAIGN_MAX_ROW_BYTES", "45")
    loaded = load_audience(path)
    assert loaded.rejects.select("row_number", "reason").rows() == [(3, "field_too_long"), (4, "row_too_long")]
    monkeypatch.setenv("CAMPAIGN_MAX_ROW_BYTES", "lots")
    with pytest.raises(SpecError, match="CAMPAIGN_MAX_ROW_BYTES: 'lots' is not a whole number"):
        load_audience(path)


def test_a_header_wider_than_the_column_bound_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, b"phone,opt_in," + b",".join(b"c%d" % i for i in range(2000)) + b"\n")
    with pytest.raises(AudienceError, match="the header has 2,002 columns, over the limit of 1,000"):
        load_audience(path)
    monkeypatch.setenv("CAMPAIGN_MAX_COLUMNS", "5000")
    assert load_audience(path).rows_read == 0


def test_campaign_prepare_options_set_the_bounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, HEADER + ROW + b"+447400123457,yes,Annabelle-Marie\n")
    out = tmp_path / "out"
    assert prepare_cli(str(path), "--out", str(out), "--max-field-bytes", "14", "--json") == 0
    assert '"by_reason": {"field_too_long": 1}' in capsys.readouterr().out
    assert prepare_cli(str(path), "--out", str(out), "--max-row-bytes", "25", "--json") == 0  # the header is 23
    assert '"by_reason": {"row_too_long": 1}' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        prepare_cli(str(path), "--max-row-bytes", "0")


# --- files that are not audiences ---------------------------------------------------------------------------


def test_nul_bytes_without_a_header_are_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, b"\0" * (3 << 20))
    assert prepare_cli(str(path), "--out", str(tmp_path / "out")) == 2
    err = one_line_error(capsys)
    assert str(path) in err and "no line break in the first 1,048,576 bytes" in err and "NUL" in err
    assert "\0" not in err


def test_a_short_binary_file_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, b"\0\x01\x02PK\0\0\n\0\0")
    assert prepare_cli(str(path), "--out", str(tmp_path / "out")) == 2
    assert "line 1 holds NUL bytes: a binary file, not CSV" in one_line_error(capsys)


def test_a_symbolic_link_is_refused_and_its_target_never_echoed(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    secret = write(tmp_path, b"root:x:0:0:the-secret-line:/root:/bin/bash\n", "passwd")
    link = tmp_path / "audience.csv"
    link.symlink_to(secret)
    assert prepare_cli(str(link), "--out", str(tmp_path / "out")) == 2
    err = one_line_error(capsys)
    assert "symbolic link" in err and "the-secret-line" not in err and "/bin/bash" not in err


def test_a_file_that_is_no_audience_is_not_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, b"root:x:0:0:the-secret-line:/root:/bin/bash\ndaemon:x:1:1::/:/bin/sh\n")
    with pytest.raises(AudienceError) as err:
        load_audience(path)
    assert "does not look like a header row" in str(err.value) and "the-secret-line" not in str(err.value)


def test_a_pipe_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "audience.csv"
    os.mkfifo(fifo)
    with pytest.raises(AudienceError, match="not a regular file"):
        load_audience(fifo)


# --- line endings and quotes ----------------------------------------------------------------------------------


def test_cr_only_line_endings_are_read(tmp_path: Path) -> None:
    path = write(tmp_path, b"phone,opt_in,first_name\r+447400123456,yes,Ann\r+447400123457,no,Bob\r")
    for batch_bytes in (8, 1 << 20):
        loaded = load_audience(path, batch_bytes=batch_bytes)
        assert loaded.frame.rows() == [(2, "+447400123456", "yes", "Ann"), (3, "+447400123457", "no", "Bob")]


def test_a_quote_inside_a_field_names_the_row_and_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = write(tmp_path, b"phone,opt_in,height,city\n" + b"+447400123456,yes,6'1,York\n" * 3
                 + b"+447400123457,yes,5'11\",Leeds\n+447400123458,yes,6'0,Hull\n")  # fmt: skip
    assert prepare_cli(str(path), "--out", str(tmp_path / "out")) == 2
    err = one_line_error(capsys)
    assert "row 5 (line 5), field 'height': a double quote inside a field" in err


# --- rejects.csv --------------------------------------------------------------------------------------------


def test_nul_and_bidi_overrides_are_escaped_in_rejects_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER + "+447400123457,maybe,A\0nn\n+447400123458,maybe,\u202etxt.exe\n+447400123459,maybe,=1+1\n".encode(),
    )
    prepare_audience(path, channel="whatsapp", category="marketing", out_dir=tmp_path / "out")
    written = (tmp_path / "out" / "rejects.csv").read_bytes()
    assert b"\0" not in written and "\u202e".encode() not in written
    names = pl.read_csv(tmp_path / "out" / "rejects.csv", infer_schema=False)["first_name"].to_list()
    assert names == ["A\\x00nn", "\\u202etxt.exe", "'=1+1"]
    # The parquet file keeps the values as read.
    kept = pl.read_parquet(tmp_path / "out" / "rejects.parquet")["first_name"].to_list()
    assert kept[:2] == ["A\0nn", "\u202etxt.exe"]
