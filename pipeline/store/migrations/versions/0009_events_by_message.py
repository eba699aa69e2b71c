"""events keyed by message: receipts stored in message order, so a large ingest writes each index page once

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 09:00:00

Before, `events` had a unique key on (occurred_at, event_id) and a second index on message_id. Message ids are
uuid5s: in arrival order they land at random places of that second index, and a large ingest in short write
transactions rewrote most of its pages in every transaction (1M receipts: ~21 s of CPU on SQLite against ~2.5 s
for the same rows keyed by message). Now the unique key is (message_id, event_id) — it also serves every lookup by
message — and ingest writes each batch sorted by message id. Receipts naming no message (Messenger's watermarks)
are kept unique by event_id alone in a partial index. No row changes: an event id was unique on its own before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_UNNAMED = sa.text("message_id IS NULL")


def upgrade() -> None:
    op.drop_index("events_key", table_name="events")
    op.drop_index("events_message", table_name="events")
    op.create_index("events_key", "events", ["message_id", "event_id"], unique=True)
    op.create_index("events_unnamed_key", "events", ["event_id"], unique=True,
                    sqlite_where=_UNNAMED, postgresql_where=_UNNAMED)


def downgrade() -> None:
    op.drop_index("events_unnamed_key", table_name="events")
    op.drop_index("events_key", table_name="events")
    op.create_index("events_message", "events", ["message_id"])
    op.create_index("events_key", "events", ["occurred_at", "event_id"], unique=True)
