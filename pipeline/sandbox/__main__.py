"""Runs the WhatsApp Cloud API sandbox on loopback:
`python -m pipeline.sandbox --port 8801 --webhook-url http://127.0.0.1:8802/webhooks/whatsapp`
(secrets from WHATSAPP_ACCESS_TOKEN and WHATSAPP_APP_SECRET)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from pydantic import ValidationError

from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import LOOPBACK, serve_forever

TOKEN_ENV = "WHATSAPP_ACCESS_TOKEN"
SECRET_ENV = "WHATSAPP_APP_SECRET"


def _template(value: str) -> tuple[str, str]:
    name, sep, category = value.partition("=")
    if not sep or not name or not category:
        raise argparse.ArgumentTypeError(f"expected NAME=CATEGORY, got {value!r}")
    return name, category


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sandbox", description=__doc__)
    parser.add_argument("--host", default=LOOPBACK, help="loopback address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8801)
    parser.add_argument("--webhook-url", default=None, help="where status webhooks are POSTed")
    parser.add_argument("--throughput", type=float, default=1000.0, help="messages/s per phone-number-id")
    parser.add_argument("--template", type=_template, action="append", metavar="NAME=CATEGORY",
                        help="known template (repeatable); without any, every name is accepted as marketing")
    parser.add_argument("--fail-rate", type=float, default=0.04)
    parser.add_argument("--read-rate", type=float, default=0.6)
    parser.add_argument("--out-of-order-rate", type=float, default=0.1)
    parser.add_argument("--webhook-batch", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _config(args: argparse.Namespace, token: str, secret: str) -> SandboxConfig:
    return SandboxConfig(
        access_token=token, app_secret=secret, webhook_url=args.webhook_url,
        throughput_per_s=args.throughput, templates=dict(args.template) if args.template else None,
        fail_rate=args.fail_rate, read_rate=args.read_rate, out_of_order_rate=args.out_of_order_rate,
        webhook_batch=args.webhook_batch, seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    token, secret = os.environ.get(TOKEN_ENV, ""), os.environ.get(SECRET_ENV, "")
    missing = [name for name, value in ((TOKEN_ENV, token), (SECRET_ENV, secret)) if not value]
    if missing:
        print(f"set {' and '.join(missing)} first", file=sys.stderr)
        return 2
    try:
        config = _config(args, token, secret)
    except ValidationError as exc:
        print(f"invalid sandbox settings: {exc}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host):
        print(f"--host must be a loopback address, not {args.host!r}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per webhook POST
    print(f"WhatsApp sandbox on http://{args.host}:{args.port} (webhooks -> {args.webhook_url or 'none'})")
    serve_forever(create_app(config), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
