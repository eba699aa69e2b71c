"""Operator commands: status, pause, approve, resume, retry-failed, resend-unknown."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pipeline import store
from pipeline.cli.common import add_db_arg, add_started_by_arg
from pipeline.dispatch import operations
from pipeline.dispatch.locks import current_holder, lease_renew_s, lease_ttl_s
from pipeline.spec import load_spec


def _no_store(value: str | None) -> str | None:
    """The error line when `--db` names a SQLite file that does not exist: commands that only look at a campaign
    (status, pause, which needs a known campaign) never create a store, folders and all, for a mistyped path."""
    path = store.sqlite_path(store.database_url(value))
    if path is not None and not path.is_file():
        return f"error: no store at {path}: give the path of an existing store (--db)"
    return None


def cmd_status(args: argparse.Namespace) -> int:
    if missing := _no_store(args.db):
        print(missing, file=sys.stderr)
        return 2
    with store.connect(args.db) as db:
        status = operations.campaign_status(db, args.campaign)
        if not status["known"]:
            print(f"error: no campaign {args.campaign} in store {store.shown(db.url)}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(status, default=str))
        return 0
    print(f"campaign {args.campaign} ({status['source']}){' — PAUSED' if status['paused'] else ''}")
    print(f"  running: {status['running']}" if status["running"] else "  not running now (no run holds it)")
    if "states" in status:
        for state, n in status["states"].items():
            print(f"  {state:<10}{n:>10,}")
        for reason, n in (status.get("withheld") or {}).items():  # not sent, and never will be
            print(f"    withheld, {reason}: {n:,} (not sent)")
        if status.get("deferred_until"):
            print(f"  deferred messages may be retried from {status['deferred_until']}")
        if status.get("held_until"):
            print(f"  queued messages held back until {status['held_until']} (a send-at time or a provider's quota)")
    info = status.get("last_run") or {}
    if info:
        eta = f", ETA {info['eta_s']:.0f} s" if info.get("eta_s") else ""
        print(f"  last dispatch: {info.get('sent', 0):,} sent, {info.get('failed', 0):,} failed of "
              f"{info.get('total', 0):,} at {info.get('per_s', 0)}/s{eta} ({info.get('at', '')})")
        if info.get("stopped_reason"):
            print(f"  stopped: {info['stopped_reason']}")
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    if missing := _no_store(args.db):
        print(missing, file=sys.stderr)
        return 2
    with store.connect(args.db) as db:
        try:
            operations.request_pause(db, args.campaign)
        except operations.UnknownCampaign:
            print(f"error: no campaign {args.campaign} in store {store.shown(db.url)}: nothing paused",
                  file=sys.stderr)
            return 2
        running = current_holder(db, args.campaign)
    if running:
        print(f"pause requested for {args.campaign}: its running dispatch stops within a second and everything "
              f"unsent stays queued; `campaign resume SPEC` continues")
    else:
        print(f"pause set for {args.campaign}, which is not running now: its next run sends nothing until "
              f"`campaign resume SPEC`")
    return 0


def _run_again(args: argparse.Namespace, action: str) -> int:
    from pipeline.cli.run import cmd_run  # the same path as `campaign run`

    spec = load_spec(args.spec)
    lease_ttl_s(), lease_renew_s()  # a bad lease setting: its one line now, not from inside the flow run
    # Done by the run once it holds the campaign's lease, never here: a refused run must change nothing.
    with operations.on_lease(args.campaign_id or spec.name, action):
        return cmd_run(args)


def cmd_resume(args: argparse.Namespace) -> int:
    return _run_again(args, "resume")


def cmd_retry_failed(args: argparse.Namespace) -> int:
    return _run_again(args, "retry-failed")


def cmd_resend_unknown(args: argparse.Namespace) -> int:
    return _run_again(args, "resend-unknown")


def cmd_approve(args: argparse.Namespace) -> int:
    from flows.approval import approve_from_cli  # Prefect's resume_flow_run: flows/, never pipeline/

    try:
        print(approve_from_cli(args.campaign, args.db, name=args.name, comment=args.comment, reject=args.reject))
    except (LookupError, TimeoutError) as exc:
        print(f"error: {exc}")
        return 2
    return 0


def add_ops_commands(sub: Any, with_store: Any) -> None:
    p = sub.add_parser("status", help="a campaign's messages by state, rate and ETA")
    p.add_argument("campaign", help="campaign id")
    p.add_argument("--json", action="store_true")
    add_db_arg(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("pause", help="ask a running campaign to stop sending (unsent stays queued)")
    p.add_argument("campaign", help="campaign id")
    add_db_arg(p)
    p.set_defaults(func=cmd_pause)

    p = sub.add_parser("approve", help="approve (or --reject) a campaign waiting for approval, as the Prefect UI form")
    p.add_argument("campaign", help="campaign id")
    p.add_argument("--name", required=True, help="the approver's name")
    p.add_argument("--comment", default="")
    p.add_argument("--reject", action="store_true", help="reject: nothing is sent")
    add_db_arg(p)
    p.set_defaults(func=cmd_approve)

    for name, func, text in (
        ("resume", cmd_resume, "continue a paused or stopped campaign"),
        ("retry-failed", cmd_retry_failed,
         "re-send only messages that failed with a retryable or deferred code (once the deferral is over)"),
        ("resend-unknown", cmd_resend_unknown,
         "re-send messages in flight at a crash that no receipt settles, once the spool's receipts are ingested "
         "(your decision: may duplicate)"),
    ):
        p = with_store(sub.add_parser(name, help=text))
        p.add_argument("spec", type=Path)
        p.add_argument("--campaign-id", help="defaults to the spec's name")
        p.add_argument("--provider-base-url", help="send to this base URL instead of the spec's")
        add_started_by_arg(p)
        p.set_defaults(func=func)
