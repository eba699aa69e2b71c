"""pipeline/store/bulk.py: rows staged beside the store, moved in chunks; statements that share a chunk's rows
out stop once every row is placed."""

from __future__ import annotations

import pyarrow as pa

from pipeline import store
from pipeline.store.bulk import staged

_COLUMNS = "spool_file, line_number, reason, raw"
_ROWS = pa.table({"spool_file": ["f"] * 7, "line_number": pa.array(range(7), pa.int64()),
                  "reason": ["a", "a", "b", "a", "a", "a", "a"], "raw": ["x"] * 7})
# Two statements that share the rows out: reason 'a' to the first, the rest to the second (a missing table: it
# fails whenever it runs).
_FIRST = f"INSERT INTO quarantine ({_COLUMNS}) SELECT {_COLUMNS} FROM {{stage}} WHERE {{chunk}} AND reason = 'a'"
_SECOND = f"INSERT INTO no_such_table ({_COLUMNS}) SELECT {_COLUMNS} FROM {{stage}} WHERE {{chunk}} AND reason <> 'a'"


def test_shared_statements_skip_the_rest_only_in_chunks_the_first_placed_whole(db: store.Store) -> None:
    # Chunks of 3: rows 3-5 and 6 are all 'a' (the second never runs there); rows 0-2 hold a 'b' (it runs: fails).
    later = _ROWS.slice(3)
    with staged(db, "quarantine", later, rows_per_transaction=3) as rows:
        assert rows.each_chunk(_FIRST, _SECOND, shared=True) == [4, 0]
    assert db.scalar("SELECT count(*) FROM quarantine") == 4
    failed = None
    with staged(db, "quarantine", _ROWS.slice(0, 3), rows_per_transaction=3) as rows:
        try:
            rows.each_chunk(_FIRST, _SECOND, shared=True)
        except Exception as exc:  # noqa: BLE001 - either store's error for the missing table
            failed = exc
    assert failed is not None and "no_such_table" in str(failed)
    assert db.scalar("SELECT count(*) FROM quarantine") == 4  # the failed chunk's transaction left nothing


def test_statements_not_shared_all_run_in_every_chunk(db: store.Store) -> None:
    failed = None
    with staged(db, "quarantine", _ROWS.slice(3), rows_per_transaction=3) as rows:
        try:
            rows.each_chunk(_FIRST, _SECOND)  # every row is 'a', and yet the second runs
        except Exception as exc:  # noqa: BLE001 - either store's error for the missing table
            failed = exc
    assert failed is not None and "no_such_table" in str(failed)
    assert db.scalar("SELECT count(*) FROM quarantine") == 0


def _numbered(count: int, odd_at: int | None = None) -> pa.Table:
    reasons = ["a"] * count
    if odd_at is not None:
        reasons[odd_at] = "b"
    return pa.table({"spool_file": ["g"] * count, "line_number": pa.array(range(count), pa.int64()),
                     "reason": reasons, "raw": ["x"] * count})


def test_chunks_written_by_two_writers_add_every_row_once(db: store.Store) -> None:
    # PostgreSQL writes chunks on two connections at once; SQLite one after the other: the same rows either way.
    with staged(db, "quarantine", _numbered(301), rows_per_transaction=7, writers=2) as rows:
        assert rows.each_chunk(_FIRST, _SECOND, shared=True) == [301, 0]
    assert db.rows("SELECT count(DISTINCT line_number) FROM quarantine WHERE spool_file = 'g'") == [(301,)]


def test_after_a_chunk_fails_the_chunks_not_started_are_not_run(db: store.Store) -> None:
    # 100 chunks of 3; the second holds a 'b', so the failing statement runs there. Without the stop, the other
    # 99 chunks (297 rows) would all be written; with it, only those already under way.
    failed = None
    with staged(db, "quarantine", _numbered(300, odd_at=4), rows_per_transaction=3, writers=2) as rows:
        try:
            rows.each_chunk(_FIRST, _SECOND, shared=True)
        except Exception as exc:  # noqa: BLE001 - either store's error for the missing table
            failed = exc
    assert failed is not None and "no_such_table" in str(failed)
    assert db.scalar("SELECT count(*) FROM quarantine WHERE spool_file = 'g'") < 150
