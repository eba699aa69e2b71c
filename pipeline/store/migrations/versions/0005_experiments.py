"""experiments: each recipient's arm (the holdout among them), conversions, and the model-written values' cache

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10 10:00:00

experiment_arms records every accepted recipient's arm when a campaign with variants or a holdout is queued:
the holdout, which the outbox never holds, is known here. conversions holds the outcomes (`campaign conversions
import`, or the audience's outcome column), one row per recipient and time. generated_values caches a model's
answer per input hash, so a re-run of personalisation calls nothing again.
"""

import sqlalchemy as sa
from alembic import op

from pipeline.store.schema import UtcTimestamp

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "experiment_arms",
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("recipient_key", sa.String(), nullable=False),
        sa.Column("arm", sa.String(), nullable=False),
        sa.Column("country", sa.String()),
        sa.Column("assigned_at", UtcTimestamp(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "recipient_key"),
    )
    op.create_table(
        "conversions",
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("recipient_key", sa.String(), nullable=False),
        sa.Column("converted_at", UtcTimestamp(), nullable=False),
        sa.Column("value", sa.Float()),
        sa.Column("source", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "recipient_key", "converted_at"),
    )
    op.create_table(
        "generated_values",
        sa.Column("input_hash", sa.String(), nullable=False),
        sa.Column("value", sa.Text()),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer()),
        sa.Column("completion_tokens", sa.Integer()),
        sa.Column("created_at", UtcTimestamp(), nullable=False),
        sa.PrimaryKeyConstraint("input_hash"),
    )


def downgrade() -> None:
    op.drop_table("generated_values")
    op.drop_table("conversions")
    op.drop_table("experiment_arms")
