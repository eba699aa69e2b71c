"""Receipts that do not name our message, resolved to it after ingest.

Most providers echo our id; the rest are matched through what the send recorded. Viber's
`message_token`, Messenger's `mid`, Twilio's SID, ChatApp's mass-send `<TaskId>:<To>` and Alibaba's
`BizId:phone` equal the outbox's `provider_message_id` (`link_receipts`).

Messenger's read receipts (and its deliveries without `mids`) name no message at all, only a
watermark: "everything sent to this PSID up to this instant". `apply_watermarks` turns each into one
receipt per covered message, as if Meta had reported it per message at the watermark instant, so the
message's status, read rates and billing count it like any other receipt. A message counts as sent
at its earliest evidence: the outbox's `sent_at` (our clock, just after Meta accepted it) or the
first receipt of its own (Meta's clock), whichever is earlier.
"""

from __future__ import annotations

import json
import re

import polars as pl

from pipeline.channels.alibaba_sms_webhooks import PROVIDER as ALIBABA_PROVIDER
from pipeline.channels.messenger_webhooks import INSTAGRAM_PROVIDER, WATERMARK_PREFIX
from pipeline.channels.messenger_webhooks import PROVIDER as MESSENGER_PROVIDER
from pipeline.receipts.event_ids import EVENT_ID_SQL
from pipeline.store import Store, run_many
from pipeline.store.arrow import duck, read_arrow, read_table
from pipeline.store.bulk import insert_frame

_WATERMARK_PROVIDERS = f"('{MESSENGER_PROVIDER}', '{INSTAGRAM_PROVIDER}')"

# Per covered message and status, the earliest watermark: a later one adds nothing, and an earlier one
# that arrives late still adds its receipt (the status is the same; delivered_at becomes the earliest).
# A message already holding a receipt as strong and as early (its own, or one derived before) is left
# alone, which also makes this idempotent. Read implies delivered.
# Computed in DuckDB over the rows these receipts concern (read from the store), inserted into the store.
_WATERMARKS_SQL = f"""
WITH marks AS (
    SELECT provider, recipient, status, occurred_at, received_at, raw_json FROM events
    WHERE provider IN {_WATERMARK_PROVIDERS} AND message_id IS NULL
      AND starts_with(provider_message_id, '{WATERMARK_PREFIX}')
), messages AS (
    SELECT o.message_id, o.channel, o.recipient_key, o.provider_message_id, o.sent_at FROM outbox o
    WHERE o.channel IN {_WATERMARK_PROVIDERS} AND o.provider_message_id IS NOT NULL
      AND EXISTS (SELECT 1 FROM marks m WHERE m.provider = o.channel AND m.recipient = o.recipient_key)
), own AS (
    SELECT e.message_id, min(e.occurred_at) AS first_at FROM events e
    WHERE e.provider IN {_WATERMARK_PROVIDERS} AND e.message_id IN (SELECT message_id FROM messages)
    GROUP BY e.message_id
), covered AS (
    SELECT m.provider, s.provider_message_id, s.message_id, m.status, s.recipient_key AS recipient,
           min(m.occurred_at) AS occurred_at, arg_min(m.received_at, m.occurred_at) AS received_at,
           arg_min(m.raw_json, m.occurred_at) AS raw_json, NULL::VARCHAR AS error_code
    FROM messages s LEFT JOIN own USING (message_id)
    JOIN marks m ON m.provider = s.channel AND m.recipient = s.recipient_key
     AND least(s.sent_at, own.first_at) <= m.occurred_at
    GROUP BY ALL
)
SELECT {EVENT_ID_SQL} AS event_id, provider, provider_message_id, message_id, status, recipient, occurred_at,
       received_at, raw_json
FROM covered c
WHERE NOT EXISTS (
    SELECT 1 FROM events e
    WHERE e.provider = c.provider AND e.message_id = c.message_id AND e.occurred_at <= c.occurred_at
      AND (e.status = c.status OR e.status = 'read')
)
"""


