"""Replies and button taps: which taps opt a recipient out, and which campaign message each reply answers.

Ingest writes each inbound message to `replies` (reply or tap, payload, context id, opt-out); `link_replies`
then names the message and campaign it answers, which the campaign report counts (costs/engagement.py). A reply
naming a message the outbox does not hold yet waits, and a later ingest links it once the message appears.

An opt-out is a quick-reply button a campaign spec marks `opt_out: true` (the demo's STOP_PROMOS): ingest
suppresses whoever taps it on that channel, as a STOP reply does (pipeline/receipts/ingest.py). The payloads
are read from the specs of the campaigns in the store, once per ingest call, bounded by
CAMPAIGN_MAX_OPT_OUT_PAYLOADS (default 10,000; more is an error naming the setting, never a silent cut).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.spec import SpecError, positive_setting
from pipeline.store import Store, run_many, utc

MAX_PAYLOADS_ENV = "CAMPAIGN_MAX_OPT_OUT_PAYLOADS"
DEFAULT_MAX_PAYLOADS = 10_000


def opt_out_payloads(db: Store, environ: Mapping[str, str] = os.environ) -> frozenset[str]:
    """Every quick-reply payload a campaign of the store marks as an opt-out."""
    limit = positive_setting(MAX_PAYLOADS_ENV, DEFAULT_MAX_PAYLOADS, environ)
    found: set[str] = set()
    # Only specs that mention an opt-out are parsed: most campaigns have none.
    for (raw,) in db.rows("SELECT spec_json FROM campaigns WHERE spec_json LIKE :marked", marked='%"opt_out":true%'):
        try:
            buttons = json.loads(raw).get("template", {}).get("buttons") or []
        except (ValueError, AttributeError):
            continue  # a spec the store holds was valid when stored; an unreadable one names no payload
        found.update(b["payload"] for b in buttons if isinstance(b, dict) and b.get("opt_out") and b.get("payload"))
        if len(found) > limit:
            raise SpecError(f"{MAX_PAYLOADS_ENV}: more than {limit} opt-out payloads across the store's campaigns")
    return frozenset(found)


LINK_WINDOW = timedelta(days=7)  # a reply without a context id answers the last message of the week before it
LINK_BATCH = 5_000  # replies looked at per transaction
# A reply naming a message the outbox does not hold yet (it came before the dispatcher recorded the provider id:
# a Chat App mass send's answer, a crash between send and record) waits for it, as unmatched.py does for
# receipts: each ingest looks again. After this long (from the reply's time) it is linked the way a reply
# without a context id is, so a context that never appears (another system's message) is not looked at forever.
LINK_WAIT_ENV = "CAMPAIGN_REPLY_LINK_WAIT_S"
DEFAULT_LINK_WAIT_S = 2 * 24 * 3600


def link_replies(db: Store, *, window: timedelta = LINK_WINDOW, batch: int = LINK_BATCH,
                 now: datetime | None = None, environ: Mapping[str, str] = os.environ) -> int:
    """Links the replies not yet linked to the message they answer: the provider's context id (WhatsApp
    `context.id`, Chat App's ContextMessageId) names it; else the last message of the channel sent to the sender
    within `window` before the reply. A context id the outbox does not hold yet leaves the reply waiting for up
    to CAMPAIGN_REPLY_LINK_WAIT_S (default 2 days) after it. Returns how many replies this call linked; one with
    no such message is marked linked with no message, and is not looked at again."""
    wait = timedelta(seconds=positive_setting(LINK_WAIT_ENV, DEFAULT_LINK_WAIT_S, environ))
    now = now or datetime.now(UTC)
    done = 0
    after: tuple[Any, str] | None = None  # keyset: waiting replies stay unlinked, so pages move past them
    while True:
        page = ("SELECT event_id, channel, address, context_id, occurred_at FROM replies WHERE linked = :f "
                + ("AND (occurred_at > :at OR (occurred_at = :at AND event_id > :e)) " if after else "")
                + "ORDER BY occurred_at, event_id LIMIT :n")
        rows = db.rows(page, f=False, n=batch, **({"at": after[0], "e": after[1]} if after else {}))
        if not rows:
            return done
        after = (rows[-1][4], rows[-1][0])
        updates: list[dict[str, Any]] = []
        for event_id, channel, address, context_id, at in rows:
            found = _by_context(db, context_id) if context_id else []
            if not found and context_id and utc(at) + wait > now:
                continue  # its message may not be recorded yet: the next ingest looks again
            if not found and address:
                at = utc(at)
                found = db.rows("""SELECT message_id, campaign_id FROM outbox
                                   WHERE channel = :c AND recipient_key = :a AND sent_at <= :at AND sent_at >= :since
                                   ORDER BY sent_at DESC LIMIT 1""", c=channel, a=address, at=at, since=at - window)
            message_id, campaign_id = found[0] if found else (None, None)
            updates.append({"e": event_id, "m": message_id, "c": campaign_id, "t": True})
        if updates:
            with db.write() as conn:
                run_many(conn, "UPDATE replies SET linked = :t, message_id = :m, campaign_id = :c "
                               "WHERE event_id = :e", updates)
        done += len(updates)


def _by_context(db: Store, context_id: str) -> list[Any]:
    """The outbox message a context id names: the provider's id of our message (Meta's wamid / mid, Chat App's
    MessageId), or our own id (Viber's tracking_data)."""
    found = db.rows("SELECT message_id, campaign_id FROM outbox WHERE provider_message_id = :p "
                    "ORDER BY sent_at DESC LIMIT 1", p=context_id)
    return found or db.rows("SELECT message_id, campaign_id FROM outbox WHERE message_id = :p", p=context_id)
