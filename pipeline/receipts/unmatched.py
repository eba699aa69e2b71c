"""Receipts that name no message of ours: kept apart in `unmatched_events`, never counted, and moved into
`events` once their message appears.

A correctly signed receipt may name a message the outbox does not have: another system sending from the
same account, a provider's mistake, or a receipt that came before the dispatcher recorded the provider id it
names (a ChatApp mass send, an answer lost in a crash). Such receipts stay out of `events`, which the ledger,
`message_status` and every report read. Each ingest checks them again — by our id, by the provider ids the
outbox now holds, by Alibaba's out_id — and moves those that match; nothing is dropped.
"""

from __future__ import annotations

from pipeline.channels.messenger_webhooks import INSTAGRAM_PROVIDER, WATERMARK_PREFIX
from pipeline.channels.messenger_webhooks import PROVIDER as MESSENGER_PROVIDER
from pipeline.store import Store, run

COLUMNS = ("event_id, provider, provider_message_id, message_id, status, error_code, error_title, category, "
           "pricing_type, recipient, occurred_at, received_at, raw_json")

# A receipt matches when it names an outbox message by our id, or names none but carries a provider id the
# outbox recorded; then it is stored named (as links.py would name it later), since events are unique by
# (message_id, event_id) and a replay of it must find the stored copy. A Messenger/Instagram watermark names no
# message by design: it stays with the receipts, which derive per-message receipts from it (links.py).
# One index probe per receipt, as scalar subqueries: PostgreSQL plans `EXISTS ... OR EXISTS ...` (or a join) as a
# hash of the whole outbox for every chunk when its statistics are older than a bulk load. GROUP BY keeps it from
# answering min() by walking the outbox's primary key.
_CLASSIFIED = f"""(
    SELECT s.*, CASE WHEN s.message_id IS NULL
                     THEN (SELECT min(o.message_id) FROM outbox o WHERE o.provider_message_id = s.provider_message_id
                           GROUP BY o.provider_message_id)
                     ELSE (SELECT o.message_id FROM outbox o WHERE o.message_id = s.message_id) END AS named
    FROM (SELECT {COLUMNS} FROM {{stage}} WHERE {{chunk}}) s
) c"""
_WATERMARK = (f"(c.message_id IS NULL AND c.provider IN ('{MESSENGER_PROVIDER}', '{INSTAGRAM_PROVIDER}') "
              f"AND c.provider_message_id LIKE '{WATERMARK_PREFIX}%')")
_NAMED_COLUMNS = COLUMNS.replace("provider_message_id, message_id,", "provider_message_id, named,")

# A batch's receipts, staged beside the store (pipeline/store/bulk.py: {stage}, {chunk}), into events or apart;
# a receipt already stored (in either) stays as it is.
SPLIT_SQL = (
    f"INSERT INTO events ({COLUMNS}) SELECT {_NAMED_COLUMNS} FROM {_CLASSIFIED} "
    f"WHERE c.named IS NOT NULL OR {_WATERMARK} ON CONFLICT DO NOTHING",
    f"INSERT INTO unmatched_events ({COLUMNS}) SELECT {COLUMNS} FROM {_CLASSIFIED} "
    f"WHERE c.named IS NULL AND NOT {_WATERMARK} ON CONFLICT DO NOTHING",
)

_LINK_SQL = """
UPDATE unmatched_events SET message_id = (SELECT min(o.message_id) FROM outbox o
                                          WHERE o.provider_message_id = unmatched_events.provider_message_id)
WHERE message_id IS NULL
  AND EXISTS (SELECT 1 FROM outbox o WHERE o.provider_message_id = unmatched_events.provider_message_id)
"""
_MATCHING = "EXISTS (SELECT 1 FROM outbox o WHERE o.message_id = unmatched_events.message_id)"
# A copy that reached `events` meanwhile (a provider's retry after the message appeared) has the same key.
_MOVE_SQL = f"""
INSERT INTO events ({COLUMNS})
SELECT {COLUMNS} FROM unmatched_events WHERE {_MATCHING}
ON CONFLICT DO NOTHING
"""


def promote(db: Store) -> int:
    """Moves the receipts kept apart whose message has since appeared into `events`, in one transaction;
    returns how many moved."""
    from pipeline.receipts.links import link_alibaba

    if not db.scalar("SELECT count(*) FROM unmatched_events"):
        return 0
    link_alibaba(db, "unmatched_events")
    with db.write() as conn:
        run(conn, _LINK_SQL)
        moved = run(conn, _MOVE_SQL).rowcount
        run(conn, f"DELETE FROM unmatched_events WHERE {_MATCHING}")
    return moved


def waiting(db: Store) -> int:
    """How many receipts are kept apart."""
    return int(db.scalar("SELECT count(*) FROM unmatched_events"))
