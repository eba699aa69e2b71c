"""The `campaign` command: run, demo, prepare, report, and the local servers."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.spec import SpecError, load_spec


def _prefect_env() -> None:
    # Before Prefect is imported: our own loggers show in the run's logs and the UI.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    # The temporary server's telemetry write races its own start-up on SQLite ("database is
    # locked" tracebacks on every run); no telemetry leaves this machine anyway.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)  # a wrong spec fails here, before Prefect even starts
    _prefect_env()
    from flows.campaign import campaign_flow
    from pipeline.summary import format_summary

    summary = campaign_flow(
        str(args.spec), campaign_id=args.campaign_id or spec.name, db_path=str(args.db), spool_dir=str(args.spool_dir),
        reports_dir=str(args.reports_dir), provider_base_url=args.provider_base_url,
    )
    _print_result(summary, format_summary)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo
    from pipeline.sandbox.registry import DEMO_ENV

    for name, value in DEMO_ENV.items():
        os.environ.setdefault(name, value)
    _prefect_env()
    return run_demo(channel=args.channel, workdir=args.workdir)


def cmd_receipts(args: argparse.Namespace) -> int:
    from pipeline import store
    from pipeline.receipts import ingest_spool

    with store.connect(args.db) as con:
        result = ingest_spool(con, Path(args.spool_dir))
    print(f"{result.files} spool files: {result.events_added} events, {result.inbound_added} inbound, "
          f"{result.quarantined} quarantined")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from pipeline.sandbox.whatsapp import SandboxConfig, create_app
    from pipeline.servers import serve_forever

    config = SandboxConfig(
        access_token=_env("WHATSAPP_ACCESS_TOKEN"), app_secret=_env("WHATSAPP_APP_SECRET"),
        webhook_url=args.webhook_url, throughput_per_s=args.throughput,
    )
    print(f"WhatsApp Cloud API sandbox on http://{args.host}:{args.port}", flush=True)
    serve_forever(create_app(config), args.host, args.port)
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    from pipeline.receiver import create_receiver_app, secrets_from_env
    from pipeline.servers import serve_forever

    app = create_receiver_app(Path(args.spool_dir), secrets_from_env())
    print(f"webhook receiver on http://{args.host}:{args.port}/webhooks/whatsapp, spool {args.spool_dir}", flush=True)
    serve_forever(app, args.host, args.port)
    return 0


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SpecError(f"environment variable {name} is not set")
    return value


def _print_result(summary: dict[str, Any], formatter: Any) -> None:
    print(formatter(summary))
    if summary.get("report_html"):
        print(f"\nreport: {summary['report_html']}\n        {summary['report_csv']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="campaign", description="Campaign batch pipeline (Chat App message service)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_store(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--db", type=Path, default=Path("data/campaigns.duckdb"), help="DuckDB file")
        p.add_argument("--spool-dir", type=Path, default=Path("spool"), help="webhook spool folder")
        p.add_argument("--reports-dir", type=Path, default=Path("reports"), help="where reports are written")
        return p

    p = with_store(sub.add_parser("run", help="run a campaign spec end to end through the Prefect flow"))
    p.add_argument("spec", type=Path)
    p.add_argument("--campaign-id", help="defaults to the spec's name; a re-run with the same id resumes it")
    p.add_argument("--provider-base-url", help="send to this base URL instead of the spec's (e.g. a sandbox)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="start the sandbox and receiver on loopback and run the sample campaign")
    p.add_argument("--channel", default="whatsapp",
                   choices=["whatsapp", "messenger", "instagram", "viber", "sms", "email", "chatapp"])
    p.add_argument("--workdir", type=Path, default=Path("data/demo"), help="recreated on every demo run")
    p.set_defaults(func=cmd_demo)

    from pipeline.cli_prepare import add_prepare_command

    add_prepare_command(sub)

    from pipeline.cli_ops import add_ops_commands

    add_ops_commands(sub, with_store)

    p = with_store(sub.add_parser("receipts", help="ingest closed webhook spool files into DuckDB"))
    p.set_defaults(func=cmd_receipts)

    from pipeline.cli_costs import add_cost_commands

    add_cost_commands(sub)

    from pipeline.cli_upload import add_upload_command

    add_upload_command(sub)

    p = sub.add_parser("sandbox", help="serve the WhatsApp Cloud API sandbox on loopback")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8801)
    p.add_argument("--webhook-url", default="http://127.0.0.1:8802/webhooks/whatsapp")
    p.add_argument("--throughput", type=float, default=1000.0, help="messages/s per number before 130429")
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser("webhooks", help="serve the webhook receiver on loopback (spools receipts to disk)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8802)
    p.add_argument("--spool-dir", default="spool")
    p.set_defaults(func=cmd_webhooks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # bad input gets a message naming file, row and field, not a traceback
        from pipeline.audience import AudienceError
        from pipeline.locks import CampaignLocked
        from pipeline.policy import PolicyError
        from pipeline.templates import TemplateProblem

        if isinstance(exc, AudienceError | PolicyError | TemplateProblem | CampaignLocked):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
