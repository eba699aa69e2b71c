"""Properties of preparation over generated input: `campaign prepare` never raises on any bytes (an
`error:` line and exit code 2, or its output files), and any batch size gives the same accepted and
rejected rows, including rows over the field and row bounds and records that never end."""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.audience.blocks import ReadLimits
from pipeline.audience.load import AudienceError, Loaded, load_audience
from pipeline.cli.prepare import add_prepare_command

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A whole `campaign prepare` per example (~0.08 s, most of it classifying numbers): fewer examples.
PREPARE_PROPERTY = settings(PROPERTY, max_examples=100)
HEADER = b"phone,opt_in,first_name\n"
# Bytes that matter to a CSV reader, and some that matter to people reading the rejects.
PIECES = [b",", b'"', b'""', b"\n", b"\r\n", b"\r", b"\0", b" ", b"a", b"yes", b"+447400123456", b"07400 123457",
          b"\xff", "\u202e".encode(), "é".encode(), b"=1+1", b"x" * 40]  # fmt: skip
ANY_BYTES = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(PIECES), max_size=60).map(b"".join),
    st.lists(st.sampled_from(PIECES), max_size=60).map(lambda p: HEADER + b"".join(p)),
)


def _prepare_cli(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="campaign")
    add_prepare_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["prepare", *argv])
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = args.func(args)
    return code, err.getvalue()


@PREPARE_PROPERTY
@given(content=ANY_BYTES, text=st.sampled_from(["Hi {{ first_name }}!", "Your order has shipped.", "{{ opt_in * 3 }}"]))
def test_campaign_prepare_never_raises_on_any_bytes(content: bytes, text: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        audience, template, out = Path(folder) / "a.csv", Path(folder) / "t.txt", Path(folder) / "out"
        audience.write_bytes(content)
        template.write_text(text)
        bounds = ("--max-field-bytes", "24", "--max-row-bytes", "64")
        code, err = _prepare_cli(str(audience), "--out", str(out), "--template", str(template), *bounds)
        if code == 2:
            assert err.startswith("error: ") and err.count("\n") == 1, err
        else:
            assert code == 0 and err == ""
            assert {p.name for p in out.iterdir()} == {"accepted.parquet", "rejects.parquet", "rejects.csv"}


def _field() -> st.SearchStrategy[bytes]:
    plain = st.text(alphabet="ab +4é\0\u202e=", max_size=30).map(str.encode)
    quoted = st.text(alphabet='ab,\n"é', max_size=30).map(lambda t: b'"' + t.replace('"', '""').encode() + b'"')
    phone = st.sampled_from([b"+447400123456", b"+447400123457", b"07400 123458", b""])
    return st.one_of(plain, quoted, phone)


# Rows of one to four fields (the header has three), blank lines, CRLF endings, rows far past the bounds,
# and now and then a stray quote or an unclosed one.
ROWS = st.lists(
    st.one_of(
        st.lists(_field(), min_size=1, max_size=4).map(b",".join),
        st.just(b""),
        st.integers(60, 400).map(lambda n: b"+447400123459,yes," + b"\0" * n),
        st.sampled_from([b"+447400123460,yes,5'11\"", b'+447400123461,yes,"open', b'+447400123462,yes,=HYPERLINK("x")',
                         b'+447400123463,yes,3" x 5"']),  # fmt: skip
    ),
    max_size=12,
)


def _loaded(path: Path, batch_bytes: int) -> Loaded | type[AudienceError]:
    try:
        return load_audience(path, batch_bytes=batch_bytes, limits=ReadLimits(max_field_bytes=24, max_row_bytes=64))
    except AudienceError:
        return AudienceError


@PROPERTY
@given(rows=ROWS, crlf=st.booleans(), final_newline=st.booleans())
# Found by this test: two stray quotes read as one multi-line field in one batch, an error in another.
@example(rows=[b"", b"+447400123460,yes,5'11\"", b"", b"", b'"\n\n\n\n"', b"+447400123460,yes,5'11\"", b""],
         crlf=False, final_newline=False)  # fmt: skip
def test_any_batch_size_gives_the_same_accepted_and_rejected_rows(rows: list[bytes], crlf: bool, final_newline: bool):
    """Batches are where the reader cuts the file; every later stage works row by row."""
    ending = b"\r\n" if crlf else b"\n"
    content = HEADER + ending.join(rows) + (ending if final_newline and rows else b"")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.csv"
        path.write_bytes(content)
        whole = _loaded(path, 1 << 20)
        for batch_bytes in (9, 80):  # pieces shorter than most rows, and than the row bound
            pieces = _loaded(path, batch_bytes)
            if isinstance(whole, type) or isinstance(pieces, type):
                assert pieces is whole, batch_bytes
                continue
            assert pieces.rows_read == whole.rows_read, batch_bytes
            assert pieces.frame.equals(whole.frame), batch_bytes
            assert pieces.rejects.equals(whole.rejects), batch_bytes
            assert pieces.rejected_rows.equals(whole.rejected_rows), batch_bytes
