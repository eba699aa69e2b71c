"""template_registry: templates and sending numbers as the provider knows them, and every template change

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 10:00:00

`campaign templates sync` fills provider_templates and provider_numbers from the provider's API; Meta's template
and number webhooks keep them current (receipts ingest); dispatch reads them before the first send and while it
sends. template_changes keeps each status, category and quality change and each submission (the edit limits).
"""

import sqlalchemy as sa
from alembic import op

from pipeline.store.schema import UtcTimestamp

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_templates",
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("language", sa.String(), nullable=False),
        sa.Column("template_id", sa.String()),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("category", sa.String()),
        sa.Column("previous_category", sa.String()),
        sa.Column("components_json", sa.Text()),
        sa.Column("quality", sa.String()),
        sa.Column("reason", sa.Text()),
        sa.Column("changed_at", UtcTimestamp()),
        sa.Column("synced_at", UtcTimestamp()),
        sa.Column("deleted_at", UtcTimestamp()),
        sa.PrimaryKeyConstraint("provider", "account", "name", "language"),
    )
    op.create_table(
        "template_changes",
        sa.Column("change_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("language", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("old_value", sa.String()),
        sa.Column("new_value", sa.String()),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("at", UtcTimestamp(), nullable=False),
        sa.PrimaryKeyConstraint("change_id"),
    )
    op.create_index("template_changes_name", "template_changes", ["provider", "account", "name", "at"])
    op.create_table(
        "provider_numbers",
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("phone_number_id", sa.String(), nullable=False),
        sa.Column("display_phone_number", sa.String()),
        sa.Column("verified_name", sa.String()),
        sa.Column("status", sa.String()),
        sa.Column("quality_rating", sa.String()),
        sa.Column("messaging_limit_tier", sa.String()),
        sa.Column("code_verification_status", sa.String()),
        sa.Column("changed_at", UtcTimestamp()),
        sa.Column("synced_at", UtcTimestamp()),
        sa.PrimaryKeyConstraint("provider", "account", "phone_number_id"),
    )


def downgrade() -> None:
    op.drop_table("provider_numbers")
    op.drop_index("template_changes_name", table_name="template_changes")
    op.drop_table("template_changes")
    op.drop_table("provider_templates")
