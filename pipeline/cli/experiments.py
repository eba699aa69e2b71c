"""`campaign conversions import FILE --campaign ID`: a campaign's outcomes into the store, for the report's
per-arm conversions and uplift (pipeline/costs/conversions.py, pipeline/costs/uplift.py).

Exit 0 with the counts; 2 with one line per bad row (file, row, field) and nothing imported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline import store
from pipeline.cli.common import add_db_arg


def add_experiment_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("conversions", help="a campaign's outcomes (conversions) for its per-arm report")
    sub = p.add_subparsers(dest="conversions_command", required=True, metavar="ACTION")
    q = sub.add_parser("import", help="add conversions from a CSV file: recipient, converted_at[, value]",
                       description="A CSV with a header naming recipient (E.164 number, id or e-mail as sent), "
                                   "converted_at (ISO 8601; UTC when it has no offset) and optionally value. "
                                   "All or nothing; importing the same rows again adds nothing.")
    q.add_argument("file", type=Path)
    q.add_argument("--campaign", required=True, metavar="ID", help="the campaign the outcomes belong to")
    q.add_argument("--max-rows", type=int, help="refuse a file of more rows (default: "
                                                "$CAMPAIGN_CONVERSIONS_MAX_ROWS, else 5,000,000)")
    add_db_arg(q)
    q.set_defaults(func=cmd_conversions_import)


def cmd_conversions_import(args: argparse.Namespace) -> int:
    from pipeline.costs.conversions import ConversionsError, import_conversions

    try:
        with store.connect(args.db) as db:
            result = import_conversions(db, args.campaign, args.file, max_rows=args.max_rows)
    except ConversionsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{result.rows:,} conversions read, {result.added:,} new, {result.unknown:,} recipient(s) the campaign "
          f"never had (stored, counted in no arm)")
    return 0
