"""template_waits: campaigns a template stopped, waiting for its re-approval to continue by themselves

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 09:00:00

A campaign run that ends because the provider paused, disabled or sent its template back to review records here
what to run again (the deployment and its parameters); once the registry has the template APPROVED again (a webhook
ingested, or `campaign templates sync`) a continuation run is scheduled (flows/reapproval.py).
"""

import sqlalchemy as sa
from alembic import op

from pipeline.store.schema import UtcTimestamp

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "template_waits",
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("language", sa.String(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("deployment_id", sa.String()),
        sa.Column("parameters_json", sa.Text(), nullable=False),
        sa.Column("stopped_at", UtcTimestamp(), nullable=False),
        sa.Column("continued_at", UtcTimestamp()),
        sa.Column("flow_run_id", sa.String()),
        sa.PrimaryKeyConstraint("campaign_id"),
    )


def downgrade() -> None:
    op.drop_table("template_waits")
