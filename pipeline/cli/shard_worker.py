"""One dispatch shard: a process that owns some senders, their rate limits and its own ledger file.

    python -m pipeline.cli.shard_worker SHARD.duckdb CAMPAIGN_ID [--spool-dir DIR] [--provider-base-url URL]

Its last output line is one JSON object with the shard's counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path

from pipeline import store
from pipeline.channels import channel_for
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.policy import Guards
from pipeline.receipts.ingest import ingest_spool
from pipeline.spec import parse_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.cli.shard_worker")
    parser.add_argument("ledger", type=Path)
    parser.add_argument("campaign_id")
    parser.add_argument("--spool-dir", type=Path)
    parser.add_argument("--provider-base-url")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with store.connect(args.ledger) as con:
        spec_json = con.execute("SELECT spec_json FROM campaigns WHERE campaign_id = ?", [args.campaign_id]).fetchall()
        spec = parse_spec(json.loads(spec_json[0][0]))
        senders = [r[0] for r in con.execute("SELECT DISTINCT sender FROM outbox ORDER BY 1").fetchall()]
        channels = {s: channel_for(spec, base_url=args.provider_base_url, sender=s) for s in senders}
        spool = args.spool_dir
        cpu = time.process_time()
        result = asyncio.run(dispatch_campaign(
            con, args.campaign_id, channels, rate=spec.rate_limit, retry=spec.retry,
            guards=Guards(send_window=spec.send_window),
            reconcile=(lambda: ingest_spool(con, spool)) if spool else None,
            timeout_s=spec.provider.timeout_s, progress_every_s=30,
        ))
        cpu = time.process_time() - cpu  # every thread of this process, while it dispatched
    print(json.dumps({"senders": senders, "sent": result.sent, "failed": result.failed, "seconds": result.seconds,
                      "cpu_seconds": round(cpu, 3), "stopped_reason": result.stopped_reason}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
