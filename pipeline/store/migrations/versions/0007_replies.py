"""replies and media_uploads: inbound replies and taps linked to what they answer; header files uploaded once

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09 09:00:00

Receipts ingest writes one row per inbound message (a text reply or a button tap, its payload, the provider's
context id, whether it opted out) and links it to the message it answers; the campaign report counts replies,
taps per button and opt-outs from it (pipeline/receipts/replies.py, pipeline/costs/engagement.py).
media_uploads keeps the media id of each campaign's header file, uploaded once (pipeline/channels/whatsapp_media.py).
"""

import sqlalchemy as sa
from alembic import op

from pipeline.store.schema import UtcTimestamp

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replies",
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("address", sa.String()),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("payload", sa.Text()),
        sa.Column("context_id", sa.String()),
        sa.Column("opt_out", sa.Boolean(), nullable=False),
        sa.Column("occurred_at", UtcTimestamp(), nullable=False),
        sa.Column("linked", sa.Boolean(), nullable=False),
        sa.Column("message_id", sa.String()),
        sa.Column("campaign_id", sa.String()),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index("replies_campaign", "replies", ["campaign_id"])
    op.create_index("replies_unlinked", "replies", ["linked"])
    op.create_table(
        "media_uploads",
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("sha256", sa.String(), nullable=False),
        sa.Column("media_id", sa.String(), nullable=False),
        sa.Column("file_name", sa.String()),
        sa.Column("uploaded_at", UtcTimestamp(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "sha256"),
    )


def downgrade() -> None:
    op.drop_table("media_uploads")
    op.drop_index("replies_unlinked", table_name="replies")
    op.drop_index("replies_campaign", table_name="replies")
    op.drop_table("replies")
