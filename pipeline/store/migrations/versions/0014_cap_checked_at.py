"""leases.cap_checked_at: when a campaign's running dispatch checked the frequency cap

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 15:00:00

The cap at a dispatch's start (pipeline/dispatch/cap_at_send.py) counted what was sent, not what another campaign's
running dispatch was about to send: two campaigns starting together both passed it. Each run now checks the cap in
turn (one at a time) and marks its lease; a check counts the queued messages of every other run that checked before
it and still holds its lease.
"""

import sqlalchemy as sa
from alembic import op

import pipeline.store.schema

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("leases", sa.Column("cap_checked_at", pipeline.store.schema.UtcTimestamp(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE leases DROP COLUMN cap_checked_at")  # plain ALTER, as 0013's (SQLite 3.35+)
