"""One dispatcher of benchmarks/fleet.py's takeover rounds: dispatches the given senders of a campaign from the shared
store under their sender leases (what a dispatch-senders flow run does, without Prefect around it), reconciling from
the webhook spool. Prints `started` once its store is open, and `done <json>` at the end (with when its first send
left, on CLOCK_MONOTONIC).

    python benchmarks/_fleet_dispatcher.py DB_URL CAMPAIGN SENDER[,SENDER] SANDBOX_URL SPOOL RATE TTL_S RENEW_S
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._dispatch_kit import Recording, whatsapp  # noqa: E402
from pipeline import store  # noqa: E402
from pipeline.dispatch.engine import dispatch_campaign  # noqa: E402
from pipeline.dispatch.locks import SenderLeases  # noqa: E402
from pipeline.receipts.ingest import ingest_spool  # noqa: E402
from pipeline.spec import RateSpec, RetrySpec  # noqa: E402


def main() -> None:
    url, campaign, senders, base_url, spool, rate, ttl, renew = sys.argv[1:9]
    group = senders.split(",")
    channels = {s: Recording(whatsapp(base_url, s)) for s in group}  # when each send left (CLOCK_MONOTONIC)
    with store.connect(url) as db:
        print("started", flush=True)  # imports done, store open: next, it asks for the senders' leases
        result = asyncio.run(dispatch_campaign(
            db, campaign, channels, senders=group,
            rate=RateSpec(max_per_second=float(rate), concurrency=24),
            retry=RetrySpec(max_attempts=3, reconcile_grace_s=3),
            reconcile=lambda: ingest_spool(db, spool), progress_every_s=30,
            leases=SenderLeases(db, campaign, ttl_s=float(ttl), renew_s=float(renew)),
        ))
    stamps = [t for c in channels.values() for t in c.stamps]
    print("done " + json.dumps({"sent": result.sent, "unknown": result.unknown,
                                "reconciled_sent": result.reconciled_sent,
                                "first_send": min(stamps) if stamps else None}), flush=True)


if __name__ == "__main__":
    main()
