"""campaign_approvals: who approved or rejected a campaign before it sent, when, and with what comment

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09 10:00:00

A campaign whose spec (or the team's controls) requires an approval waits after its estimate; each request and its
outcome is kept here with the campaign (flows/approval.py, pipeline/dispatch/approvals.py) and shown in its report.
"""

import sqlalchemy as sa
from alembic import op

from pipeline.store.schema import Money, UtcTimestamp

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "campaign_approvals",
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("flow_run_id", sa.String()),
        sa.Column("origin", sa.String()),
        sa.Column("requested_by", sa.String()),
        sa.Column("requested_at", UtcTimestamp(), nullable=False),
        sa.Column("expires_at", UtcTimestamp()),
        sa.Column("messages", sa.BigInteger()),
        sa.Column("max_seq", sa.BigInteger()),
        sa.Column("estimate_usd", Money()),
        sa.Column("decision", sa.String(), nullable=False),
        sa.Column("approver", sa.String()),
        sa.Column("comment", sa.Text()),
        sa.Column("decided_at", UtcTimestamp()),
        sa.PrimaryKeyConstraint("request_id"),
    )
    op.create_index("campaign_approvals_campaign", "campaign_approvals", ["campaign_id", "requested_at"])


def downgrade() -> None:
    op.drop_index("campaign_approvals_campaign", table_name="campaign_approvals")
    op.drop_table("campaign_approvals")
