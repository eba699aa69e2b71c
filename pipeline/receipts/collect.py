"""Waiting for receipts: ingest closed spool files until every sent message has an outcome."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline.receipts.ingest import ingest_spool
from pipeline.store import Store

log = logging.getLogger("pipeline.receipts.collect")


def awaiting_outcome(db: Store, campaign_id: str) -> int:
    """Sent messages with no delivered/read/failed receipt yet."""
    return db.scalar("""
        SELECT count(*) FROM outbox o LEFT JOIN message_status s ON s.message_id = o.message_id
        WHERE o.campaign_id = :c AND o.state = 'sent'
          AND coalesce(s.status, 'none') NOT IN ('delivered', 'read', 'failed')
        """, c=campaign_id)


def collect_receipts(
    db: Store, spool_dir: Path, campaign_id: str, *, wait_s: float, poll_s: float = 0.5,
    settle_s: float = 1.5,
) -> dict[str, int]:
    """Ingests until all sent messages have an outcome and no new event came for `settle_s`
    (read receipts trail deliveries), or until `wait_s` has passed. Returns ingest totals."""
    deadline = time.monotonic() + wait_s
    totals = {"files": 0, "events": 0, "quarantined": 0, "awaiting": 0}
    last_new = time.monotonic()
    while True:
        result = ingest_spool(db, spool_dir)
        totals["files"] += result.files
        totals["events"] += result.events_added
        totals["quarantined"] += result.quarantined
        if result.events_added:
            last_new = time.monotonic()
        waiting = awaiting_outcome(db, campaign_id)
        totals["awaiting"] = waiting
        now = time.monotonic()
        if (waiting == 0 and now - last_new >= settle_s) or now >= deadline:
            if waiting:
                log.warning("%d sent messages have no final receipt yet; a later receipts run will ingest them",
                            waiting)
            return totals
        time.sleep(poll_s)
