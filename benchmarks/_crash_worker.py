"""One dispatch run of the crash benchmark, in its own process so it can be SIGKILLed anywhere.

    python benchmarks/_crash_worker.py STORE_URL SPOOL_DIR SANDBOX_URL [--resend-unknown]

STORE_URL is the shared store (a SQLite path or URL, or postgresql://...).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._dispatch_kit import whatsapp  # noqa: E402
from pipeline import store  # noqa: E402
from pipeline.dispatch import operations  # noqa: E402
from pipeline.dispatch.engine import dispatch_campaign  # noqa: E402
from pipeline.receipts.ingest import ingest_spool  # noqa: E402
from pipeline.spec import RateSpec, RetrySpec  # noqa: E402


def main() -> None:
    url, spool, base_url = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    retry = RetrySpec(max_attempts=5, base_delay_s=0.05, reconcile_grace_s=3.0)
    with store.connect(url) as db:
        print("started", flush=True)  # the harness times its kill from here
        if "--resend-unknown" in sys.argv:
            # The operator's `campaign resend-unknown`: what the spool's receipts settle first (a receipt the sandbox
            # was still retrying when the last run called its message unknown), only the rest queued again.
            operations.resend_unknown(db, "bench", ingest=lambda: ingest_spool(db, spool),
                                      grace_s=retry.reconcile_grace_s)
        result = asyncio.run(dispatch_campaign(
            db, "bench", whatsapp(base_url), rate=RateSpec(max_per_second=1000, concurrency=32), retry=retry,
            reconcile=lambda: ingest_spool(db, spool), progress_every_s=60))
        states = dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY 1"))
    print(f"run: sent {result.sent}, reconciled {result.reconciled_sent}, unknown {result.unknown}; {states}",
          flush=True)


if __name__ == "__main__":
    main()