def link_receipts(db: Store) -> int:
    """Names the message of receipts that came without our id through the provider id the send recorded."""
    linked = link_alibaba(db)
    return linked + db.execute("""
        UPDATE events SET message_id = (SELECT min(o.message_id) FROM outbox o
                                        WHERE o.provider_message_id = events.provider_message_id)
        WHERE message_id IS NULL
          AND EXISTS (SELECT 1 FROM outbox o WHERE o.provider_message_id = events.provider_message_id)
          -- a named copy stored since (a replay after the provider id was recorded) leaves this one unnamed
          AND NOT EXISTS (SELECT 1 FROM events d WHERE d.event_id = events.event_id
                          AND d.message_id = (SELECT min(o.message_id) FROM outbox o
                                              WHERE o.provider_message_id = events.provider_message_id))
        """)


def _digits(value: str | None) -> str:
    return re.sub(r"[^0-9]", "", value or "")


RECEIPT_TABLES = ("events", "unmatched_events")


def link_alibaba(db: Store, table: str = "events") -> int:
    """Alibaba SMS receipts (in `events`, or in `unmatched_events` before they are moved): by the BizId the send
    recorded, then (a crash left no BizId) by the campaign of the out_id message and the phone digits;
    mainland numbers may be reported without their 86 prefix."""
    if table not in RECEIPT_TABLES:
        raise ValueError(f"not a receipts table: {table!r}")
    unlinked = db.rows(f"SELECT event_id, provider_message_id, recipient, raw_json FROM {table} "
                       "WHERE provider = :p AND message_id IS NULL", p=ALIBABA_PROVIDER)
    found = []
    for event_id, provider_id, recipient, raw in unlinked:
        message = db.scalar("SELECT min(message_id) FROM outbox WHERE provider_message_id = :pid", pid=provider_id)
        if message is None:
            try:
                out_id = json.loads(raw or "{}").get("out_id")
            except (ValueError, AttributeError):
                out_id = None
            digits = _digits(recipient)
            if out_id and digits:
                for candidate, key in db.rows("""
                        SELECT o.message_id, o.recipient_key FROM outbox o JOIN outbox f ON f.message_id = :out_id
                        WHERE o.campaign_id = f.campaign_id AND o.channel = f.channel
                        """, out_id=str(out_id)):
                    if _digits(key) in (digits, "86" + digits):
                        message = candidate
                        break
        if message is not None:
            found.append({"m": message, "e": event_id})
    if found:
        with db.write() as conn:
            # A named copy stored since (a replay after its provider id was recorded) leaves this one unnamed.
            run_many(conn, f"UPDATE {table} SET message_id = :m WHERE event_id = :e AND message_id IS NULL "
                           f"AND NOT EXISTS (SELECT 1 FROM {table} d WHERE d.event_id = :e AND d.message_id = :m)",
                     found)
    return len(found)


def apply_watermarks(db: Store) -> int:
    """Adds the per-message receipts that Messenger/Instagram watermarks imply; returns how many."""
    providers = [MESSENGER_PROVIDER, INSTAGRAM_PROVIDER]
    marks = read_table(db, "events", "WHERE provider IN :p AND message_id IS NULL AND provider_message_id LIKE :w",
                       p=providers, w=f"{WATERMARK_PREFIX}%")
    if marks.num_rows == 0:
        return 0
    recipients = sorted({r for r in marks.column("recipient").to_pylist() if r})
    outbox = read_table(db, "outbox", "WHERE channel IN :p AND provider_message_id IS NOT NULL "
                                      "AND recipient_key IN :r", p=providers, r=recipients or [""])
    ids = outbox.column("message_id").to_pylist() or [""]
    events = read_arrow(db, "SELECT provider, message_id, status, occurred_at FROM events "
                            "WHERE message_id IN :ids", {"occurred_at": marks.schema.field("occurred_at").type},
                        ids=ids)
    with duck({"marks_src": marks, "outbox": outbox, "events_src": events}) as con:
        con.execute("CREATE VIEW events AS SELECT provider, provider_message_id, message_id, status, recipient, "
                    "occurred_at, received_at, raw_json FROM marks_src UNION ALL SELECT provider, NULL, message_id, "
                    "status, NULL, occurred_at, NULL, NULL FROM events_src")
        derived = pl.from_arrow(con.sql(_WATERMARKS_SQL).to_arrow_table())
    if derived.is_empty():
        return 0
    with db.write() as conn:
        return insert_frame(conn, "events", derived, on_conflict="ignore")
