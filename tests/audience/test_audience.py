"""load_audience: text columns, spreadsheet row numbers, bad rows as rejects, bad files as errors."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.audience.load import AudienceError, AudienceReader, load_audience
from pipeline.records import REJECTS_SCHEMA


def write(tmp_path: Path, content: str | bytes, name: str = "audience.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def test_reads_every_column_as_text_and_keeps_spreadsheet_row_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "phone,opt_in,zip\n07911123456,yes,00123\n+447911123457,1,0042\n")
    loaded = load_audience(path)
    assert loaded.rows_read == 2
    assert loaded.frame.columns == ["row_number", "phone", "opt_in", "zip"]
    assert loaded.frame.schema["row_number"] == pl.Int64
    assert all(loaded.frame.schema[c] == pl.String for c in ("phone", "opt_in", "zip"))
    # Leading zeros survive: nothing was inferred as a number.
    assert loaded.frame.rows() == [(2, "07911123456", "yes", "00123"), (3, "+447911123457", "1", "0042")]
    assert loaded.rejects.schema == pl.Schema(REJECTS_SCHEMA)
    assert loaded.rejects.height == 0


def test_strips_a_utf8_bom_and_header_whitespace(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffphone , opt_in\n+447911123456,yes\n")
    loaded = load_audience(path)
    assert loaded.frame.columns == ["row_number", "phone", "opt_in"]
    assert loaded.frame["phone"].to_list() == ["+447911123456"]


def test_crlf_line_endings(tmp_path: Path) -> None:
    loaded = load_audience(write(tmp_path, "phone,opt_in\r\n+447911123456,yes\r\n+447911123457,no\r\n"))
    assert loaded.frame.rows() == [(2, "+447911123456", "yes"), (3, "+447911123457", "no")]


def test_missing_required_column_names_file_column_and_columns_found(tmp_path: Path) -> None:
    path = write(tmp_path, "mobile,opt_in\n+447911123456,yes\n")
    with pytest.raises(AudienceError) as err:
        load_audience(path)
    message = str(err.value)
    assert str(path) in message and "'phone'" in message and "mobile" in message


def test_custom_required_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "phone,opt_in\n+447911123456,yes\n")
    with pytest.raises(AudienceError, match="first_name"):
        load_audience(path, required=("phone", "opt_in", "first_name"))


@pytest.mark.parametrize(("content", "says"), [
    pytest.param("phone;opt_in\n+447911123456;yes\n", "separator", id="semicolon_file_gets_a_hint"),
    pytest.param("phone,opt_in,name\n+447911123456,yes,Ann\n+447911123457,yes,Jos\xe9\n".encode("latin-1"),
                 r"line 3 is not valid UTF-8", id="non_utf8_bytes_name_the_line"),
    pytest.param("phone,opt_in\n+447911123456,yes\n".encode("utf-16"), "UTF-16", id="utf16_is_refused_with_advice"),
    pytest.param("phone,opt_in,phone\n1,yes,2\n", "repeats", id="duplicate_header_names_are_refused"),
    pytest.param("phone,opt_in,region\n+447911123456,yes,North\n", "region", id="reserved_column_names_are_refused"),
    pytest.param('phone,opt_in\n+447911123456,yes\n+447911123457,"yes\n', "quote", id="unbalanced_quote"),
])
def test_an_unusable_file_is_one_clear_audience_error(tmp_path: Path, content: str | bytes, says: str) -> None:
    with pytest.raises(AudienceError, match=says):
        load_audience(write(tmp_path, content))


def test_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AudienceError, match="empty"):
        load_audience(write(tmp_path, ""))
    with pytest.raises(AudienceError, match="empty"):
        load_audience(write(tmp_path, "\n\n", "blank.csv"))


def test_header_only_file_has_zero_rows(tmp_path: Path) -> None:
    for content in ("phone,opt_in\n", "phone,opt_in"):
        loaded = load_audience(write(tmp_path, content))
        assert loaded.rows_read == 0 and loaded.frame.height == 0 and loaded.rejects.height == 0
        assert loaded.frame.columns == ["row_number", "phone", "opt_in"]


def test_missing_file_is_an_audience_error(tmp_path: Path) -> None:
    with pytest.raises(AudienceError, match="cannot read"):
        load_audience(tmp_path / "nope.csv")


def test_empty_phone_blank_line_and_ragged_rows_are_bad_rows(tmp_path: Path) -> None:
    content = (
        "phone,opt_in,name\n"
        "+447911123456,yes,Ann\n"  # 2
        ",yes,Bob\n"  # 3 empty phone
        "   ,yes,Cy\n"  # 4 whitespace phone
        "\n"  # 5 blank line
        "+447911123457,yes\n"  # 6 too few fields
        "+447911123458,yes,Di,extra\n"  # 7 too many fields
        "+447911123459,no,Ed\n"  # 8
    )
    loaded = load_audience(write(tmp_path, content))
    assert loaded.rows_read == 7
    assert loaded.frame["row_number"].to_list() == [2, 8]
    rejects = {r: (reason, detail) for r, reason, detail in loaded.rejects.rows()}
    assert rejects == {
        3: ("bad_row", "phone is empty"),
        4: ("bad_row", "phone is empty"),
        5: ("bad_row", "row is empty"),
        6: ("bad_row", "row has 2 field(s), the header has 3"),
        7: ("bad_row", "row has 4 field(s), the header has 3"),
    }
    assert loaded.rejected_rows["row_number"].to_list() == [3, 4, 5, 6, 7]
    assert loaded.frame.height + loaded.rejects.height == loaded.rows_read


def test_quoted_fields_with_commas_and_newlines_count_as_one_row(tmp_path: Path) -> None:
    content = (
        "phone,opt_in,city\n"
        '+447911123456,yes,"London, UK"\n'  # 2
        '+447911123457,yes,"two\nlines"\n'  # 3: one record over two lines
        "+447911123458,yes\n"  # 4: ragged, detected through the csv-module path
        "+447911123459,yes,Leeds\n"  # 5
    )
    loaded = load_audience(write(tmp_path, content))
    assert loaded.frame["row_number"].to_list() == [2, 3, 5]
    assert loaded.frame["city"].to_list() == ["London, UK", "two\nlines", "Leeds"]
    assert loaded.rejects.rows() == [(4, "bad_row", "row has 2 field(s), the header has 3")]


def test_batches_of_any_size_give_the_same_rows(tmp_path: Path) -> None:
    content = (
        "phone,opt_in,city\n"
        '+447911123456,yes,"London, UK"\n'
        '+447911123457,yes,"two\nlines\nhere"\n'
        "\n"
        "+447911123458,yes\n"
        ",yes,Leeds\n"
        + "".join(f"+4479111234{i:02d},no,Town {i}\r\n" for i in range(60))
        + '+447911123459,y,"ends ""quoted"""'
    )
    path = write(tmp_path, content)
    whole = load_audience(path)
    for size in (1, 7, 64, 300):
        batched = load_audience(path, batch_bytes=size)
        assert batched.frame.equals(whole.frame), size
        assert batched.rejects.equals(whole.rejects), size
        assert batched.rejected_rows.equals(whole.rejected_rows), size
        assert batched.rows_read == whole.rows_read == 66
    assert whole.frame.filter(pl.col("row_number") == 3)["city"].item() == "two\nlines\nhere"
    assert whole.frame["city"].to_list()[-1] == 'ends "quoted"'
    assert dict(whole.rejects.select("row_number", "reason").iter_rows()) == {4: "bad_row", 5: "bad_row", 6: "bad_row"}


