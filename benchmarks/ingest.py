"""Benchmark: ingest 1,000,000 WhatsApp status receipts from spool files into a fresh DuckDB file.

Generates (seeded) a spool like the receiver writes: POSTs of 1-7 statuses in Meta's envelope,
statuses of one message spread over time and posted out of order, ~0.5 % of POSTs delivered twice
(Meta retries), a few inbound replies (some STOP), a few torn or malformed lines, ~300 files.
Then times `ingest_spool` into a fresh database, and replays every file after deleting the
`spool_files` bookkeeping: `reingest_added` must be 0. Data lives in a temporary directory.

    .venv/bin/python benchmarks/ingest.py [--events 1000000] [--seed 7]
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

from pipeline import store
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.spool import encode_record

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


def queue(con: duckdb.DuckDBPyConnection, messages: int) -> None:
    """The outbox rows the receipts name (receipts naming no message of ours are kept apart, not in events)."""
    con.register("_ids", pa.table({"message_id": [_payloads.message_id(n) for n in range(messages)]}))
    con.execute("INSERT INTO outbox (message_id, campaign_id, recipient_key, channel, sender, payload_json, state,"
                " queued_at) SELECT message_id, 'bench', '+1', 'whatsapp', 'S1', '{}', 'sent', now() FROM _ids")
    con.unregister("_ids")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--lines-per-file", type=int, default=850)
    parser.add_argument("--compact", action="store_true",
                        help="also time compact=True (DuckDB's default compression) into another database")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        spool_dir = Path(tmp) / "spool"
        spool_dir.mkdir()
        started = time.perf_counter()
        print(f"generating {args.events} status events (seed {args.seed}) in {spool_dir}", flush=True)
        stats = generate(spool_dir, args.events, args.seed, args.lines_per_file)
        print(f"  {stats} in {time.perf_counter() - started:.1f} s", flush=True)
        # The receiver fsyncs what it spools; flush the generated files too, or their write-back
        # competes with the database's writes and fsyncs during the timed ingest.
        os.sync()

        db = Path(tmp) / "bench.duckdb"
        con = store.connect(db)
        queue(con, stats["messages"])
        print("ingesting into a fresh database", flush=True)
        started = time.perf_counter()
        first = ingest_spool(con, spool_dir)
        seconds = time.perf_counter() - started
        print(f"  {first.as_dict()} in {seconds:.2f} s", flush=True)
        in_db = con.execute("SELECT count(*) FROM events").fetchall()[0][0]

        print("replaying every file with the spool_files bookkeeping deleted", flush=True)
        con.execute("DELETE FROM spool_files")
        started = time.perf_counter()
        again = ingest_spool(con, spool_dir)
        reingest_seconds = time.perf_counter() - started
        print(f"  {again.as_dict()} in {reingest_seconds:.2f} s", flush=True)
        con.close()
        db_mb = db.stat().st_size / 1e6

        compact_seconds = compact_mb = None
        if args.compact:
            db2 = Path(tmp) / "bench-compact.duckdb"
            con = store.connect(db2)
            queue(con, stats["messages"])
            print("ingesting into another fresh database with compact=True (DuckDB's default compression)",
                  flush=True)
            started = time.perf_counter()
            compact = ingest_spool(con, spool_dir, compact=True)
            compact_seconds = time.perf_counter() - started
            con.close()
            compact_mb = db2.stat().st_size / 1e6
            print(f"  {compact.as_dict()} in {compact_seconds:.2f} s; database {compact_mb:.0f} MB vs {db_mb:.0f} MB",
                  flush=True)

    ok = in_db == stats["status_events"] and first.files == stats["files"]
    if not ok:
        print(f"MISMATCH: {in_db} events in the database, {stats['status_events']} generated", flush=True)
    print(json.dumps({
        "name": "ingest_whatsapp_status_events",
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
        "compact_seconds": None if compact_seconds is None else round(compact_seconds, 3),
        "compact_db_mb": None if compact_mb is None else round(compact_mb, 1),
    }))
    return 0 if ok and again.events_added + again.inbound_added == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
