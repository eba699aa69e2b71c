"""Runs the WhatsApp Cloud API sandbox on loopback:
`python -m pipeline.sandbox --port 8801 --webhook-url http://127.0.0.1:8802/webhooks/whatsapp`
(secrets from WHATSAPP_ACCESS_TOKEN and WHATSAPP_APP_SECRET; any other SandboxConfig field may come
as a JSON object in WHATSAPP_SANDBOX_CONFIG, which flags override). `--port 0` picks a free port;
the first line on stdout names the URL it serves."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
from typing import Any

from pydantic import ValidationError

from pipeline.runtime import freeze_startup_objects
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import LOOPBACK, port_or_zero, serve_in_thread

TOKEN_ENV = "WHATSAPP_ACCESS_TOKEN"
SECRET_ENV = "WHATSAPP_APP_SECRET"
CONFIG_ENV = "WHATSAPP_SANDBOX_CONFIG"
READY_PREFIX = "WhatsApp sandbox on "

# flag destination -> SandboxConfig field; a flag left out keeps the env/config default.
_FIELDS = {
    "webhook_url": "webhook_url", "throughput": "throughput_per_s", "fail_rate": "fail_rate",
    "read_rate": "read_rate", "out_of_order_rate": "out_of_order_rate", "webhook_batch": "webhook_batch",
    "seed": "seed", "fault_5xx_rate": "fault_5xx_rate", "timeout_drop_rate": "timeout_drop_rate",
    "timeout_after_accept_rate": "timeout_after_accept_rate", "timeout_delay": "timeout_delay_s",
    "burst_429_at": "burst_429_at_s", "burst_429_for": "burst_429_for_s", "latency": "latency_s",
    "latency_jitter": "latency_jitter_s",
}


def _template(value: str) -> tuple[str, str]:
    name, sep, category = value.partition("=")
    if not sep or not name or not category:
        raise argparse.ArgumentTypeError(f"expected NAME=CATEGORY, got {value!r}")
    return name, category


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sandbox", description=__doc__)
    parser.add_argument("--host", default=LOOPBACK, help="loopback address to bind (default %(default)s)")
    parser.add_argument("--port", type=port_or_zero, default=8801, help="0 picks a free port")
    parser.add_argument("--webhook-url", help="where status webhooks are POSTed")
    parser.add_argument("--throughput", type=float, help="messages/s per phone-number-id (default 1000)")
    parser.add_argument("--template", type=_template, action="append", metavar="NAME=CATEGORY",
                        help="known template (repeatable); without any, every name is accepted as marketing")
    parser.add_argument("--fail-rate", type=float, help="share of accepted messages that fail (default 0.04)")
    parser.add_argument("--read-rate", type=float, help="default 0.6")
    parser.add_argument("--out-of-order-rate", type=float, help="default 0.1")
    parser.add_argument("--webhook-batch", type=int, help="statuses per webhook POST at most (default 50)")
    parser.add_argument("--seed", type=int, help="default 0")
    parser.add_argument("--latency", type=float, help="seconds before each accepted send is answered (default 0)")
    parser.add_argument("--latency-jitter", type=float,
                        help="plus a uniform random part of up to this many seconds (default 0)")
    faults = parser.add_argument_group("injected faults (all off by default)")
    faults.add_argument("--fault-5xx-rate", type=float, help="answer 503/code 2 or 500/code 131000, not sent")
    faults.add_argument("--timeout-drop-rate", type=float, help="hold without accepting until the client gives up")
    faults.add_argument("--timeout-after-accept-rate", type=float,
                        help="accept, then hold the answer until the client gives up")
    faults.add_argument("--timeout-delay", type=float, help="seconds a timeout fault holds its answer (default 15)")
    faults.add_argument("--burst-429-at", type=float, help="seconds after the first send when a 429 window opens")
    faults.add_argument("--burst-429-for", type=float, help="length of the 429 window in seconds")
    return parser.parse_args(argv)


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _config(args: argparse.Namespace, token: str, secret: str, base: dict[str, Any] | None = None) -> SandboxConfig:
    values: dict[str, Any] = dict(base or {})
    values.update({field: getattr(args, dest) for dest, field in _FIELDS.items() if getattr(args, dest) is not None})
    if args.template:
        values["templates"] = dict(args.template)
    return SandboxConfig(access_token=token, app_secret=secret, **values)


def _base_config() -> dict[str, Any]:
    raw = os.environ.get(CONFIG_ENV, "").strip()
    if not raw:
        return {}
    base = json.loads(raw)
    if not isinstance(base, dict):
        raise ValueError(f"{CONFIG_ENV} must hold a JSON object")
    if {"access_token", "app_secret"} & base.keys():
        raise ValueError(f"secrets go in {TOKEN_ENV} and {SECRET_ENV}, not in {CONFIG_ENV}")
    return base


def _use_uvloop() -> None:
    """uvloop (a dependency of uvicorn[standard]): less CPU per request than asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    token, secret = os.environ.get(TOKEN_ENV, ""), os.environ.get(SECRET_ENV, "")
    missing = [name for name, value in ((TOKEN_ENV, token), (SECRET_ENV, secret)) if not value]
    if missing:
        print(f"set {' and '.join(missing)} first", file=sys.stderr)
        return 2
    try:
        config = _config(args, token, secret, _base_config())
    except (ValidationError, ValueError, TypeError) as exc:
        print(f"invalid sandbox settings: {exc}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host):
        print(f"--host must be a loopback address, not {args.host!r}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per webhook POST
    _use_uvloop()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        # serve_in_thread binds the socket itself (port 0 works, TCP_NODELAY is set on accepted sockets).
        app = create_app(config)
        freeze_startup_objects()  # no collection pause stamps requests late (pipeline/runtime.py)
        with serve_in_thread(app, host=args.host, port=args.port) as url:
            print(f"{READY_PREFIX}{url} (webhooks -> {config.webhook_url or 'none'})", flush=True)
            while not stop.wait(0.5):
                pass
    except OSError as exc:
        print(f"cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
