"""Records the reviews found mis-read (pipeline/audience/blocks.py, load.py): a long quoted field over lines that
does close is one row_too_long, not a refused file; a lone CR outside quotes ends a line (as Python's csv module
reads it), inside quotes it is data. Each read in one batch and in batches smaller than the record."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.audience.blocks import ReadLimits, lone_crs_to_newlines
from pipeline.audience.header import AudienceError
from pipeline.audience.load import load_audience

LIMITS = ReadLimits(max_field_bytes=64 * 1024, max_row_bytes=4096)
BATCHES = (1 << 20, 1000)  # the record inside one block; the record cut across reads (blocks() skips it)


@pytest.mark.parametrize("batch", BATCHES)
def test_a_long_quoted_field_over_lines_that_closes_is_one_row_too_long(tmp_path: Path, batch: int) -> None:
    field = "\r\n".join(["x" * 300] * 30)  # 9,000+ bytes over 30 lines, quoted, closed
    path = tmp_path / "a.csv"
    path.write_bytes(
        f'phone,opt_in,note\r\n+447911123456,yes,a\r\n+447911123457,yes,"{field}"\r\n+447911123458,yes,c\r\n'.encode()
    )
    loaded = load_audience(path, batch_bytes=batch, limits=LIMITS)
    assert loaded.rows_read == 3
    assert loaded.frame["row_number"].to_list() == [2, 4]
    assert loaded.frame["note"].to_list() == ["a", "c"]
    assert loaded.rejects.select("row_number", "reason").rows() == [(3, "row_too_long")]
    assert "row is 9020 bytes" in loaded.rejects["detail"][0]  # 18 + 2 quotes + 30 × 300: no line ends counted


@pytest.mark.parametrize("batch", BATCHES)
def test_a_long_record_whose_quotes_do_not_read_still_refuses_the_file(tmp_path: Path, batch: int) -> None:
    # 5'11" opens a "quoted field" that runs over the rows after it: not one row_too_long swallowing them.
    rows = "".join(f"+4479111234{i:02d},yes,{'y' * 200}\n" for i in range(30))
    path = tmp_path / "a.csv"
    path.write_bytes(f'phone,opt_in,note\n+447911123456,yes,5\'11"\n{rows}+447911123499,yes,"\n'.encode())
    with pytest.raises(AudienceError, match="row 2"):
        load_audience(path, batch_bytes=batch, limits=LIMITS)


@pytest.mark.parametrize("batch", (1 << 20, 40))
def test_a_lone_cr_after_a_crlf_header_ends_the_line_and_stays_data_inside_quotes(tmp_path: Path, batch: int) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(b'phone,opt_in,first_name\r\n+447911123456,yes,Ann\r+14155552671,yes,"Bo\rb"\r'
                     b"+447911123457,yes,Cy\n")
    loaded = load_audience(path, batch_bytes=batch, limits=LIMITS)
    assert loaded.rejects.height == 0
    assert loaded.frame.select("row_number", "phone", "first_name").rows() == [
        (2, "+447911123456", "Ann"), (3, "+14155552671", "Bo\rb"), (4, "+447911123457", "Cy")]


def test_lone_crs_become_newlines_only_outside_quotes_and_a_final_one_waits_for_its_lf() -> None:
    assert lone_crs_to_newlines(b'a\r"b\rc"\r\nd\r') == b'a\n"b\rc"\r\nd\r'
    assert lone_crs_to_newlines(b'a\r"b\rc"\r\nd\r', final=True) == b'a\n"b\rc"\r\nd\n'
    plain = b"a,b\r\nc,d\r\n"
    assert lone_crs_to_newlines(plain) is plain  # the common path: counted, not copied


@pytest.mark.parametrize("batch", (1 << 20, 1000))
def test_lone_cr_lines_longer_together_than_the_row_bound_are_rows_not_one_long_record(
    tmp_path: Path, batch: int
) -> None:
    path = tmp_path / "a.csv"
    rows = "".join(f"+4479111234{i:02d},yes,Ann\r" for i in range(200))  # 6,000+ bytes without a "\n"
    path.write_bytes(f"phone,opt_in,first_name\r\n{rows}".encode())
    loaded = load_audience(path, batch_bytes=batch, limits=LIMITS)
    assert loaded.rejects.height == 0 and loaded.frame.height == 200
    assert loaded.frame["phone"][-1] == "+4479111234199" and loaded.frame["row_number"][-1] == 201
