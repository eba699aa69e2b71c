"""Faults: with 10 % HTTP 5xx, 5 % timeouts (half before, half after the sandbox accepted the message)
and a burst of 429s injected by the sandbox, every message ends delivered or with a permanent error,
and none is sent twice (counted by the sandbox). On the shared store: a SQLite file, or a database on a
local PostgreSQL started for the benchmark.

    .venv/bin/python benchmarks/faults.py [--messages 5000] [--backend sqlite,postgresql]

One JSON line per backend, the last line the last backend's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from benchmarks._dispatch_kit import (  # noqa: E402
    ENV,
    SECRET,
    TOKEN,
    backends_arg,
    emit,
    queue_campaign,
    receiver_process,
    stores,
    whatsapp,
)
from pipeline import store  # noqa: E402
from pipeline.channels.whatsapp import RETRYABLE_CODES  # noqa: E402
from pipeline.dispatch.engine import dispatch_campaign  # noqa: E402
from pipeline.receipts.collect import collect_receipts  # noqa: E402
from pipeline.receipts.ingest import ingest_spool  # noqa: E402
from pipeline.sandbox.process import sandbox_process  # noqa: E402
from pipeline.sandbox.whatsapp import SandboxConfig  # noqa: E402
from pipeline.spec import RateSpec, RetrySpec  # noqa: E402


def run(url: str, spool: Path, messages: int, *, client_timeout_s: float = 1.0, grace_s: float = 3.0,
        rate: float = 500) -> dict[str, Any]:
    """One faulty dispatch of `messages` into the store at `url`, receipts spooled to `spool`."""
    os.environ.update(ENV)
    spool.mkdir()
    queue_campaign(url, messages)
    # A sandbox and a receiver per run: the sandbox's counts are this run's alone.
    with receiver_process(spool) as receiver_url:
        config = SandboxConfig(
            access_token=TOKEN, app_secret=SECRET, throughput_per_s=5000, seed=3,
            webhook_url=f"{receiver_url}/webhooks/whatsapp", webhook_delay_s=(0.01, 0.1),
            fault_5xx_rate=0.10, timeout_drop_rate=0.025, timeout_after_accept_rate=0.025,
            timeout_delay_s=client_timeout_s * 3, burst_429_at_s=0.5, burst_429_for_s=1.0,
        )
        with sandbox_process(config) as sandbox_url, store.connect(url) as db:
            started = time.perf_counter()
            result = asyncio.run(dispatch_campaign(
                db, "bench", whatsapp(sandbox_url), rate=RateSpec(max_per_second=rate, concurrency=32),
                retry=RetrySpec(max_attempts=10, base_delay_s=0.05, max_delay_s=1.0, reconcile_grace_s=grace_s),
                reconcile=lambda: ingest_spool(db, spool), timeout_s=client_timeout_s, progress_every_s=60))
            seconds = time.perf_counter() - started
            httpx.post(f"{sandbox_url}/_sandbox/drain", params={"timeout": 60}, timeout=70)
            stats = httpx.get(f"{sandbox_url}/_sandbox/stats", params={"messages": 0}, timeout=30).json()
            collect_receipts(db, spool, "bench", wait_s=30)
            delivered = db.scalar(
                """SELECT count(*) FROM outbox o JOIN message_status s ON s.message_id = o.message_id
                   WHERE s.status IN ('delivered', 'read')""")
            # Permanent: refused at send with a non-retryable code, or failed on the handset.
            failed_codes = db.rows(
                """SELECT coalesce(s.error_code, o.error_code) FROM outbox o
                   LEFT JOIN message_status s ON s.message_id = o.message_id
                   WHERE o.state = 'failed' OR s.status = 'failed'""")
            states = dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY 1"))
    retryable = {str(c) for c in RETRYABLE_CODES} | {"timeout", "network"}
    permanent = sum(1 for (code,) in failed_codes if code not in retryable)
    return {
        "name": "faults", "messages": messages, "delivered": delivered, "permanent": permanent,
        "duplicates": stats["duplicate_callback_data"], "unaccounted": messages - delivered - permanent,
        "faults": stats.get("faults", {}), "retries": result.retries, "throttled": result.throttled,
        "reconciled_after_timeout": result.reconciled_sent, "resent_after_timeout": result.resent_after_timeout,
        "states": states, "seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--backend", type=backends_arg, default=["sqlite", "postgresql"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, stores(args.backend, Path(tmp)) as new_store:
        for backend in args.backend:
            figures = run(new_store(backend, "faults"), Path(tmp) / f"spool-{backend}", args.messages)
            figures = {"name": figures["name"], "backend": backend, **figures}
            print(f"{backend}: faults injected: {figures['faults']}; retries {figures['retries']}, "
                  f"throttled {figures['throttled']}, timeouts reconciled {figures['reconciled_after_timeout']}, "
                  f"resent {figures['resent_after_timeout']}", flush=True)
            emit(figures)


if __name__ == "__main__":
    main()
