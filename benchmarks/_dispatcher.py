"""A dispatcher process over a campaign already queued in the store, as the campaign flow's dispatch task runs
it (the spec stored with the campaign, a channel per sender), for benchmarks that need dispatch as a process of
its own beside others sharing the store.

    python benchmarks/_dispatcher.py STORE_URL|PATH CAMPAIGN_ID [--provider-base-url URL] [--spool-dir DIR]

Its last output line is one JSON object: senders, sent, failed, seconds, cpu_seconds, stopped_reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import store  # noqa: E402
from pipeline.channels import channel_for  # noqa: E402
from pipeline.dispatch.engine import dispatch_campaign  # noqa: E402
from pipeline.dispatch.operations import is_paused, record_status  # noqa: E402
from pipeline.dispatch.policy import Guards  # noqa: E402
from pipeline.receipts.ingest import ingest_spool  # noqa: E402
from pipeline.spec import parse_spec  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/_dispatcher.py")
    parser.add_argument("database", help="the store's URL or SQLite path")
    parser.add_argument("campaign_id")
    parser.add_argument("--provider-base-url")
    parser.add_argument("--spool-dir", type=Path, help="reconcile timed-out sends from this spool before resending")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with store.connect(args.database) as db:
        spec_json = db.scalar("SELECT spec_json FROM campaigns WHERE campaign_id = :c", c=args.campaign_id)
        if spec_json is None:
            parser.error(f"no campaign {args.campaign_id!r} in {db}")
        spec = parse_spec(json.loads(spec_json))
        senders = [r[0] for r in db.rows("SELECT DISTINCT sender FROM outbox WHERE campaign_id = :c ORDER BY 1",
                                         c=args.campaign_id)]
        channels = {s: channel_for(spec, base_url=args.provider_base_url, sender=s) for s in senders}
        spool = args.spool_dir
        cpu = time.process_time()
        result = asyncio.run(dispatch_campaign(
            db, args.campaign_id, channels, rate=spec.rate_limit, retry=spec.retry,
            guards=Guards(send_window=spec.send_window, pause_check=lambda: is_paused(db, args.campaign_id)),
            reconcile=(lambda: ingest_spool(db, spool)) if spool else None,
            timeout_s=spec.provider.timeout_s, progress_every_s=30,
            on_status=lambda info: record_status(db, args.campaign_id, info),
        ))
        cpu = time.process_time() - cpu  # every thread of this process, while it dispatched
    print(json.dumps({"senders": senders, "sent": result.sent, "failed": result.failed, "seconds": result.seconds,
                      "cpu_seconds": round(cpu, 3), "stopped_reason": result.stopped_reason}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
