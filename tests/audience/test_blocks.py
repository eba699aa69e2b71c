"""How blocks() cuts a file: whole records, and a small rest of the file read with the piece before it."""

from __future__ import annotations

from pathlib import Path

from pipeline.audience.blocks import blocks

RECORD = b"+447911123456,GB,Ann,London,WELCOME-ABCDE,yes\n"  # 48 bytes


def _pieces(path: Path, size: int, *, cr: bool = False) -> list[bytes]:
    with path.open("rb") as handle:
        pieces = list(blocks(handle, size, 1 << 20, cr=cr))
    assert all(isinstance(p, bytes) for p in pieces)
    return pieces  # type: ignore[return-value]


def test_a_rest_of_at_most_a_quarter_piece_is_read_with_the_piece_before_it(tmp_path: Path) -> None:
    size = 100 * len(RECORD)
    path = tmp_path / "a.csv"
    path.write_bytes(RECORD * (300 + 25))  # three pieces and a rest of a quarter of one
    pieces = _pieces(path, size)
    assert [len(p) // len(RECORD) for p in pieces] == [100, 100, 125]
    assert b"".join(pieces) == path.read_bytes()


def test_a_larger_rest_is_a_piece_of_its_own(tmp_path: Path) -> None:
    size = 100 * len(RECORD)
    path = tmp_path / "a.csv"
    path.write_bytes(RECORD * (300 + 26))
    pieces = _pieces(path, size)
    assert [len(p) // len(RECORD) for p in pieces] == [100, 100, 100, 26]
    assert all(p.endswith(b"\n") for p in pieces)
    assert b"".join(pieces) == path.read_bytes()


def test_a_small_rest_joins_also_in_old_mac_files_and_without_a_final_line_break(tmp_path: Path) -> None:
    size = 100 * len(RECORD)
    path = tmp_path / "a.csv"
    path.write_bytes((RECORD * 210).replace(b"\n", b"\r")[:-1])
    pieces = _pieces(path, size, cr=True)
    # the last record has no line break: it stays a piece of its own, as before (a record is never cut)
    assert [p.count(b"\n") for p in pieces] == [100, 109, 0]
    assert b"".join(pieces) == (RECORD * 210)[:-1]
