"""Shared set-up for the dispatch benchmarks: a queued campaign, the receiver as a process,
a channel wrapper that records send times, and the JSON result line."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import polars as pl

from pipeline import store
from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.dispatch.outbox import enqueue_messages, register_campaign
from pipeline.spec import parse_spec

TOKEN, SECRET, VERIFY = "bench-token", "bench-app-secret", "bench-verify"
ENV = {"WHATSAPP_ACCESS_TOKEN": TOKEN, "WHATSAPP_APP_SECRET": SECRET, "WHATSAPP_VERIFY_TOKEN": VERIFY}
ROOT = Path(__file__).resolve().parents[1]

SPEC = {
    "name": "bench", "audience": "x.csv", "channel": "whatsapp", "sender": "1065",
    "template": {"name": "welcome_offer", "language": "en_US", "category": "marketing",
                 "text": "Hi {{ n }}", "body": ["{{ n }}", "{{ c }}"]},
}


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def stores(backends: list[str], work: Path) -> Iterator[Any]:
    """`new(backend, name)` gives the URL of a fresh store: a SQLite file in `work`, or a database on one local
    PostgreSQL server (with its default durability settings) started for the benchmark and removed after it."""
    with contextlib.ExitStack() as stack:
        server = None
        if "postgresql" in backends:
            from pipeline.store.local_pg import local_postgres

            server = stack.enter_context(local_postgres(durable=True))

        def new(backend: str, name: str) -> str:
            if backend == "sqlite":
                return str(work / f"{name}.sqlite")
            assert server is not None
            return server.create_database(name)

        yield new


def backends_arg(value: str) -> list[str]:
    chosen = [b.strip() for b in value.split(",") if b.strip()]
    unknown = set(chosen) - {"sqlite", "postgresql"}
    if unknown or not chosen:
        raise SystemExit(f"--backend: sqlite, postgresql or both (sqlite,postgresql), not {value!r}")
    return chosen


def queue_campaign(
    db_path: Path | str, n: int, *, campaign_id: str = "bench", senders: list[str] | None = None,
) -> None:
    """`n` queued WhatsApp template messages to distinct (fictional, UK-mobile-shaped) numbers."""
    spec = parse_spec({**SPEC, "sender": (senders or ["1065"])[0], "senders": senders or []})
    channel = WhatsAppChannel(base_url="http://unused", api_version="v23.0", phone_number_id="1065",
                              access_token=TOKEN)
    frame = pl.DataFrame({
        "row_number": range(2, n + 2), "phone_e164": [f"+447{i:09d}" for i in range(n)], "region": ["GB"] * n,
        "number_type": ["mobile"] * n, "text": ["Hi"] * n,
        "params_json": [json.dumps({"body": [f"Name{i}", f"C{i % 977}"]}) for i in range(n)],
    })
    with store.connect(db_path) as db:
        register_campaign(db, spec, campaign_id)
        enqueue_messages(db, spec, campaign_id, channel, frame, senders=senders)


def whatsapp(base_url: str, sender: str = "1065") -> WhatsAppChannel:
    return WhatsAppChannel(base_url=base_url, api_version="v23.0", phone_number_id=sender, access_token=TOKEN)


class Recording:
    """Wraps a channel and records when each send left (after the rate limiter let it go)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name, self.max_batch = inner.name, inner.max_batch
        self.stamps: list[float] = []

    def build_payload(self, message: Any) -> dict:
        return self.inner.build_payload(message)

    def open_session(self, timeout_s: float, transport: Any = None) -> Any:
        return self.inner.open_session(timeout_s, transport)

    async def send(self, session: Any, payloads: list[str]) -> Any:
        self.stamps.append(time.monotonic())
        return await self.inner.send(session, payloads)


@contextlib.contextmanager
def receiver_process(spool_dir: Path) -> Iterator[str]:
    """The webhook receiver as its own process (as in production), on a free loopback port."""
    with receiver_popen(spool_dir) as (url, _proc):
        yield url


@contextlib.contextmanager
def receiver_popen(spool_dir: Path, *, log: IO[bytes] | None = None,
                   stop_timeout_s: float = 10.0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The receiver process and its URL; stopped on exit, raising or not: SIGTERM to its process
    group (the receiver closes its open spool file), SIGKILL after `stop_timeout_s`."""
    port = free_port()
    out = log if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.receipts.receiver", "--port", str(port), "--spool-dir", str(spool_dir)],
        env={**os.environ, **ENV}, stdout=out, stderr=out, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the receiver did not start")
            time.sleep(0.1)
        yield url, proc
    finally:
        stop_group(proc, stop_timeout_s)


def stop_group(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM the process group `proc` leads (start_new_session), SIGKILL it after `timeout_s`; its exit code."""
    if proc.poll() is not None:  # reaped: its pid, the group id, may already be someone else's
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
    return proc.wait()
