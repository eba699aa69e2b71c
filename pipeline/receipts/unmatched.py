"""Receipts that name no message of ours: kept apart in `unmatched_events`, never counted, and moved into
`events` once their message appears.

A correctly signed receipt may name a message the outbox does not have: another system sending from the
same account, a provider's mistake, or a receipt that came before the dispatcher recorded the provider id it
names (a ChatApp mass send, an answer lost in a crash). Such receipts stay out of `events`, which the ledger,
`message_status` and every report read. Each ingest checks them again — by our id, by the provider ids the
outbox now holds, by Alibaba's out_id — and moves those that match; nothing is dropped.
"""

from __future__ import annotations

import duckdb

from pipeline.channels import alibaba_sms_webhooks
from pipeline.channels.messenger_webhooks import INSTAGRAM_PROVIDER, WATERMARK_PREFIX
from pipeline.channels.messenger_webhooks import PROVIDER as MESSENGER_PROVIDER

COLUMNS = ("event_id, provider, provider_message_id, message_id, status, error_code, error_title, category, "
           "pricing_type, recipient, occurred_at, received_at, raw_json")

# A receipt `s` matches when it names an outbox message by our id, or names none but carries a provider id the
# outbox recorded (pipeline/receipts/links.py fills its message_id). A Messenger/Instagram watermark names no
# message by design: it stays with the receipts, which derive per-message receipts from it (links.py).
MATCHED_SQL = f"""coalesce(
    s.message_id IN (SELECT message_id FROM outbox)
    OR (s.message_id IS NULL AND (
        s.provider_message_id IN (SELECT provider_message_id FROM outbox WHERE provider_message_id IS NOT NULL)
        OR (s.provider IN ('{MESSENGER_PROVIDER}', '{INSTAGRAM_PROVIDER}')
            AND starts_with(s.provider_message_id, '{WATERMARK_PREFIX}')))),
    false)"""

# The batch's receipts that do not match (few, as a rule): `_staged_events` is the batch (pipeline/receipts/ingest.py).
STAGE_SQL = f"CREATE OR REPLACE TEMP TABLE _unmatched_ids AS SELECT DISTINCT event_id FROM _staged_events s " \
            f"WHERE NOT {MATCHED_SQL}"
# Of copies within the batch the first wins, as for `events`; a receipt already kept apart stays as it is.
INSERT_SQL = f"""
INSERT INTO unmatched_events ({COLUMNS})
SELECT {', '.join('s.' + c.strip() for c in COLUMNS.split(','))}
FROM _staged_events s LEFT JOIN _staged_dups r ON r.event_id = s.event_id
WHERE (r.event_id IS NULL OR (s.file_idx, s.line_no, s.pos) = r.first)
  AND s.event_id IN (SELECT event_id FROM _unmatched_ids)
  AND NOT EXISTS (SELECT 1 FROM unmatched_events u WHERE u.event_id = s.event_id)
"""

_LINK_SQL = """
UPDATE unmatched_events SET message_id = o.message_id
FROM outbox o
WHERE unmatched_events.message_id IS NULL AND o.provider_message_id = unmatched_events.provider_message_id
"""
_MATCHING = "message_id IN (SELECT message_id FROM outbox)"
# A copy that reached `events` meanwhile (a provider's retry after the message appeared) has the same event id
# and occurred_at: the time range keeps the check to the row groups that can hold it.
_MOVE_SQL = f"""
INSERT INTO events ({COLUMNS})
SELECT {COLUMNS} FROM unmatched_events u
WHERE u.{_MATCHING}
  AND NOT EXISTS (SELECT 1 FROM events e WHERE e.occurred_at BETWEEN $lo AND $hi AND e.event_id = u.event_id)
"""


def promote(con: duckdb.DuckDBPyConnection) -> int:
    """Moves the receipts kept apart whose message has since appeared into `events`, in one transaction;
    returns how many moved."""
    con.begin()
    try:
        con.execute(_LINK_SQL)
        alibaba_sms_webhooks.resolve_message_ids(con, "unmatched_events")
        lo, hi = con.execute(f"SELECT min(occurred_at), max(occurred_at) FROM unmatched_events WHERE {_MATCHING}"
                             ).fetchall()[0]
        moved = 0
        if lo is not None:
            moved = int(con.execute(_MOVE_SQL, {"lo": lo, "hi": hi}).fetchall()[0][0])
            con.execute(f"DELETE FROM unmatched_events WHERE {_MATCHING}")
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return moved


def waiting(con: duckdb.DuckDBPyConnection) -> int:
    """How many receipts are kept apart."""
    return int(con.execute("SELECT count(*) FROM unmatched_events").fetchall()[0][0])
