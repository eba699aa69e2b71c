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

import duckdb

from pipeline.channels import alibaba_sms_webhooks
from pipeline.channels.messenger_webhooks import INSTAGRAM_PROVIDER, WATERMARK_PREFIX
from pipeline.channels.messenger_webhooks import PROVIDER as MESSENGER_PROVIDER
from pipeline.receipts.event_ids import EVENT_ID_SQL

_WATERMARK_PROVIDERS = f"('{MESSENGER_PROVIDER}', '{INSTAGRAM_PROVIDER}')"

# Per covered message and status, the earliest watermark: a later one adds nothing, and an earlier one
# that arrives late still adds its receipt (the status is the same; delivered_at becomes the earliest).
# A message already holding a receipt as strong and as early (its own, or one derived before) is left
# alone, which also makes this idempotent. Read implies delivered.
_WATERMARKS_SQL = f"""
INSERT INTO events (event_id, provider, provider_message_id, message_id, status, recipient, occurred_at,
                    received_at, raw_json)
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
SELECT {EVENT_ID_SQL}, provider, provider_message_id, message_id, status, recipient, occurred_at, received_at,
       raw_json
FROM covered c
WHERE NOT EXISTS (
    SELECT 1 FROM events e
    WHERE e.provider = c.provider AND e.message_id = c.message_id AND e.occurred_at <= c.occurred_at
      AND (e.status = c.status OR e.status = 'read')
)
"""


def link_receipts(con: duckdb.DuckDBPyConnection) -> int:
    """Names the message of receipts that came without our id through the provider id the send recorded."""
    linked = alibaba_sms_webhooks.resolve_message_ids(con)
    rows = con.execute(
        """
        UPDATE events SET message_id = o.message_id
        FROM outbox o
        WHERE events.message_id IS NULL AND o.provider_message_id = events.provider_message_id
        """
    ).fetchall()
    return linked + (rows[0][0] if rows else 0)


def apply_watermarks(con: duckdb.DuckDBPyConnection) -> int:
    """Adds the per-message receipts that Messenger/Instagram watermarks imply; returns how many."""
    rows = con.execute(_WATERMARKS_SQL).fetchall()
    return int(rows[0][0]) if rows else 0
