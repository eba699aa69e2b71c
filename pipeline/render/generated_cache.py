"""The store's cache of model-written values (`generated_values`, pipeline/render/personalise.py): each answer by
the hash of its input, with the outcome of the checks (pipeline/render/generated_checks.py) under the key that
gave it, so a re-run reads outcomes instead of checking every value again.

Read in bulk: one query per LOOKUP_BATCH hashes, the hashes sent as one JSON parameter (no bound on bind
variables on either database, and no statement to compile per chunk) and the rows returned as Arrow. Written in
bulk: answers by insert_frame, outcomes through a staging table and one UPDATE ... FROM.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import polars as pl
from sqlalchemy import text

from pipeline.store import Store, dialect
from pipeline.store.arrow import reader
from pipeline.store.bulk import insert_frame

LOOKUP_BATCH = 50_000  # hashes per query: a JSON parameter of ~3.5 MB
CACHED = {"input_hash": pl.String, "value": pl.String, "fresh": pl.Boolean, "refusal": pl.String}
# Each row comes back with its position among the hashes asked (cheaper to carry than the hash) and whether its
# outcome is under the key asked (cheaper than the key itself): a warm re-run of 100,000 rows spends most of
# its time turning these rows into Python objects.
_LOOKUP = {
    "sqlite": "SELECT j.key AS i, g.value, g.check_key = :key AS fresh, g.refusal FROM json_each(:hashes) AS j "
              "JOIN generated_values AS g ON g.input_hash = j.value",
    "postgresql": "SELECT j.n - 1 AS i, g.value, g.check_key = :key AS fresh, g.refusal "
                  "FROM jsonb_array_elements_text(CAST(:hashes AS jsonb)) WITH ORDINALITY AS j(h, n) "
                  "JOIN generated_values AS g ON g.input_hash = j.h",
}


def lookup(db: Store, hashes: pl.Series, key: str, *, batch: int = LOOKUP_BATCH) -> pl.DataFrame:
    """The cached rows of those of `hashes` the store holds (CACHED's columns; `fresh`: its check outcome is
    under `key`), in no particular order; one query per `batch` hashes."""
    parts = [pl.DataFrame(schema=CACHED)]
    if not hashes.len():
        return parts[0]
    with _rows(db) as read:
        for start in range(0, hashes.len(), batch):
            chunk = hashes.slice(start, batch)
            # Hex digests need no escaping: the JSON array is made without a JSON encoder.
            found = read(_LOOKUP[db.dialect], key=key, hashes='["' + chunk.str.join('","').item() + '"]')
            if found.height:
                parts.append(found.select(input_hash=chunk.gather(found["i"]), value="value",
                                          fresh=pl.col("fresh").cast(pl.Boolean), refusal="refusal"))
    return pl.concat(parts)


@contextmanager
def _rows(db: Store) -> Iterator[Callable[..., pl.DataFrame]]:
    """A reader of query rows as a frame (i, value, fresh, refusal): PostgreSQL's through ADBC as Arrow; SQLite's
    straight from its cursor into Polars, which takes the rows in Rust (pipeline/store/arrow.py's reader first
    transposes them in Python, which costs more than the query)."""
    schema = {"i": pl.Int64, "value": pl.String, "fresh": pl.Int64, "refusal": pl.String}
    if db.dialect == "postgresql":
        with reader(db) as arrow:
            def read_pg(statement: str, **params: Any) -> pl.DataFrame:
                found = pl.from_arrow(arrow.arrow(statement, **params))
                assert isinstance(found, pl.DataFrame)
                return found.cast({"i": pl.Int64, "fresh": pl.Boolean, "value": pl.String, "refusal": pl.String})
            yield read_pg
        return
    with db.read() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]

        def read_sqlite(statement: str, **params: Any) -> pl.DataFrame:
            return pl.DataFrame(cursor.execute(statement, params).fetchall(), schema=schema, orient="row")
        try:
            yield read_sqlite
        finally:
            cursor.close()


def save_answers(db: Store, answers: pl.DataFrame, model: str) -> None:
    """Caches answers (input_hash, value, prompt_tokens, completion_tokens, check_key, refusal); a hash already
    cached (another run got there first) keeps what it has."""
    if answers.height:
        frame = answers.with_columns(model=pl.lit(model), created_at=pl.lit(datetime.now(UTC)))
        with db.write() as conn:
            insert_frame(conn, "generated_values", frame, on_conflict="ignore")


def save_outcomes(db: Store, outcomes: pl.DataFrame) -> None:
    """Replaces the stored check outcome (input_hash, check_key, refusal) of cached values."""
    if not outcomes.height:
        return
    columns = ["input_hash", "check_key", "refusal"]
    stage = f"_checks_{secrets.token_hex(4)}"
    with db.write() as conn:
        conn.execute(text(dialect.temp_table_sql(db.dialect, stage, "generated_values", columns)))
        dialect.copy_rows(conn, stage, columns, outcomes.select(columns).iter_rows())
        conn.execute(text(f"UPDATE generated_values SET check_key = s.check_key, refusal = s.refusal "
                          f"FROM {stage} AS s WHERE generated_values.input_hash = s.input_hash"))
        if db.dialect == "sqlite":  # PostgreSQL drops it at commit
            conn.execute(text(f"DROP TABLE {stage}"))
