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
