"""send_history: each closed hour's sends per channel in columns, for the frequency cap

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 01:00:00

The cap counts a week of sends per recipient (pipeline/audience/frequency.py). Read from `outbox_recent` that is
millions of index entries every time (1-3 s on either store for 10M sends). An hour that has closed changes only
when a send of it is reconciled, retried, deleted or imported, so its sends are kept once as a compressed Arrow
blob (pipeline/audience/send_history.py), and triggers on the outbox delete an hour's blob whenever such a change
touches it. The next read builds it again from the outbox.
"""

import sqlalchemy as sa
from alembic import op

from pipeline.store import dialect

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "send_history",
        sa.Column("hour", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("sends", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "channel"),
    )
    for statement in dialect.history_triggers(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    for statement in dialect.drop_history_triggers(op.get_bind().dialect.name):
        op.execute(statement)
    op.drop_table("send_history")
