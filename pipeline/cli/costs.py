"""`campaign report` and `campaign prices`: cost reports of a campaign or a period, and dated rate cards.

pipeline/cli/parser.py registers them with `add_cost_commands(subparsers)`; each handler takes the parsed
arguments and returns the exit code (2 for a bad campaign id, period or price file).
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path
from typing import Any

from pipeline import store
from pipeline.costs import pricing

DB_HELP = f"the store: a SQLite path or a postgresql:// URL (default: ${store.URL_ENV}, else {store.DEFAULT_PATH})"


def add_cost_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report", help="write a campaign's or a period's cost report (CSV, Parquet, HTML with charts, Markdown)",
        description="Writes reports/<campaign>/ (or reports/period-<period>/): cost_report.csv/.parquet, "
                    "failures.csv/.parquet, report.html, report.md; prints the one --format asks for.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--campaign", metavar="ID", help="campaign id")
    which.add_argument("--period", metavar="YYYY-MM[-DD]", help="a month or a day (UTC): the bill across campaigns")
    p.add_argument("--format", choices=["html", "csv", "md"], default="html",
                   help="html: print the summary and the report's path (default); csv / md: print that file")
    p.add_argument("--db", help=DB_HELP)
    p.add_argument("--reports-dir", type=Path, default=Path("reports"), help="where reports are written")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("prices", help="rate cards: import a dated card, list the cards in force")
    sub = p.add_subparsers(dest="prices_command", required=True, metavar="ACTION")
    q = sub.add_parser("import", help="add a rate card, tier ladder or service fee from a CSV file")
    q.add_argument("file", type=Path)
    q.add_argument("--channel", default="whatsapp", choices=pricing.CHANNELS)
    q.add_argument("--effective-from", type=date.fromisoformat, metavar="YYYY-MM-DD",
                   help="default: a '# effective_from:' line in the file, or YYYY-MM in its name")
    q.add_argument("--db", help=DB_HELP)
    q.set_defaults(func=cmd_prices_import)
    q = sub.add_parser("list", help="the cards, tier ladders and service fees in the store")
    q.add_argument("--db", help=DB_HELP)
    q.set_defaults(func=cmd_prices_list)


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.costs.report import write_period_report, write_report
    from pipeline.costs.summary import campaign_summary, format_summary

    try:
        with store.connect(args.db) as db:
            pricing.load_reference_data(db)  # a store from before these rules still prices its messages
            if args.campaign:
                summary = campaign_summary(db, args.campaign)
                files = write_report(db, args.campaign, args.reports_dir / args.campaign, summary=summary)
                text = format_summary(summary)
            else:
                files = write_period_report(db, args.period, args.reports_dir / f"period-{args.period}")
                text = f"Bill for {args.period}"
    except (LookupError, ValueError, store.StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "csv":
        print(files.csv.read_text(encoding="utf-8"), end="")
    elif args.format == "md":
        print(files.markdown.read_text(encoding="utf-8"), end="")
    else:
        print(text)
        print(f"\nreport: {files.html}\n        {files.csv} (+ .parquet), {files.failures_csv}, {files.markdown}")
    return 0


def cmd_prices_import(args: argparse.Namespace) -> int:
    """The file is read and checked before the store is opened; a refused file is one `error:` line naming the
    file, row and field, exit code 2, and the store's prices stay as they were."""
    try:
        card = pricing.read_import(args.file, channel=args.channel, effective_from=args.effective_from)
        with store.connect(args.db) as db:
            pricing.load_reference_data(db)  # the region map and the rules the card is checked against
            pricing.store_import(db, card)
    except (pricing.PriceDataError, OSError, store.StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"imported {card.rows.height} {card.kind} rows for {card.channel} from {card.effective_from} "
          f"({args.file.name}); messages priced on or after that day use it")
    return 0


def cmd_prices_list(args: argparse.Namespace) -> int:
    try:
        with store.connect(args.db) as db:
            pricing.load_reference_data(db)
            rows = db.rows("""
                SELECT 'card' AS kind, channel, effective_from, count(*) AS n, min(source) AS source FROM prices
                GROUP BY channel, effective_from
                UNION ALL
                SELECT 'tiers', channel, effective_from, count(*), min(source) FROM price_tiers
                GROUP BY channel, effective_from
                UNION ALL
                SELECT 'service fee', channel, effective_from, CAST(fee_points AS BIGINT), source FROM service_fees
                ORDER BY channel, kind, effective_from""")
    except store.StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'channel':<10} {'kind':<12} {'from':<11} {'rows/pts':>8}  source")
    for kind, channel, since, n, source in rows:
        print(f"{channel:<10} {kind:<12} {since!s:<11} {n:>8}  {source}")
    return 0
