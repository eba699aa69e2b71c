"""Benchmark: cost reports on the shared store while a dispatch writes to it.

Targets (the issue): the campaign report over 1M messages <= 0.5 s; the period bill over 10M messages with their
receipts <= 1 s, while a dispatch writes to the store.

For each backend (a SQLite file, and a database on a local PostgreSQL with its default, durable settings), in a
temporary directory (never in git), it generates seeded synthetic WhatsApp campaigns sent in November 2026:
`--messages` outbox rows in campaigns of `--campaign-messages` (the first is the one reported), over 20 countries
and 3 categories, with their receipts (sent, delivered, read, failed with real codes, re-categorised and
free-window pricing), generated in DuckDB and bulk-loaded with pipeline.store.bulk.insert_frame (the outbox and
events secondary indexes are dropped for the load and built after it). A `live` campaign of `--live-messages`
queued messages is what the dispatch sends. Then it measures:

- build_seconds: the first refresh of the billing tables (fold of every receipt, every campaign counted);
- campaign_seconds: `cost_report` of the reported campaign (median of --repeat runs), and seconds: the bill of
  November across campaigns (`period_costs`, median), both while a separate process commits what a dispatch
  does to the live campaign (pipeline.dispatch.ledger.Ledger: `--claims-per-s` claims and as many outcomes, in
  group commits every 100 ms), after the two first reports (first_reports_seconds), which count the live
  campaign again: its outbox keeps changing, and other reports count it again every 30 s from then on;
- incremental_seconds: `--late-reads` read receipts arrive, then the campaign report;
- files_seconds: `write_report` (CSV, Parquet, HTML with charts, Markdown) once current;
- for the record: reading what the reports read through Arrow (the campaign's billing groups and the price data;
  ADBC on PostgreSQL, sqlite3 on SQLite), reading the rows the count of a campaign joins (its outbox rows and
  their folded receipts), and counting one campaign in the store (reports/cost_report.sql) against counting it
  in DuckDB from those Arrow reads: why billing.py counts in the store.

Usage: .venv/bin/python benchmarks/report.py [--backend sqlite|postgresql] [--messages 10000000]
       [--campaign-messages 1000000] [--seed 7] [--repeat 3] [--keep]
One JSON line per backend, the last line(s) of the output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import store  # noqa: E402
from pipeline.costs import costing as costs  # noqa: E402
from pipeline.costs.billing import GROUPS_SQL, refresh_billing  # noqa: E402
from pipeline.costs.report import write_report  # noqa: E402
from pipeline.store import Store  # noqa: E402
from pipeline.store.arrow import TIMESTAMP, column_types, duck, read_arrow, read_table, reader  # noqa: E402
from pipeline.store.bulk import insert_frame  # noqa: E402
from pipeline.store.local_pg import local_postgres  # noqa: E402
from pipeline.store.schema import metadata  # noqa: E402

COUNTRIES = ["GB", "DE", "US", "DO", "IN", "BR", "MX", "ID", "NG", "ZA", "KE", "FR", "ES", "IT", "NL", "TR", "SA",
             "AE", "EG", "PK"]
CHUNK = 250_000  # rows per insert_frame transaction
REPORTED = "bench-0"

# u(k): a seeded uniform [0, 1) per message and purpose, so the data is the same on every run.
_OUTBOX = """
SELECT id AS message_id, $campaign AS campaign_id, i AS seq,
    '+1555' || lpad(CAST(i AS VARCHAR), 9, '0') AS recipient_key, 'whatsapp' AS channel, '15550001111' AS sender,
    $countries[1 + CAST(hash(i, $seed, 1) % $n_countries AS INT)] AS country,
    CASE WHEN u2 < 0.7 THEN 'marketing' WHEN u2 < 0.9 THEN 'utility' ELSE 'authentication' END AS category,
    '{}' AS payload_json, CASE WHEN u1 < 0.01 THEN 'failed' ELSE 'sent' END AS state, 1 AS attempts,
    CASE WHEN u1 >= 0.01 THEN 'wamid.' || id END AS provider_message_id,
    CASE WHEN u1 < 0.01 THEN '131026' END AS error_code,
    TIMESTAMPTZ '2026-11-02 08:00:00+00' + to_days(CAST(i * 29 // $total AS INT)) AS queued_at,
    CASE WHEN u1 >= 0.01 THEN TIMESTAMPTZ '2026-11-02 09:00:00+00' + to_days(CAST(i * 27 // $total AS INT))
         + to_microseconds(CAST(hash(i, $seed, 8) % 36000000000 AS BIGINT)) END AS sent_at,
    TIMESTAMPTZ '2026-11-02 09:00:00+00' + to_days(CAST(i * 27 // $total AS INT)) AS updated_at
FROM (SELECT *, concat_ws('-', h[1:8], h[9:12], h[13:16], h[17:20], h[21:32]) AS id FROM (
    SELECT i, (hash(i, $seed, 2) % 1000000) / 1e6 AS u1, (hash(i, $seed, 3) % 1000000) / 1e6 AS u2,
        -- a uuid-shaped id like production's uuid5 ids
        md5(CAST(i AS VARCHAR) || ':' || $seed) AS h
    FROM range($low, $high) AS t(i)
))
"""
_EVENTS = """
SELECT md5(message_id || status) AS event_id, 'whatsapp' AS provider, provider_message_id, message_id, status,
    CASE WHEN status = 'failed' THEN code END AS error_code,
    CASE WHEN status = 'failed' THEN 'Message failed' END AS error_title,
    CASE WHEN priced THEN billed END AS category, CASE WHEN priced THEN pricing END AS pricing_type,
    sent_at + CASE status WHEN 'sent' THEN INTERVAL 1 SECOND WHEN 'delivered' THEN INTERVAL 5 SECOND
                          WHEN 'failed' THEN INTERVAL 5 SECOND ELSE INTERVAL 60 SECOND END AS occurred_at,
    sent_at + INTERVAL 70 SECOND AS received_at, '{}' AS raw_json
FROM (
    SELECT o.*, s.status,
        -- pricing rides on one of sent / delivered (docs/providers.md 1.9)
        (s.status = 'sent') = (v < 0.5) AND s.status IN ('sent', 'delivered') AS priced,
        CASE WHEN category = 'marketing' AND v < 0.02 THEN 'utility' ELSE category END AS billed,
        CASE WHEN w < 0.01 THEN 'free_entry_point'
             WHEN category = 'utility' AND w < 0.11 THEN 'free_customer_service' ELSE 'regular' END AS pricing,
        (['131049', '131026', '131050', '131047'])[1 + CAST(hash(seq, $seed, 7) % 4 AS INT)] AS code
    FROM (
        SELECT *, (hash(seq, $seed, 4) % 1000000) / 1e6 AS r, (hash(seq, $seed, 5) % 1000000) / 1e6 AS v,
            (hash(seq, $seed, 6) % 1000000) / 1e6 AS w
        FROM generated WHERE state = 'sent'
    ) AS o,
    LATERAL (SELECT unnest(CASE WHEN r < 0.05 THEN ['sent', 'failed'] WHEN r < 0.07 THEN ['sent']
                                WHEN r < 0.45 THEN ['sent', 'delivered'] ELSE ['sent', 'delivered', 'read'] END)
             AS status) AS s
    WHERE {late} (s.status = 'read' AND r < $read_cut)  -- some read receipts arrive later (the incremental step)
)
"""
_LOADED = ("outbox", "events")  # tables whose secondary indexes are dropped for the load


@contextlib.contextmanager
def without_indexes(db: Store, tables: tuple[str, ...] = _LOADED) -> Iterator[None]:
    """The tables' secondary indexes dropped for a bulk load and built again after it (also when it fails)."""
    indexes = [i for t in tables for i in metadata.tables[t].indexes]
    with db.write() as conn:
        for index in indexes:
            index.drop(conn)
    try:
        yield
    finally:
        started = time.perf_counter()
        with db.write() as conn:
            for index in indexes:
                index.create(conn)
        print(f"  indexes built in {time.perf_counter() - started:.1f} s", flush=True)


def load(db: Store, table: str, frame: pl.DataFrame) -> None:
    for offset in range(0, frame.height, CHUNK):
        with db.write() as conn:
            insert_frame(conn, table, frame.slice(offset, CHUNK))


def generate(db: Store, messages: int, per_campaign: int, live: int, seed: int, late_reads: int) -> pl.DataFrame:
    """Loads the campaigns and their receipts; returns the late read receipts (not loaded yet)."""
    late: list[pl.DataFrame] = []
    ids = [f"bench-{k}" for k in range((messages + per_campaign - 1) // per_campaign)]
    for cid in [*ids, "live"]:
        db.execute("INSERT INTO campaigns (campaign_id, name, channel, template, category, created_at, spec_json) "
                   "VALUES (:c, :c, 'whatsapp', 'bench_v1', 'marketing', :at, '{}')",
                   c=cid, at=datetime(2026, 11, 1, tzinfo=UTC))
    # The read receipts of messages with r in [0.45, read_cut) arrive later: about `late_reads` of them.
    read_cut = 0.45 + late_reads / max(messages, 1)
    gen = duckdb.connect()
    gen.execute("SET TimeZone = 'UTC'")
    with without_indexes(db):
        for k, cid in enumerate(ids):
            low, high = k * per_campaign, min(messages, (k + 1) * per_campaign)
            started = time.perf_counter()
            outbox = gen.sql(_OUTBOX, params={"campaign": cid, "countries": COUNTRIES, "n_countries": len(COUNTRIES),
                                           "seed": seed, "low": low, "high": high, "total": messages}).pl()
            gen.register("generated", outbox)
            events = gen.sql(_EVENTS.replace("{late}", "NOT"), params={"seed": seed, "read_cut": read_cut}).pl()
            late.append(gen.sql(_EVENTS.replace("{late}", ""), params={"seed": seed, "read_cut": read_cut}).pl())
            gen.unregister("generated")
            made = time.perf_counter()
            load(db, "outbox", outbox)
            load(db, "events", events)
            print(f"  {cid}: {outbox.height:,} messages, {events.height:,} receipts: generated in "
                  f"{made - started:.1f} s, loaded in {time.perf_counter() - made:.1f} s", flush=True)
        queued = gen.sql(_OUTBOX, params={"campaign": "live", "countries": COUNTRIES, "n_countries": len(COUNTRIES),
                                       "seed": seed + 1, "low": 0, "high": live, "total": live}).pl()
        never = pl.lit(None, pl.Datetime("us", "UTC"))
        load(db, "outbox", queued.with_columns(
            pl.lit("queued").alias("state"), pl.lit(0).alias("attempts"), pl.lit(None, pl.String).alias("error_code"),
            pl.lit(None, pl.String).alias("provider_message_id"), never.alias("sent_at"), never.alias("updated_at"),
            pl.lit(datetime.now(UTC)).alias("queued_at")))
    gen.close()
    if db.dialect == "postgresql":  # as autovacuum would after a bulk load, but before the timing starts
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    return pl.concat(late)


def dispatch(url: str, claims_per_s: int, stop: Any, stats: Any) -> None:
    """What a dispatch commits to the live campaign: claims and the previous batch's outcomes every 100 ms."""
    from pipeline.dispatch.ledger import Claim, Ledger, Outcome

    db = store.connect(url)
    ledger = Ledger(db, "live")
    per_commit = max(1, claims_per_s // 10)
    seq, previous, commits, claimed, waits = 0, [], 0, 0, []
    while not stop.is_set():
        started = time.perf_counter()
        seqs = list(range(seq, seq + per_commit))
        now = datetime.now(UTC)
        outcomes = [Outcome(seq=s, state="sent", provider_message_id=f"wamid.live.{s}", error_code=None,
                            error_detail=None, sent_at=now, attempts=1) for s in previous]
        took = ledger.commit([Claim(seqs=seqs)], outcomes)
        waits.append(time.perf_counter() - started)
        commits, claimed, previous, seq = commits + 1, claimed + len(took), sorted(took), seq + per_commit
        time.sleep(max(0.0, 0.1 - (time.perf_counter() - started)))
    db.close()
    stats.update(commits=commits, claimed=claimed, commit_ms_median=round(statistics.median(waits) * 1000, 1),
                 commit_ms_max=round(max(waits) * 1000, 1))


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, list[float], Any]:
    timings, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings), timings, result


def regroup_in_duckdb(db: Store, campaign_id: str) -> int:
    """The count of one campaign computed in DuckDB from Arrow reads (the alternative billing.py does not take)."""
    outbox = read_arrow(db, "SELECT message_id, campaign_id, channel, country, category, state, error_code, "
                            "error_detail, queued_at, sent_at, segments FROM outbox WHERE campaign_id = :c",
                        {"queued_at": TIMESTAMP, "sent_at": TIMESTAMP}, c=campaign_id)
    folded = read_arrow(db, "SELECT b.* FROM billing_messages AS b JOIN outbox AS o ON o.message_id = b.message_id "
                            "WHERE o.campaign_id = :c", column_types("billing_messages"), c=campaign_id)
    sql = GROUPS_SQL.read_text(encoding="utf-8").replace("{where}", "TRUE").replace(
        "{day}", "CAST(timezone('UTC', coalesce(o.sent_at, b.delivered_at, o.queued_at)) AS DATE)").replace(
        ":chatapp_channel", "'chatapp'")
    with duck({"outbox": outbox, "billing_messages": folded}) as con:
        return len(con.execute(sql).fetchall())


def report_inputs(db: Store) -> list[Any]:
    """What a campaign report reads (pipeline/costs/costing.py): its groups, the price data, the tier ladders."""
    with reader(db) as read:
        return [read.table("billing_groups", "WHERE campaign_id = :c", c=REPORTED),
                *(read.table(t) for t in (*costs.PRICE_TABLES, "price_tiers"))]


def run_backend(backend: str, url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    db = store.connect(url)
    print(f"[{backend}] {db}", flush=True)
    costs.load_prices(db)
    started = time.perf_counter()
    late = generate(db, args.messages, args.campaign_messages, args.live_messages, args.seed, args.late_reads)
    events = db.scalar("SELECT count(*) FROM events")
    generate_s = time.perf_counter() - started
    print(f"  generated {args.messages:,} messages and {events:,} receipts in {generate_s:.1f} s", flush=True)

    started = time.perf_counter()
    built = refresh_billing(db)
    build_s = time.perf_counter() - started
    print(f"  first billing refresh {build_s:.1f} s: {built}", flush=True)

    # For the record: reads through Arrow, and where a campaign is best counted.
    reads = {}
    reads["report_inputs"], _, _ = timed(lambda: report_inputs(db), args.repeat)
    reads["period_groups"], _, _ = timed(lambda: read_table(
        db, "billing_groups", "WHERE price_day >= :a AND price_day <= :b", a=date(2026, 11, 1),
        b=date(2026, 11, 30)), args.repeat)
    reads["campaign_rows"], _, _ = timed(lambda: read_arrow(
        db, "SELECT o.message_id, o.state, o.country, o.category, o.sent_at, b.status_rank, b.billed_category "
            "FROM outbox AS o LEFT JOIN billing_messages AS b ON b.message_id = o.message_id WHERE o.campaign_id = :c",
        c=REPORTED), 1)
    store_count: dict[str, list[float]] = {}
    for _ in range(1 if args.campaign_messages >= 1_000_000 else 2):
        db.execute("INSERT INTO billing_changes (campaign_id) VALUES (:c) ON CONFLICT (campaign_id) DO NOTHING",
                   c=REPORTED)
        started = time.perf_counter()
        refresh_billing(db, REPORTED)
        store_count.setdefault("store", []).append(time.perf_counter() - started)
        started = time.perf_counter()
        regroup_in_duckdb(db, REPORTED)
        store_count.setdefault("duckdb", []).append(time.perf_counter() - started)
    count_store, count_duckdb = min(store_count["store"]), min(store_count["duckdb"])
    print(f"  Arrow reads: report inputs {reads['report_inputs']:.3f} s, the period's groups "
          f"{reads['period_groups']:.3f} s, one campaign's message rows {reads['campaign_rows']:.2f} s; counting "
          f"{args.campaign_messages:,} messages in the store {count_store:.2f} s vs in DuckDB over Arrow reads "
          f"{count_duckdb:.2f} s", flush=True)

    ctx = mp.get_context("spawn")
    stop, stats = ctx.Event(), ctx.Manager().dict()
    writer = ctx.Process(target=dispatch, args=(url, args.claims_per_s, stop, stats), daemon=True)
    writer.start()
    try:
        time.sleep(1.0)  # the dispatch is writing
        # The first reports after the dispatch started count the live campaign again (its outbox changed); once
        # it keeps changing, other reports count it every RECOUNT_IN_FLIGHT_S (pipeline/costs/billing.py).
        first = [timed(lambda: costs.cost_report(db, REPORTED), 1)[0],
                 timed(lambda: costs.period_costs(db, date(2026, 11, 1), date(2026, 11, 30)), 1)[0]]
        campaign_s, campaign_runs, rows = timed(lambda: costs.cost_report(db, REPORTED), args.repeat)
        period_s, period_runs, bill = timed(lambda: costs.period_costs(db, date(2026, 11, 1), date(2026, 11, 30)),
                                            args.repeat)
    finally:
        stop.set()
        writer.join(timeout=30)
    dispatch_stats = dict(stats)
    totals, bill_totals = costs.summary_totals(rows), costs.summary_totals(bill.rows)
    print(f"  first reports while the dispatch writes (they count the live campaign again): campaign report "
          f"{first[0]:.2f} s, period bill {first[1]:.2f} s", flush=True)
    print(f"  campaign report {campaign_s:.3f} s (runs {[round(t, 3) for t in campaign_runs]}), period bill "
          f"{period_s:.3f} s (runs {[round(t, 3) for t in period_runs]}) while the dispatch committed "
          f"{dispatch_stats}", flush=True)

    with db.write() as conn:
        insert_frame(conn, "events", late)
    started = time.perf_counter()
    after = costs.cost_report(db, REPORTED)
    incremental_s = time.perf_counter() - started
    started = time.perf_counter()
    write_report(db, REPORTED, workdir / backend / "reports" / REPORTED)
    files_s = time.perf_counter() - started
    after_totals = costs.summary_totals(after)
    print(f"  +{late.height:,} receipts then report {incremental_s:.2f} s, files {files_s:.2f} s; "
          f"{rows.height} rows, sent {totals['sent']:,}, delivered {totals['delivered']:,}, read {totals['read']:,} "
          f"-> {after_totals['read']:,}, total USD {totals['total_usd']}; bill sent {bill_totals['sent']:,} "
          f"USD {bill_totals['total_usd']}", flush=True)
    db.close()
    return {
        "name": "cost_reports", "backend": backend,
        "campaign_messages": args.campaign_messages, "campaign_seconds": round(campaign_s, 3),
        "messages": args.messages, "events": int(events + late.height), "seconds": round(period_s, 3),
        "campaign_target_seconds": 0.5, "target_seconds": 1.0,
        "first_reports_seconds": [round(t, 2) for t in first],
        "dispatch": dispatch_stats, "generate_seconds": round(generate_s, 1), "build_seconds": round(build_s, 1),
        "incremental_receipts": late.height, "incremental_seconds": round(incremental_s, 2),
        "files_seconds": round(files_s, 2),
        "arrow_read_seconds": {k: round(v, 3) for k, v in reads.items()},
        "count_campaign_seconds": {"store": round(count_store, 2), "duckdb_over_arrow": round(count_duckdb, 2)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], action="append",
                        help="default: both, one after the other")
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--campaign-messages", type=int, default=1_000_000)
    parser.add_argument("--live-messages", type=int, default=100_000, help="queued messages the dispatch sends")
    parser.add_argument("--claims-per-s", type=int, default=500)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--late-reads", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    args.late_reads = min(args.late_reads, args.messages // 10)

    workdir = Path(tempfile.mkdtemp(prefix="bench-report-"))
    results = []
    try:
        for backend in args.backend or ["sqlite", "postgresql"]:
            if backend == "sqlite":
                results.append(run_backend(backend, str(workdir / "campaigns.sqlite"), args, workdir))
            else:
                with local_postgres(durable=True) as server:
                    results.append(run_backend(backend, server.create_database("bench"), args, workdir))
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    for result in results:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
