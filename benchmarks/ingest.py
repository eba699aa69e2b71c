"""Benchmark: ingest 1,000,000 WhatsApp status receipts from spool files into a fresh store (SQLite, PostgreSQL).

Generates (seeded) a spool like the receiver writes: POSTs of 1-7 statuses in Meta's envelope,
statuses of one message spread over time and posted out of order, ~0.5 % of POSTs delivered twice
(Meta retries), a few inbound replies (some STOP), a few torn or malformed lines, ~300 files.
Then times `ingest_spool` into a fresh database, and replays every file after deleting the
`spool_files` bookkeeping: `reingest_added` must be 0. Data lives in a temporary directory.

The alternative the issue asked to measure beside it: a columnar history, the same receipts parsed by the
same bulk SQL and appended as one Parquet file (zstd) that DuckDB would read without locks
(`parquet_history_seconds`): what parsing costs alone, and what a history that no process writes row by row
would cost per ingest (without the check against receipts already in it). And, per backend, the design that
would keep receipts in columns inside the store (`columnar_*`, scratch tables of the benchmark's own store, not the
product's schema): the batch's receipts as zstd Arrow blobs (without their raw JSON, which the spool keeps) and one
row of state per message, upserted, done one after the other: what such an ingest would cost before any overlap.

    .venv/bin/python benchmarks/ingest.py [--events 1000000] [--seed 7] [--backend sqlite,postgresql]

One JSON line per backend, the last line the last backend's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import _payloads
import duckdb
import pyarrow as pa
from _dispatch_kit import backends_arg, stores

from pipeline import store
from pipeline.channels.whatsapp_webhooks import bulk_statuses_sql
from pipeline.receipts.event_ids import EVENT_ID_SQL
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.spool import closed_files, encode_record, lines_table, read_spool_file
from pipeline.store import run_many
from pipeline.store.bulk import load_arrow, staged

T0 = 1_764_000_000
RECEIVED = datetime(2026, 11, 25, tzinfo=UTC)


def generate(spool_dir: Path, events: int, seed: int, lines_per_file: int) -> dict[str, int]:
    """Writes the spool; returns what it holds."""
    rng = random.Random(seed)
    timeline: list[tuple[int, str]] = []
    n = 0
    while len(timeline) < events:
        # ~50 new messages a second; each status reaches us up to 30 s late, so arrival order != event order
        for ts, status in _payloads.message_statuses(n, rng, T0 + n // 50):
            timeline.append((ts + rng.randrange(0, 30), status))
        n += 1
    del timeline[events:]
    timeline.sort(key=lambda item: item[0])
    lines: list[bytes] = []
    stats = {"status_events": len(timeline), "messages": n, "redelivered_posts": 0, "inbound_posts": 0,
             "bad_lines": 0}
    i = 0
    while i < len(timeline):
        k = rng.randrange(1, 8)
        body = _payloads.envelope_json([s for _, s in timeline[i:i + k]])
        i += k
        received = RECEIVED + timedelta(microseconds=len(lines) * 1_000)
        lines.append(encode_record("whatsapp", body, received))
        u = rng.random()
        if u < 0.005:  # Meta did not see our 200 in time and delivers the same POST again
            lines.append(encode_record("whatsapp", body, received + timedelta(seconds=2)))
            stats["redelivered_posts"] += 1
        elif u < 0.007:
            sender = f"{rng.randrange(10**10, 10**11)}"
            text = rng.choice(["STOP", "thanks!", "Stop", "who is this?", "退订"])
            inbound = _payloads.inbound_body(sender, text, f"wamid.in{len(lines)}", T0 + len(lines))
            lines.append(encode_record("whatsapp", inbound, received))
            stats["inbound_posts"] += 1
        elif u < 0.00708:
            lines.append(rng.choice([b"{torn", encode_record("whatsapp", b'{"object":"page"}', received)]))
            stats["bad_lines"] += 1
    files = 0
    for start in range(0, len(lines), lines_per_file):
        chunk = lines[start:start + lines_per_file]
        name = f"spool-20261125T{files // 3600:02d}{files // 60 % 60:02d}{files % 60:02d}.000000Z-{files:06d}.jsonl"
        (spool_dir / name).write_bytes(b"".join(line + b"\n" for line in chunk))
        files += 1
    stats.update(lines=len(lines), files=files, bytes=sum(p.stat().st_size for p in spool_dir.iterdir()))
    return stats


def queue(db: store.Store, messages: int) -> None:
    """The outbox rows the receipts name (receipts naming no message of ours are kept apart, not in events)."""
    now = datetime.now(UTC)
    rows = pa.table({"message_id": [_payloads.message_id(n) for n in range(messages)]})
    rows = rows.append_column("campaign_id", pa.array(["bench"] * messages)).append_column(
        "seq", pa.array(range(messages), pa.int64()))
    for name, value in (("recipient_key", "+1"), ("channel", "whatsapp"), ("sender", "S1"), ("payload_json", "{}"),
                        ("state", "sent")):
        rows = rows.append_column(name, pa.array([value] * messages))
    rows = rows.append_column("queued_at", pa.array([now] * messages, pa.timestamp("us", tz="UTC")))
    load_arrow(db, "outbox", rows)


def _statuses(con: duckdb.DuckDBPyConnection, spool_dir: Path) -> str:
    """The spool's lines registered in `con`; returns the query of their WhatsApp statuses (the bulk SQL, with ids)."""
    tables = [t for i, p in enumerate(closed_files(spool_dir)) if (t := lines_table(i, read_spool_file(p)))]
    con.register("_lines", pa.concat_tables(tables))
    return f"""SELECT {EVENT_ID_SQL} AS event_id, * EXCLUDE (ok, file_idx, line_no, pos)
               FROM ({bulk_statuses_sql('_lines', body='body')}) WHERE ok"""


