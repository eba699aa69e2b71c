"""outbox_recent covers the frequency cap: every column its filter names, only messages that were sent

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 12:00:00

The team's cap (pipeline/audience/frequency.py) counts a week of sends per recipient across campaigns. Through the
old `outbox_recent (channel, sent_at)` every send in the window was a lookup into the table for its category, state
and recipient (10M sends, 4M in the window: 36 s on SQLite, 10 s on PostgreSQL). Now the index holds those columns
too, so the count reads the index alone, and only rows with a `sent_at` (a message sent, or reconciled as sent):
a claim, which leaves `sent_at` empty, no longer writes an entry into it on PostgreSQL. Every query that used the
old index (a channel's sends since a time) still finds them by its first two columns.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_SENT = sa.text("sent_at IS NOT NULL")


def upgrade() -> None:
    op.drop_index("outbox_recent", table_name="outbox")
    op.create_index("outbox_recent", "outbox",
                    ["channel", "sent_at", "category", "state", "recipient_key", "campaign_id"],
                    sqlite_where=_SENT, postgresql_where=_SENT)


def downgrade() -> None:
    op.drop_index("outbox_recent", table_name="outbox")
    op.create_index("outbox_recent", "outbox", ["channel", "sent_at"])
