"""Faults: with 10 % HTTP 5xx, 5 % timeouts (half before, half after the sandbox accepted the message)
and a burst of 429s injected by the sandbox, every message ends delivered or with a permanent error,
and none is sent twice (counted by the sandbox).

    .venv/bin/python benchmarks/faults.py [--messages 5000]
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
    emit,
    queue_campaign,
    receiver_process,
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


def run(messages: int, *, client_timeout_s: float = 1.0, grace_s: float = 3.0, rate: float = 500) -> dict[str, Any]:
    os.environ.update(ENV)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db, spool = work / "faults.duckdb", work / "spool"
        spool.mkdir()
        queue_campaign(db, messages)
        with receiver_process(spool) as receiver_url:
            config = SandboxConfig(
                access_token=TOKEN, app_secret=SECRET, throughput_per_s=5000, seed=3,
                webhook_url=f"{receiver_url}/webhooks/whatsapp", webhook_delay_s=(0.01, 0.1),
                fault_5xx_rate=0.10, timeout_drop_rate=0.025, timeout_after_accept_rate=0.025,
                timeout_delay_s=client_timeout_s * 3, burst_429_at_s=0.5, burst_429_for_s=1.0,
            )
            with sandbox_process(config) as sandbox_url, store.connect(db) as con:
                started = time.perf_counter()
                result = asyncio.run(dispatch_campaign(
                    con, "bench", whatsapp(sandbox_url), rate=RateSpec(max_per_second=rate, concurrency=32),
                    retry=RetrySpec(max_attempts=10, base_delay_s=0.05, max_delay_s=1.0, reconcile_grace_s=grace_s),
                    reconcile=lambda: ingest_spool(con, spool), timeout_s=client_timeout_s, progress_every_s=60))
                seconds = time.perf_counter() - started
                httpx.post(f"{sandbox_url}/_sandbox/drain", params={"timeout": 60}, timeout=70)
                stats = httpx.get(f"{sandbox_url}/_sandbox/stats", params={"messages": 0}, timeout=30).json()
                collect_receipts(con, spool, "bench", wait_s=30)
                delivered = con.execute(
                    """SELECT count(*) FROM outbox JOIN message_status s USING (message_id)
                       WHERE s.status IN ('delivered', 'read')""").fetchall()[0][0]
                # Permanent: refused at send with a non-retryable code, or failed on the handset.
                failed_codes = con.execute(
                    """SELECT coalesce(s.error_code, o.error_code) FROM outbox o
                       LEFT JOIN message_status s USING (message_id)
                       WHERE o.state = 'failed' OR s.status = 'failed'""").fetchall()
                states = dict(con.execute("SELECT state, count(*) FROM outbox GROUP BY 1").fetchall())
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
    args = parser.parse_args()
    figures = run(args.messages)
    print(f"faults injected: {figures['faults']}; retries {figures['retries']}, throttled {figures['throttled']}, "
          f"timeouts reconciled {figures['reconciled_after_timeout']}, resent {figures['resent_after_timeout']}",
          flush=True)
    emit(figures)


if __name__ == "__main__":
    main()
