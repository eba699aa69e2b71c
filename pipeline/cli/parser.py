"""The `campaign` command's parser: every command group registers its subcommands here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli.common import add_db_arg, add_started_by_arg, positive_number
from pipeline.cli.run import cmd_demo, cmd_run
from pipeline.cli.servers import cmd_sandbox, cmd_webhooks
from pipeline.servers import port_number
from pipeline.spec import SpecError


def cmd_receipts(args: argparse.Namespace) -> int:
    from pipeline import store
    from pipeline.receipts.ingest import ingest_spool

    with store.connect(args.db) as db:
        result = ingest_spool(db, Path(args.spool_dir))
    print(f"{result.files} spool files: {result.events_added} events, {result.inbound_added} inbound, "
          f"{result.quarantined} quarantined, {result.unmatched} naming no message of ours (kept apart), "
          f"{result.promoted} of those matched since")
    from pipeline.cli.templates import continue_reapproved

    return continue_reapproved(args.db)  # campaigns a template stopped, approved again, continue


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="campaign", description="Campaign batch pipeline (Chat App message service)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_store(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_db_arg(p)
        p.add_argument("--spool-dir", type=Path, default=Path("spool"), help="webhook spool folder")
        p.add_argument("--reports-dir", type=Path, default=Path("reports"), help="where reports are written")
        return p

    p = with_store(sub.add_parser("run", help="run a campaign spec end to end through the Prefect flow"))
    p.add_argument("spec", type=Path)
    p.add_argument("--campaign-id", help="defaults to the spec's name; a re-run with the same id resumes it")
    p.add_argument("--provider-base-url", help="send to this base URL instead of the spec's (e.g. a sandbox)")
    add_started_by_arg(p)
    p.add_argument("--dispatch-groups", type=int, default=1, metavar="N",
                   help="on a PostgreSQL store: split the senders into N groups, each dispatched by a run of the "
                        "dispatch-senders deployment on the work pool's workers (default 1: in this process)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="start the sandbox and receiver on loopback and run the sample campaign")
    p.add_argument("--channel", default="whatsapp",
                   choices=["whatsapp", "messenger", "instagram", "viber", "sms", "email", "chatapp"])
    p.add_argument("--workdir", type=Path, default=Path("data/demo"), help="recreated on every demo run")
    p.set_defaults(func=cmd_demo)

    from pipeline.cli.prepare import add_prepare_command

    add_prepare_command(sub)

    from pipeline.cli.ops import add_ops_commands

    add_ops_commands(sub, with_store)

    p = with_store(sub.add_parser("receipts", help="ingest closed webhook spool files into the store"))
    p.set_defaults(func=cmd_receipts)

    from pipeline.cli.test_send import add_test_send_command

    add_test_send_command(sub)

    from pipeline.cli.costs import add_cost_commands

    add_cost_commands(sub)

    from pipeline.cli.experiments import add_experiment_commands

    add_experiment_commands(sub)

    from pipeline.cli.upload import add_upload_command

    add_upload_command(sub)

    from pipeline.cli.templates import add_template_commands

    add_template_commands(sub)

    from pipeline.cli.db import add_db_commands

    add_db_commands(sub)

    p = sub.add_parser("sandbox", help="serve the WhatsApp Cloud API sandbox on loopback")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=8801)
    p.add_argument("--webhook-url", default="http://127.0.0.1:8802/webhooks/whatsapp")
    p.add_argument("--throughput", type=positive_number, default=1000.0, help="messages/s per number before 130429")
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser("webhooks", help="serve the webhook receiver on loopback (spools receipts to disk)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=8802)
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
        from pipeline.cli.quiet import is_operator_error

        if is_operator_error(exc):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
