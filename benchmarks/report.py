"""Benchmark: the campaign cost report over 10M messages with their receipts (target: <= 1 s).

Generates one seeded synthetic WhatsApp campaign in a temporary directory (never in git) with the schema of
pipeline/store.py: outbox rows over 20 countries and 3 categories, and their receipts (sent, delivered, read,
failed with real codes, re-categorised and free-window pricing). The outbox and events tables keep their
columns and types but not their primary-key indexes: those only guard inserts (no report query uses them)
and building them for ~34M generated rows takes ~10x longer than writing the rows. Then it measures:

- build_seconds: the first refresh of the billing tables (fold of every receipt + the campaign's groups);
- seconds: `cost_report` once the tables are current (median of --repeat runs): the figure to hold <= 1 s;
- incremental_seconds: 1M new receipts arrive (the read receipts a receipts run would ingest), then the report;
- files_seconds: `write_report` (CSV, Parquet, HTML with charts, Markdown) once current;
- baseline_seconds: the same counts straight from outbox + the `message_status` view (the report before the
  billing tables), once.

Usage: .venv/bin/python benchmarks/report.py [--messages 10000000] [--seed 7] [--repeat 3] [--keep]
The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import store
from pipeline.costs import costing as costs  # noqa: E402
from pipeline.costs.billing import refresh_billing  # noqa: E402
from pipeline.costs.report import write_report  # noqa: E402

COUNTRIES = ["GB", "DE", "US", "DO", "IN", "BR", "MX", "ID", "NG", "ZA", "KE", "FR", "ES", "IT", "NL", "TR", "SA",
             "AE", "EG", "PK"]

# u(k): a seeded uniform [0, 1) per message and purpose, so the data is the same on every run.
_OUTBOX = """
INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, country, category, payload_json,
                    state, attempts, provider_message_id, error_code, queued_at, sent_at, updated_at)
SELECT id, 'bench', i, '+1555' || lpad(i::VARCHAR, 9, '0'), 'whatsapp', '15550001111',
    $countries[1 + (hash(i, $seed, 1) % $n_countries)::INT],
    CASE WHEN u2 < 0.7 THEN 'marketing' WHEN u2 < 0.9 THEN 'utility' ELSE 'authentication' END,
    '{}', CASE WHEN u1 < 0.01 THEN 'failed' ELSE 'sent' END, 1,
    CASE WHEN u1 >= 0.01 THEN 'wamid.' || id END, CASE WHEN u1 < 0.01 THEN '131026' END,
    TIMESTAMPTZ '2026-11-02 08:00:00+00',
    CASE WHEN u1 >= 0.01 THEN TIMESTAMPTZ '2026-11-02 09:00:00+00' + to_microseconds((i * 3000)::BIGINT) END,
    TIMESTAMPTZ '2026-11-02 09:00:00+00' + to_microseconds((i * 3000)::BIGINT)
FROM (SELECT *, concat_ws('-', h[1:8], h[9:12], h[13:16], h[17:20], h[21:32]) AS id FROM (
    SELECT i, (hash(i, $seed, 2) % 1000000) / 1e6 AS u1, (hash(i, $seed, 3) % 1000000) / 1e6 AS u2,
        -- a uuid-shaped id like production's uuid5 ids
        md5(i::VARCHAR || ':' || $seed) AS h
    FROM range($messages) AS t(i)
))
"""
_EVENTS = """
INSERT INTO events (event_id, provider, provider_message_id, message_id, status, error_code, error_title, category,
                    pricing_type, occurred_at, received_at, raw_json)
SELECT md5(message_id || status), 'whatsapp', provider_message_id, message_id, status,
    CASE WHEN status = 'failed' THEN code END, CASE WHEN status = 'failed' THEN 'Message failed' END,
    CASE WHEN priced THEN billed END, CASE WHEN priced THEN pricing END,
    sent_at + CASE status WHEN 'sent' THEN INTERVAL 1 SECOND WHEN 'delivered' THEN INTERVAL 5 SECOND
                          WHEN 'failed' THEN INTERVAL 5 SECOND ELSE INTERVAL 60 SECOND END,
    sent_at + INTERVAL 70 SECOND, '{}'
FROM (
    SELECT o.*, s.status,
        -- pricing rides on one of sent / delivered (docs/providers.md 1.9)
        (s.status = 'sent') = (v < 0.5) AND s.status IN ('sent', 'delivered') AS priced,
        CASE WHEN category = 'marketing' AND v < 0.02 THEN 'utility' ELSE category END AS billed,
        CASE WHEN w < 0.01 THEN 'free_entry_point'
             WHEN category = 'utility' AND w < 0.11 THEN 'free_customer_service' ELSE 'regular' END AS pricing,
        (['131049', '131026', '131050', '131047'])[1 + (hash(seq, $seed, 7) % 4)::INT] AS code
    FROM (
        SELECT *, (hash(seq, $seed, 4) % 1000000) / 1e6 AS r, (hash(seq, $seed, 5) % 1000000) / 1e6 AS v,
            (hash(seq, $seed, 6) % 1000000) / 1e6 AS w
        FROM outbox WHERE campaign_id = 'bench' AND state = 'sent'
    ) AS o,
    LATERAL (SELECT unnest(CASE WHEN r < 0.05 THEN ['sent', 'failed'] WHEN r < 0.07 THEN ['sent']
                                WHEN r < 0.45 THEN ['sent', 'delivered'] ELSE ['sent', 'delivered', 'read'] END)
             AS status) AS s
    WHERE NOT (s.status = 'read' AND r < $read_cut)  -- some read receipts arrive later (the incremental step)
)
"""
# What the report did before the billing tables: every event grouped per message, joined on string ids.
_BASELINE = """
SELECT o.channel, o.country, coalesce(s.billed_category, o.category) AS category, s.pricing_type,
    count(*) FILTER (WHERE o.state = 'sent') AS sent, count(*) FILTER (WHERE s.status IN ('delivered', 'read')),
    count(*) FILTER (WHERE s.status = 'read'), count(*) FILTER (WHERE o.state = 'failed' OR s.status = 'failed')