def parquet_history(spool_dir: Path, out: Path) -> dict[str, float]:
    """The spool's WhatsApp statuses parsed by the bulk SQL and written as one Parquet file, timed."""
    started = time.perf_counter()
    with duckdb.connect() as con:
        con.execute(f"COPY ({_statuses(con, spool_dir)} ORDER BY message_id) TO '{out}' "
                    "(FORMAT parquet, COMPRESSION zstd)")
        rows = con.execute(f"SELECT count(*) FROM '{out}'").fetchone()[0]
    return {"parquet_history_seconds": round(time.perf_counter() - started, 3), "parquet_history_rows": rows,
            "parquet_history_mb": round(out.stat().st_size / 1e6, 1)}


_RANK = "CASE status WHEN 'failed' THEN 4 WHEN 'read' THEN 3 WHEN 'delivered' THEN 2 ELSE 1 END"
# One row per message, as the dispatcher's reconciler, fallbacks and reports would read it.
_STATE_SQL = f"""
SELECT message_id, max({_RANK}) AS status_rank, arg_max(status, ({_RANK}, occurred_at)) AS status,
       min(occurred_at) AS first_at, max(occurred_at) AS last_at, min(provider_message_id) AS provider_message_id,
       max(error_code) AS error_code, max(category) AS category, count(*)::INTEGER AS receipts
FROM receipts WHERE message_id IS NOT NULL GROUP BY message_id ORDER BY message_id
"""
FACTS_PER_BLOB = 250_000


def _scratch_tables(db: store.Store) -> None:
    sqlite = db.dialect == "sqlite"
    key, blob, ts = ("INTEGER PRIMARY KEY", "BLOB", "TEXT") if sqlite else \
        ("bigserial PRIMARY KEY", "bytea", "timestamptz")
    db.execute(f"CREATE TABLE bench_receipt_facts (id {key}, rows INTEGER NOT NULL, data {blob} NOT NULL)")
    if not sqlite:  # zstd data: PostgreSQL would try to compress it again (and fail: ~1 s per 100 MB)
        db.execute("ALTER TABLE bench_receipt_facts ALTER COLUMN data SET STORAGE EXTERNAL")
    db.execute(f"""CREATE TABLE bench_message_state (message_id TEXT PRIMARY KEY, status_rank INTEGER NOT NULL,
        status TEXT NOT NULL, first_at {ts} NOT NULL, last_at {ts} NOT NULL, provider_message_id TEXT, error_code TEXT,
        category TEXT, receipts INTEGER NOT NULL)""")


