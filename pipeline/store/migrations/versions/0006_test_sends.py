"""test_sends: messages sent to internal seed numbers or addresses before a campaign, kept apart from the outbox

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 07:00:00

A test send (`campaign test-send`, the upload page's button) renders some audience rows as the campaign would and
sends them to the team's own numbers. They live here, not in the outbox: the outbox is what the campaign's counts,
reports, billing counts and frequency caps read, so a test kept out of it is out of all of them by construction.
Each row keeps its estimated cost, reported apart.
"""

import sqlalchemy as sa
from alembic import op

from pipeline.store.schema import Money, UtcTimestamp

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "test_sends",
        sa.Column("test_id", sa.String(), nullable=False),
        sa.Column("message_id", sa.String(), nullable=False),
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("row_number", sa.BigInteger(), nullable=False),
        sa.Column("seed", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("sender", sa.String()),
        sa.Column("country", sa.String()),
        sa.Column("category", sa.String()),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("provider_message_id", sa.String()),
        sa.Column("error_code", sa.String()),
        sa.Column("error_detail", sa.Text()),
        sa.Column("cost_usd", Money()),
        sa.Column("started_by", sa.String()),
        sa.Column("sent_at", UtcTimestamp(), nullable=False),
        sa.PrimaryKeyConstraint("test_id", "message_id"),
    )
    op.create_index("test_sends_campaign", "test_sends", ["campaign_id"])


def downgrade() -> None:
    op.drop_index("test_sends_campaign", table_name="test_sends")
    op.drop_table("test_sends")
