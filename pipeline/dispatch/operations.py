"""Operator actions on a campaign, from any process that reaches the store: status, the pause flag,
re-queue failed or unknown sends. The running dispatch reads the flag and writes its progress there too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from pipeline.dispatch.locks import current_holder
from pipeline.store import Store, run, utc


class UnknownCampaign(LookupError):
    """An operator command named a campaign the store does not know (a typo): nothing was changed."""


def is_known(db: Store, campaign_id: str) -> bool:
    """The store registered the campaign (its first run's queue step) or holds messages of it."""
    return bool(db.scalar("SELECT EXISTS (SELECT 1 FROM campaigns WHERE campaign_id = :c) "
                          "OR EXISTS (SELECT 1 FROM outbox WHERE campaign_id = :c)", c=campaign_id))


def request_pause(db: Store, campaign_id: str) -> None:
    """Asks a running dispatch of the campaign to stop (within a second), or its next run not to send; unsent
    messages stay queued. UnknownCampaign for an id the store does not know: its flag would hold nothing."""
    if not is_known(db, campaign_id):
        raise UnknownCampaign(campaign_id)
    db.execute("""
        INSERT INTO campaign_control (campaign_id, paused_at) VALUES (:c, :at)
        ON CONFLICT (campaign_id) DO UPDATE SET paused_at = excluded.paused_at
        """, c=campaign_id, at=datetime.now(UTC))


def clear_pause(db: Store, campaign_id: str) -> bool:
    return db.execute("UPDATE campaign_control SET paused_at = NULL WHERE campaign_id = :c AND paused_at IS NOT NULL",
                      c=campaign_id) > 0


def is_paused(db: Store, campaign_id: str) -> bool:
    return db.scalar("SELECT paused_at FROM campaign_control WHERE campaign_id = :c", c=campaign_id) is not None


def record_status(db: Store, campaign_id: str, info: dict[str, Any]) -> None:
    """The running dispatch's progress (sent, rate, ETA, why it stopped) for `campaign status` anywhere."""
    now = datetime.now(UTC)
    db.execute("""
        INSERT INTO campaign_control (campaign_id, status_json, status_at) VALUES (:c, :value, :at)
        ON CONFLICT (campaign_id) DO UPDATE SET status_json = excluded.status_json, status_at = excluded.status_at
        """, c=campaign_id, value=json.dumps({"campaign_id": campaign_id, "at": now.isoformat(), **info}), at=now)


def requeue_failed(db: Store, campaign_id: str) -> int:
    """Back to the queue: messages whose last attempt failed with a retryable code, and deferred ones
    whose deferral is over. Permanent failures stay failed."""
    now = datetime.now(UTC)
    return db.execute("""
        UPDATE outbox SET state = 'queued', not_before = NULL, updated_at = :now
        WHERE campaign_id = :c AND state IN ('failed', 'deferred') AND retryable
          AND (not_before IS NULL OR not_before <= :now)
        """, c=campaign_id, now=now)


def requeue_unknown(db: Store, campaign_id: str) -> int:
    """The operator's decision: messages whose send could not be reconciled go out again."""
    return db.execute("UPDATE outbox SET state = 'queued', updated_at = :now WHERE campaign_id = :c "
                      "AND state = 'unknown'", c=campaign_id, now=datetime.now(UTC))


def campaign_status(db: Store, campaign_id: str) -> dict[str, Any]:
    """Counts by state, the pause flag, the deferrals, why messages were withheld (not sent: the frequency cap at
    the dispatch's start, pipeline/dispatch/cap_at_send.py), and the last progress a dispatch recorded."""
    with db.read() as conn:
        states = dict(run(conn, "SELECT state, count(*) FROM outbox WHERE campaign_id = :c GROUP BY state "
                                "ORDER BY 1", c=campaign_id).all())
        deferred_until = run(conn, "SELECT min(not_before) FROM outbox WHERE campaign_id = :c AND state = 'deferred'",
                             c=campaign_id).scalar()
        withheld = dict(run(conn, "SELECT error_code, count(*) FROM outbox WHERE campaign_id = :c "
                                  "AND state = 'withheld' GROUP BY error_code ORDER BY 1", c=campaign_id).all()
                        ) if states.get("withheld") else {}
        control = run(conn, "SELECT paused_at, status_json FROM campaign_control WHERE campaign_id = :c",
                      c=campaign_id).first()
        # A control row alone is no campaign: a pause of a typo once wrote one (only progress a run recorded is).
        known = bool(states or (control and control[1]) or run(conn, "SELECT 1 FROM campaigns WHERE campaign_id = :c",
                                                                    c=campaign_id).first())
    holder = current_holder(db, campaign_id)
    paused_at, status_json = control if control else (None, None)
    deferred_until = utc(deferred_until)
    return {
        "campaign_id": campaign_id, "source": "store", "known": known, "states": states,
        "paused": paused_at is not None,
        "running": holder.describe() if holder else None,  # a live lease: a run holds the campaign now
        "deferred_until": deferred_until.isoformat() if deferred_until else None, "withheld": withheld,
        "last_run": json.loads(status_json) if status_json else None,
    }


# --- `campaign resume / retry-failed / resend-unknown`: done by the run that holds the campaign ---------------
# Clearing the flag or re-queueing before the run has the campaign's lease would change a campaign another run holds
# (its dispatch goes on sending; failed messages go back under its claims) even when this run is then refused. So the
# command hands what to do to its run (in this process: never a flow parameter, which a continuation would copy and
# repeat), and the run does it right after it takes the lease (flows/campaign.py).

AFTER_LEASE = ("resume", "retry-failed", "resend-unknown")
_asked: ContextVar[tuple[str, str] | None] = ContextVar("operator_action", default=None)


@contextmanager
def on_lease(campaign_id: str, action: str) -> Iterator[None]:
    """For the block (the command's run of the campaign, in this process): `action` is done once the lease is held."""
    if action not in AFTER_LEASE:
        raise ValueError(f"unknown operator action {action!r}")
    token = _asked.set((campaign_id, action))
    try:
        yield
    finally:
        _asked.reset(token)


def after_lease(db: Store, campaign_id: str) -> list[str]:
    """What the operator's command asked of this run, done now that it holds the campaign's lease (and at most once);
    what was done, for the run's log."""
    asked = _asked.get()
    if asked is None or asked[0] != campaign_id:
        return []
    _asked.set(None)
    done = ["the operator's pause cleared"] if clear_pause(db, campaign_id) else []
    requeue = {"retry-failed": requeue_failed, "resend-unknown": requeue_unknown}.get(asked[1])
    if requeue is not None:
        done.append(f"{requeue(db, campaign_id):,} messages of {campaign_id} queued again ({asked[1]})")
    return done
