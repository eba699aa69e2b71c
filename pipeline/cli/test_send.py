"""`campaign test-send SPEC --to seeds.csv`: some audience rows rendered as the campaign renders them, sent over
the spec's channel to internal seeds, kept apart from the campaign (pipeline/dispatch/test_sends.py)."""

from __future__ import annotations

import argparse
import getpass
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipeline.cli.common import add_db_arg


def _row_numbers(value: str) -> list[int]:
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: row numbers separated by commas (2,5,9)") from None
    if not numbers or any(n < 2 for n in numbers):
        raise argparse.ArgumentTypeError(f"{value!r}: audience rows are numbered from 2 (row 1 is the header)")
    return list(dict.fromkeys(numbers))


def cmd_test_send(args: argparse.Namespace) -> int:
    from pipeline import store
    from pipeline.channels import channel_for
    from pipeline.dispatch.preparation import prepare_campaign
    from pipeline.dispatch.seeds import SeedError, SendLimits, read_seeds_file
    from pipeline.dispatch.test_sends import format_results, pick_variant_rows, send_tests
    from pipeline.render.personalise import stand_in
    from pipeline.spec import load_spec

    spec = load_spec(args.spec)
    campaign_id = args.campaign_id or spec.name
    try:
        limits = SendLimits.from_env()
        seeds = read_seeds_file(args.to, spec.channel, limits)
        database = store.database_url(args.db)
        with tempfile.TemporaryDirectory(prefix="test-send-") as out:
            # Generated values render as their fallback here, as the campaign's own preparation does before
            # personalisation writes them.
            prepared = prepare_campaign(stand_in(spec), campaign_id, database, Path(out))
            rows = pick_variant_rows(spec, campaign_id, prepared, limits, variant=args.variant, rows=args.rows,
                                     row_numbers=args.row_numbers, source=str(spec.audience))
        with store.connect(database) as db:
            channel = channel_for(spec, base_url=args.provider_base_url)
            results = send_tests(db, spec, campaign_id, channel, rows, seeds, limits,
                                 started_by=args.by or getpass.getuser())
    except SeedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_results(results))
    return 0 if all(r.status == "sent" for r in results) else 1


def add_test_send_command(sub: Any) -> None:
    p = sub.add_parser("test-send", help="send some rows' rendered messages to internal seeds, kept apart")
    p.add_argument("spec", type=Path)
    p.add_argument("--to", type=Path, required=True, metavar="SEEDS.csv",
                   help="internal numbers or addresses: a CSV with a `to` (or phone/email/address) column")
    rows = p.add_mutually_exclusive_group()
    rows.add_argument("--rows", type=int, default=None, metavar="N", help="the first N sendable rows (default 3)")
    rows.add_argument("--row-numbers", type=_row_numbers, default=None, metavar="2,5,9",
                      help="these audience rows (the header is row 1)")
    p.add_argument("--variant", metavar="NAME", help="an experiment variant: its template's text (default: each "
                   "variant's first rows)")
    p.add_argument("--campaign-id", help="the campaign the test belongs to (default: the spec's name)")
    p.add_argument("--provider-base-url", help="send to this base URL instead of the spec's (e.g. a sandbox)")
    p.add_argument("--by", help="who sends the test (default: the login name)")
    add_db_arg(p)
    p.set_defaults(func=cmd_test_send)
