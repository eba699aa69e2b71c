"""Operator actions on a campaign, from any process that reaches the store: status, the pause flag,
re-queue failed or unknown sends. The running dispatch reads the flag and writes its progress there too."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.dispatch.ledger import Ledger
from pipeline.dispatch.locks import current_holder
from pipeline.store import Store, run, utc

log = logging.getLogger(__name__)


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
    """The operator's decision: messages whose send could not be reconciled go out again (as they are: the
    command's run settles what receipts can first, `resend_unknown`)."""
    return db.execute("UPDATE outbox SET state = 'queued', updated_at = :now WHERE campaign_id = :c "
                      "AND state = 'unknown'", c=campaign_id, now=datetime.now(UTC))


def resend_unknown(db: Store, campaign_id: str, *, ingest: Callable[[], object] | None = None, grace_s: float = 0.0,
                   poll_s: float = 1.0) -> tuple[int, int]:
    """`campaign resend-unknown`: receipts first, then the operator's decision; (settled by a receipt, queued again).

    A receipt may reach the spool after the dispatch called its message `unknown` (the provider retries its webhooks,
    and the store takes them only when something ingests the spool): re-queued before that, the message went out
    twice. So the spool's closed files are ingested (`ingest`, the dispatch's own call) and each `unknown` message a
    receipt names is settled `sent` by the dispatch's rule (Ledger.reconcile_in_flight). Messages that went `unknown`
    less than `grace_s` (the spec's retry.reconcile_grace_s) ago are waited for until the grace has passed since,
    ingesting every `poll_s`: the receiver closes its open file within a second, and most late receipts come within
    the grace. What no receipt names after that is queued again (it may duplicate: the operator's call). Messages
    left `sending` that a receipt names are settled too, as the dispatch's start would settle them."""
    ledger = Ledger(db, campaign_id)
    before = _unknown(db, campaign_id)
    deadline = time.monotonic() + grace_s  # at most one grace, whatever the writers' clocks say
    announced = False
    while True:
        if ingest is not None:
            ingest()
        ledger.reconcile_in_flight(older_than_s=None)  # None: settles by receipts, calls nothing `unknown`
        young, wait_s = _young_unknown(db, campaign_id, grace_s)
        wait_s = min(wait_s, deadline - time.monotonic())
        if not young or wait_s <= 0:
            break
        if not announced:
            announced = True
            log.info("resend-unknown: %d message(s) of %s went unknown less than %g s ago "
                     "(retry.reconcile_grace_s): waiting up to %.0f s for their receipts before re-sending them",
                     young, campaign_id, grace_s, wait_s)
        time.sleep(min(poll_s, wait_s))
    settled = before - _unknown(db, campaign_id)
    return settled, requeue_unknown(db, campaign_id)


def _unknown(db: Store, campaign_id: str) -> int:
    return db.scalar("SELECT count(*) FROM outbox WHERE campaign_id = :c AND state = 'unknown'", c=campaign_id)


def _young_unknown(db: Store, campaign_id: str, grace_s: float) -> tuple[int, float]:
    """How many `unknown` messages went unknown less than `grace_s` ago, and seconds until the youngest is that old."""
    now = datetime.now(UTC)
    count, youngest = db.rows(
        "SELECT count(*), max(coalesce(updated_at, queued_at)) FROM outbox WHERE campaign_id = :c "
        "AND state = 'unknown' AND coalesce(updated_at, queued_at) > :cutoff",
        c=campaign_id, cutoff=now - timedelta(seconds=grace_s))[0]
    at = utc(youngest)
    return int(count), (grace_s - (now - at).total_seconds()) if at is not None else 0.0


def campaign_status(db: Store, campaign_id: str) -> dict[str, Any]:
    """Counts by state, the pause flag, the deferrals, why messages were withheld (not sent: the frequency cap at
    the dispatch's start, pipeline/dispatch/cap_at_send.py), and the last progress a dispatch recorded."""
    with db.read() as conn:
        states = dict(run(conn, "SELECT state, count(*) FROM outbox WHERE campaign_id = :c GROUP BY state "
                                "ORDER BY 1", c=campaign_id).all())
        deferred_until = run(conn, "SELECT min(not_before) FROM outbox WHERE campaign_id = :c AND state = 'deferred'",
                             c=campaign_id).scalar()
        # Queued, held back until a time: a send-at time, or the reset of a provider's quota that stopped the run.
        held_until = run(conn, "SELECT min(not_before) FROM outbox WHERE campaign_id = :c AND state = 'queued' "
                               "AND not_before > :now", c=campaign_id, now=datetime.now(UTC)).scalar()
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
    deferred_until, held_until = utc(deferred_until), utc(held_until)
    return {
        "campaign_id": campaign_id, "source": "store", "known": known, "states": states,
        "paused": paused_at is not None,
        "running": holder.describe() if holder else None,  # a live lease: a run holds the campaign now
        "deferred_until": deferred_until.isoformat() if deferred_until else None,
        "held_until": held_until.isoformat() if held_until else None, "withheld": withheld,
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


def after_lease(db: Store, campaign_id: str, *, ingest: Callable[[], object] | None = None,
                grace_s: float = 0.0) -> list[str]:
    """What the operator's command asked of this run, done now that it holds the campaign's lease (and at most once);
    what was done, for the run's log. `ingest` and `grace_s`: the run's spool ingest and its spec's
    retry.reconcile_grace_s, for resend-unknown (`resend_unknown`)."""
    asked = _asked.get()
    if asked is None or asked[0] != campaign_id:
        return []
    _asked.set(None)
    done = ["the operator's pause cleared"] if clear_pause(db, campaign_id) else []
    if asked[1] == "retry-failed":
        done.append(f"{requeue_failed(db, campaign_id):,} messages of {campaign_id} queued again (retry-failed)")
    elif asked[1] == "resend-unknown":
        settled, queued = resend_unknown(db, campaign_id, ingest=ingest, grace_s=grace_s)
        if settled:
            done.append(f"{settled:,} unknown messages of {campaign_id} settled as sent by their receipts "
                        "(not sent again)")
        done.append(f"{queued:,} messages of {campaign_id} queued again (resend-unknown)")
    return done
