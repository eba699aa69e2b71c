"""The live progress of a campaign dispatched in groups (flows/fleet.py), where `campaign status` reads it.

In one process, the dispatch records its progress in `campaign_control.status_json` (operations.record_status).
In groups, each group run, on whichever worker, records its own progress under its group number in that same row,
and the row's top-level figures are the sum over the groups: sent, failed and total add up, the rate is the sum
of the groups' rates (they send at the same time) and the ETA is the slowest group's. So `campaign status ID`
reads the same fields in both modes, from any machine that reaches the store.

Each group's update is a read-modify-write of the one row, done under the row's lock (PostgreSQL: SELECT ... FOR
UPDATE; SQLite: the write transaction holds the database's write lock), so two groups reporting at the same
moment never lose each other's figures. A replacement run of a group (flows/fleet.py) reports under its group's
number: its figures replace the dead run's.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pipeline.store import Store, run

SUMMED = ("sent", "failed", "deferred", "total", "throttled", "retries")


def start_groups(db: Store, campaign_id: str, groups: int) -> None:
    """Before the group runs start: the campaign's status is `groups` groups, none reported yet (a previous
    run's figures, in groups or not, are dropped)."""
    write(db, campaign_id, summed(campaign_id, {}, groups))


def record_group_status(db: Store, campaign_id: str, group: int, info: dict[str, Any]) -> None:
    """Group `group`'s progress (a dispatch's `on_status` figures), and the campaign's sum with it."""
    with db.write() as conn:
        # The row exists before it is locked: a concurrent first insert waits here rather than failing.
        run(conn, "INSERT INTO campaign_control (campaign_id) VALUES (:c) ON CONFLICT (campaign_id) DO NOTHING",
            c=campaign_id)
        lock = " FOR UPDATE" if conn.dialect.name == "postgresql" else ""
        current = run(conn, f"SELECT status_json FROM campaign_control WHERE campaign_id = :c{lock}",
                      c=campaign_id).scalar()
        status = json.loads(current) if current else {}
        parts = dict(status.get("groups") or {})  # an in-process status has no groups: started afresh
        parts[str(group)] = info
        value = summed(campaign_id, parts, int(status.get("group_count") or 0))
        run(conn, "UPDATE campaign_control SET status_json = :v, status_at = :at WHERE campaign_id = :c",
            v=json.dumps(value, default=str), at=datetime.now(UTC), c=campaign_id)


def summed(campaign_id: str, parts: dict[str, dict[str, Any]], group_count: int) -> dict[str, Any]:
    """The campaign's progress from its groups' (keyed by group number)."""
    group_count = max(group_count, len(parts))
    total = {name: sum(int(p.get(name) or 0) for p in parts.values()) for name in SUMMED}
    done = total["sent"] + total["failed"] + total["deferred"]
    running = [p for p in parts.values() if not p.get("final")]
    etas = [float(p["eta_s"]) for p in running if p.get("eta_s") is not None]
    lanes: dict[str, str] = {}
    for part in parts.values():
        lanes.update(part.get("lanes_paused") or {})
    return {
        "campaign_id": campaign_id, "at": datetime.now(UTC).isoformat(), **total,
        "per_s": round(sum(float(p.get("per_s") or 0.0) for p in running or parts.values()), 1),
        "fraction": done / total["total"] if total["total"] else (1.0 if parts else 0.0),
        # The slowest group decides when the campaign is done; unknown while a group has not reported.
        "eta_s": max(etas) if etas and len(parts) == group_count else None,
        "final": bool(parts) and len(parts) == group_count and not running,
        "stopped_reason": next((p["stopped_reason"] for p in parts.values() if p.get("stopped_reason")), None),
        "lanes_paused": lanes, "group_count": group_count, "groups": parts,
    }


def write(db: Store, campaign_id: str, value: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    db.execute("""
        INSERT INTO campaign_control (campaign_id, status_json, status_at) VALUES (:c, :v, :at)
        ON CONFLICT (campaign_id) DO UPDATE SET status_json = excluded.status_json, status_at = excluded.status_at
        """, c=campaign_id, v=json.dumps(value, default=str), at=now)