def test_non_utf8_line_is_named_in_any_batch(tmp_path: Path) -> None:
    lines = ["phone,opt_in,name"] + [f"+4479111234{i:02d},yes,Ann" for i in range(40)] + ["+447911123499,yes,Jos\xe9"]
    path = write(tmp_path, ("\n".join(lines) + "\n").encode("latin-1"))
    for size in (16, 1 << 20):
        with pytest.raises(AudienceError, match=r"line 42 is not valid UTF-8 \(byte 0xE9 at column 22\)"):
            load_audience(path, batch_bytes=size)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("phone\topt_in\n+447911123456\tyes\n", "separator"),  # tab-separated
        ("+447911123456,yes\n+447911123457,no\n", "header row"),  # no header
        ("phone,opt_in\n", None),  # header only: no rows, no error
    ],
)
def test_hostile_files(tmp_path: Path, content: str, message: str | None) -> None:
    path = write(tmp_path, content)
    if message is None:
        assert load_audience(path).rows_read == 0
        return
    with pytest.raises(AudienceError, match=message):
        load_audience(path)


def test_a_quote_in_mid_field_is_counted_like_the_csv_module(tmp_path: Path) -> None:
    # 5'11" written in a field: quotes are only special at the start of a field.
    path = write(tmp_path, 'phone,opt_in,note\n+447911123456,yes,"5\'11"""\n+447911123457,yes,x,extra\n')
    loaded = load_audience(path)
    assert loaded.frame["note"].to_list() == ["5'11\""]
    assert loaded.rejects.rows() == [(3, "bad_row", "row has 4 field(s), the header has 3")]


def test_reader_gives_the_columns_before_reading_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "phone,opt_in,first_name\n" + "+447911123456,yes,Ann\n" * 50)
    with AudienceReader(path, batch_bytes=64) as reader:
        assert reader.columns == ["phone", "opt_in", "first_name"]
        batches = list(reader)
    assert len(batches) > 5
    assert [b.frame["row_number"].min() for b in batches][:2] == [2, 2 + batches[0].rows_read]


def test_batches_are_read_one_at_a_time(tmp_path: Path) -> None:
    """A file larger than memory streams: the next batch is read only when it is wanted (rows
    appended meanwhile are still found)."""
    path = write(tmp_path, "phone,opt_in\n" + "".join(f"+4479111234{i:02d},yes\n" for i in range(50)))
    with AudienceReader(path, batch_bytes=256) as reader:
        batches = iter(reader)
        first = next(batches)
        with path.open("a") as handle:
            handle.write("+447911123499,yes\n")
        rest = list(batches)
    assert first.rows_read < 50
    assert first.rows_read + sum(b.rows_read for b in rest) == 51
    assert rest[-1].frame["phone"].to_list()[-1] == "+447911123499"