def columnar(url: str, spool_dir: Path, stats: dict[str, int]) -> dict[str, float]:
    """The columnar design's ingest on a fresh store, step by step (parse, aggregate, facts, state), timed."""
    db = store.connect(url)
    queue(db, stats["messages"])
    _scratch_tables(db)
    sqlite = db.dialect == "sqlite"
    began = time.perf_counter()
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"CREATE TABLE receipts AS SELECT DISTINCT ON (event_id) * FROM ({_statuses(con, spool_dir)})")
        parsed = time.perf_counter()
        state = con.sql(_STATE_SQL).to_arrow_table()
        if sqlite:  # the store's text timestamps
            con.register("_state", state)
            state = con.sql("SELECT * REPLACE (strftime(first_at, '%Y-%m-%d %H:%M:%S.%f') AS first_at, "
                            "strftime(last_at, '%Y-%m-%d %H:%M:%S.%f') AS last_at) FROM _state").to_arrow_table()
        facts = con.sql("SELECT * EXCLUDE (raw_json) FROM receipts ORDER BY occurred_at").to_arrow_table()
    aggregated = time.perf_counter()
    blobs = []
    for start in range(0, facts.num_rows, FACTS_PER_BLOB):
        part, sink = facts.slice(start, FACTS_PER_BLOB), pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, part.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
            writer.write_table(part)
        blobs.append({"rows": part.num_rows, "data": sink.getvalue().to_pybytes()})
    with db.write() as conn:
        run_many(conn, "INSERT INTO bench_receipt_facts (rows, data) VALUES (:rows, :data)", blobs)
    stored = time.perf_counter()
    names = ", ".join(state.column_names)
    most, least = ("max", "min") if sqlite else ("greatest", "least")
    upsert = (f"INSERT INTO bench_message_state ({names}) SELECT {names} FROM {{stage}} WHERE {{chunk}} "
              "ON CONFLICT (message_id) DO UPDATE SET status = CASE WHEN excluded.status_rank > "
              "bench_message_state.status_rank THEN excluded.status ELSE bench_message_state.status END, "
              f"status_rank = {most}(bench_message_state.status_rank, excluded.status_rank), "
              f"first_at = {least}(bench_message_state.first_at, excluded.first_at), "
              f"last_at = {most}(bench_message_state.last_at, excluded.last_at), "
              "receipts = bench_message_state.receipts + excluded.receipts, "
              "error_code = coalesce(excluded.error_code, bench_message_state.error_code)")
    with staged(db, "bench_message_state", state, rows_per_transaction=5_000, durable=False, converted=True) as rows:
        [upserted] = rows.each_chunk(upsert)
    done = time.perf_counter()
    db.close()
    return {"columnar_seconds": round(done - began, 3), "columnar_parse_s": round(parsed - began, 3),
            "columnar_aggregate_s": round(aggregated - parsed, 3), "columnar_facts_s": round(stored - aggregated, 3),
            "columnar_state_s": round(done - stored, 3), "columnar_facts": facts.num_rows,
            "columnar_messages": upserted,
            "columnar_facts_mb": round(sum(len(b["data"]) for b in blobs) / 1e6, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--lines-per-file", type=int, default=850)
    parser.add_argument("--backend", type=backends_arg, default=["sqlite", "postgresql"])
    args = parser.parse_args()

    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, stores(args.backend, Path(tmp)) as new_store:
        spool_dir = Path(tmp) / "spool"
        spool_dir.mkdir()
        started = time.perf_counter()
        print(f"generating {args.events} status events (seed {args.seed}) in {spool_dir}", flush=True)
        stats = generate(spool_dir, args.events, args.seed, args.lines_per_file)
        print(f"  {stats} in {time.perf_counter() - started:.1f} s", flush=True)
        # The receiver fsyncs what it spools; flush the generated files too, or their write-back
        # competes with the database's writes and fsyncs during the timed ingest.
        os.sync()
        history = parquet_history(spool_dir, Path(tmp) / "history.parquet")
        print(f"  columnar history (Parquet) instead: {history}", flush=True)
        for backend in args.backend:
            ok &= measure(backend, new_store(backend, "bench"), spool_dir, stats,
                          {**history, **columnar(new_store(backend, "columnar"), spool_dir, stats)})
    return 0 if ok else 1


def measure(backend: str, url: str, spool_dir: Path, stats: dict[str, int], history: dict[str, float]) -> bool:
    db = store.connect(url)
    queue(db, stats["messages"])
    print(f"{backend}: ingesting into a fresh store", flush=True)
    started = time.perf_counter()
    first = ingest_spool(db, spool_dir)
    seconds = time.perf_counter() - started
    print(f"  {first.as_dict()} in {seconds:.2f} s", flush=True)
    in_db = db.scalar("SELECT count(*) FROM events")

    print(f"{backend}: replaying every file with the spool_files bookkeeping deleted", flush=True)
    db.execute("DELETE FROM spool_files")
    started = time.perf_counter()
    again = ingest_spool(db, spool_dir)
    reingest_seconds = time.perf_counter() - started
    print(f"  {again.as_dict()} in {reingest_seconds:.2f} s", flush=True)
    path = db.path
    db_mb = path.stat().st_size / 1e6 if path else db.scalar("SELECT pg_database_size(current_database())") / 1e6
    db.close()
    ok = in_db == stats["status_events"] and first.files == stats["files"]
    if not ok:
        print(f"MISMATCH: {in_db} events in the store, {stats['status_events']} generated", flush=True)
    print(json.dumps({
        "name": "ingest_whatsapp_status_events",
        "backend": backend,
        "events": stats["status_events"],
        "seconds": round(seconds, 3),
        "per_s": round(stats["status_events"] / seconds, 1),
        "reingest_added": again.events_added + again.inbound_added,
        "reingest_seconds": round(reingest_seconds, 3),
        "events_added": first.events_added,
        "inbound_added": first.inbound_added,
        "quarantined": first.quarantined,
        "suppressions_added": first.suppressions_added,
        "files": stats["files"],
        "lines": stats["lines"],
        "spool_mb": round(stats["bytes"] / 1e6, 1),
        "db_mb": round(db_mb, 1),
        **history,
    }), flush=True)
    return ok and again.events_added + again.inbound_added == 0


if __name__ == "__main__":
    sys.exit(main())
