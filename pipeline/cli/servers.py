"""`campaign sandbox` and `campaign webhooks`: the local servers, on loopback."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline.spec import SpecError


def cmd_sandbox(args: argparse.Namespace) -> int:
    from pipeline.sandbox.whatsapp import SandboxConfig, create_app
    from pipeline.servers import ServerLimits, check_loopback, serve_forever

    check_loopback(args.host)  # refused before the server is announced: one `error:` line, not a traceback
    limits = ServerLimits.from_env()
    config = SandboxConfig(
        access_token=_env("WHATSAPP_ACCESS_TOKEN"), app_secret=_env("WHATSAPP_APP_SECRET"),
        webhook_url=args.webhook_url, throughput_per_s=args.throughput,
    )
    print(f"WhatsApp Cloud API sandbox on http://{args.host}:{args.port}", flush=True)
    serve_forever(create_app(config), args.host, args.port, limits)
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
    from pipeline.servers import ServerLimits, check_loopback, serve_forever

    check_loopback(args.host)  # refused before the server is announced: one `error:` line, not a traceback
    limits = ServerLimits.from_env()
    app = create_receiver_app(Path(args.spool_dir), secrets_from_env())
    from pipeline.upload.routes import install_from_env

    if install_from_env(app) is not None:
        print(f"upload page on http://{args.host}:{args.port}/upload (UPLOAD_TOKEN set)", flush=True)
    # Every provider's route is served; those whose secret is not set refuse every request.
    print(f"webhook receiver on http://{args.host}:{args.port}/webhooks/<provider> "
          f"(configured: {', '.join(app.state.providers)}), spool {args.spool_dir}", flush=True)
    serve_forever(app, args.host, args.port, limits)
    return 0


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SpecError(f"environment variable {name} is not set")
    return value