FROM outbox AS o LEFT JOIN message_status AS s USING (message_id)
WHERE o.campaign_id = 'bench'
GROUP BY ALL
"""
_LATE_READS = _EVENTS.replace("WHERE NOT (s.status = 'read'", "WHERE (s.status = 'read'")


def drop_key_indexes(con) -> None:
    for table in ("outbox", "events"):
        con.execute(f"CREATE TABLE _{table} AS SELECT * FROM {table} LIMIT 0")
        con.execute(f"DROP TABLE {table}")
        con.execute(f"ALTER TABLE _{table} RENAME TO {table}")


def generate(con, messages: int, seed: int, late_reads: int) -> float:
    params = {"countries": COUNTRIES, "n_countries": len(COUNTRIES), "seed": seed, "messages": messages}
    con.execute("INSERT INTO campaigns VALUES ('bench', 'Benchmark', 'whatsapp', 'bench_v1', 'marketing', "
                "TIMESTAMPTZ '2026-11-02 08:00:00+00', '{}')")
    started = time.perf_counter()
    con.execute(_OUTBOX, params)
    print(f"  outbox: {time.perf_counter() - started:.1f} s", flush=True)
    # The read receipts of messages with r in [0.45, read_cut) arrive later: about `late_reads` of them.
    read_cut = 0.45 + late_reads / max(messages, 1)
    started = time.perf_counter()
    con.execute(_EVENTS, {"seed": seed, "read_cut": read_cut})
    print(f"  events: {time.perf_counter() - started:.1f} s", flush=True)
    return read_cut


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--late-reads", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        con = store.connect(workdir / "campaigns.duckdb")
        costs.load_prices(con)
        drop_key_indexes(con)
        started = time.perf_counter()
        read_cut = generate(con, args.messages, args.seed, args.late_reads)
        con.execute("CHECKPOINT")
        [(events,)] = con.execute("SELECT count(*) FROM events").fetchall()
        print(f"generated {args.messages:,} messages and {events:,} receipts in "
              f"{time.perf_counter() - started:.1f} s ({workdir})", flush=True)

        started = time.perf_counter()
        refresh_billing(con, "bench")
        build_s = time.perf_counter() - started

        timings = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            rows = costs.cost_report(con, "bench")
            timings.append(time.perf_counter() - started)
        seconds = statistics.median(timings)
        totals = costs.summary_totals(rows)
        started = time.perf_counter()
        con.execute(_BASELINE).fetchall()
        baseline_s = time.perf_counter() - started

        con.execute(_LATE_READS, {"seed": args.seed, "read_cut": read_cut})
        [(late,)] = con.execute("SELECT count(*) FROM events").fetchall()
        started = time.perf_counter()
        after = costs.cost_report(con, "bench")
        incremental_s = time.perf_counter() - started

        started = time.perf_counter()
        write_report(con, "bench", workdir / "reports" / "bench")
        files_s = time.perf_counter() - started
        after_totals = costs.summary_totals(after)
        print(f"report {seconds:.3f} s (runs {[round(t, 3) for t in timings]}), first build {build_s:.1f} s, "
              f"+{late - events:,} receipts then report {incremental_s:.2f} s, files {files_s:.2f} s, "
              f"view-based baseline {baseline_s:.2f} s; "
              f"{rows.height} rows, sent {totals['sent']:,}, delivered {totals['delivered']:,}, "
              f"read {totals['read']:,} -> {after_totals['read']:,}, total USD {totals['total_usd']}", flush=True)
        con.close()
        print(json.dumps({
            "name": "campaign_cost_report",
            "messages": args.messages,
            "events": int(late),
            "rows": rows.height,
            "seconds": round(seconds, 3),
            "per_s": round(args.messages / seconds) if seconds else None,
            "build_seconds": round(build_s, 2),
            "incremental_receipts": int(late - events),
            "incremental_seconds": round(incremental_s, 2),
            "files_seconds": round(files_s, 2),
            "baseline_seconds": round(baseline_s, 2),
            "baseline_per_s": round(args.messages / baseline_s) if baseline_s else None,
            "ratio": round(baseline_s / seconds, 1) if seconds else None,
            "target_seconds": 1.0,
        }))
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
