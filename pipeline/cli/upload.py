"""`campaign upload-server`: the webhook receiver with the upload page (pipeline/upload/routes.py) on loopback."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pipeline.cli.common import DB_HELP, add_db_arg
from pipeline.servers import LOOPBACK, ServerLimits, check_loopback, port_number
from pipeline.spec import SpecError


def cmd_upload_server(args: argparse.Namespace) -> int:
    from pipeline.upload.routes import TOKEN_ENV

    check_loopback(args.host)  # before anything is announced or bound, and before Prefect: one `error:` line
    limits = ServerLimits.from_env()
    if not os.environ.get(TOKEN_ENV):
        raise SpecError(f"set {TOKEN_ENV} in the environment (e.g. `export {TOKEN_ENV}=$(openssl rand -hex 16)`)")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.upload_server import serve_upload_page  # Prefect only from here on

    try:
        return serve_upload_page(args, limits)
    except ValueError as exc:  # a token too short, a missing receiver secret: one line, not a traceback
        raise SpecError(str(exc)) from None


def add_upload_command(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "upload-server",
        help="serve the webhook receiver with the upload page on loopback (UPLOAD_TOKEN required; UPLOAD_MAX_MB)",
    )
    p.add_argument("--host", default=LOOPBACK)
    p.add_argument("--port", type=port_number, default=8802,
                   help="the receiver's port: it replaces `campaign webhooks`")
    p.add_argument("--spool-dir", default="spool", help="webhook spool folder")
    p.add_argument("--specs-dir", type=Path, default=Path("campaigns"), help="the specs the page offers")
    p.add_argument("--audiences-dir", type=Path, default=Path("audiences"), help="started uploads go to its inbox/")
    p.add_argument("--staging-dir", type=Path, default=Path("data/uploads"), help="uploads being checked")
    p.add_argument("--watcher-deployment", help="the drop-folder watcher to start at once when PREFECT_API_URL is "
                                                "set (default: prefect.yaml's inbox-watcher/audience-inbox)")
    add_db_arg(p, help_text=f"the store the page's test sends are kept in; {DB_HELP}")
    p.set_defaults(func=cmd_upload_server)
    return p
