"""Receipt collection: ingest the webhook spool into the store (an interval deployment; runs beside campaigns)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.reapproval import continue_reapproved
from pipeline import store
from pipeline.receipts.ingest import ingest_spool


@flow(name="collect-receipts")
def receipts_flow(database: str | None = None, spool_dir: str = "spool") -> dict[str, int]:
    with store.connect(database) as db:
        result = ingest_spool(db, Path(spool_dir))
    get_run_logger().info(
        "%d spool files: %d events, %d inbound, %d quarantined, %d naming no message of ours (kept apart)",
        result.files, result.events_added, result.inbound_added, result.quarantined, result.unmatched,
    )
    # A template approved again (its webhook just ingested) continues the campaigns it stopped (flows/reapproval.py).
    continued = continue_reapproved(database)
    return {"files": result.files, "events": result.events_added, "quarantined": result.quarantined,
            "unmatched": result.unmatched, "continued": len(continued)}
