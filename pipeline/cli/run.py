"""`campaign run` and `campaign demo`: a spec through the Prefect campaign flow, and the demo on loopback."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pipeline.spec import load_spec


def _prefect_env() -> None:
    # Before Prefect is imported: our own loggers show in the run's logs and the UI.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    # The temporary server's telemetry write races its own start-up on SQLite ("database is
    # locked" tracebacks on every run); no telemetry leaves this machine anyway.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)  # a wrong spec fails here, before Prefect even starts
    from pipeline import store
    from pipeline.audience.header import open_file

    store.connect(args.db).close()  # and a store that cannot be used: one line, before Prefect's start-up
    with open_file(spec.audience):  # and an audience file that is missing or unreadable, as the loader would say
        pass
    _prefect_env()
    from flows.campaign import campaign_flow
    from pipeline.cli.common import flow_database, started_by
    from pipeline.cli.quiet import operator_errors_without_traceback, stopped_by_store
    from pipeline.costs.summary import format_summary

    campaign_id = args.campaign_id or spec.name
    try:
        # An operator's error mid-run (the budget, a credential, the campaign already running, the store gone):
        # its one line (parser.main), no tracebacks. The store's password stays out of the run's parameters.
        with operator_errors_without_traceback(), flow_database(args.db) as database:
            summary = campaign_flow(
                str(args.spec), campaign_id=campaign_id, database=database, spool_dir=str(args.spool_dir),
                reports_dir=str(args.reports_dir), provider_base_url=args.provider_base_url,
                dispatch_groups=getattr(args, "dispatch_groups", 1),  # resume & co. dispatch in this process
                started_by=started_by(args),  # may not approve the run (flows/approval.py)
            )
    except store.StoreError as exc:
        print(stopped_by_store(exc, args, campaign_id), file=sys.stderr)
        return 2
    _print_result(summary, format_summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo
    from pipeline.sandbox.registry import DEMO_ENV

    for name, value in DEMO_ENV.items():
        os.environ.setdefault(name, value)
    _prefect_env()
    return run_demo(channel=args.channel, workdir=args.workdir)


def _print_result(summary: dict[str, Any], formatter: Any) -> None:
    print(formatter(summary))
    if summary.get("report_html"):
        print(f"\nreport: {summary['report_html']}\n        {summary['report_csv']}")
