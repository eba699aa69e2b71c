"""generated_values: the check outcome kept beside each cached answer

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 09:00:00

A re-run of model-written personalisation reads the outcome of the checks (pipeline/render/generated_checks.py)
instead of running them again on every value: `check_key` names the checks and settings that gave `refusal`
(NULL: the value passed). A value whose key is not today's is checked again and its outcome replaced.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("generated_values") as batch:
        batch.add_column(sa.Column("check_key", sa.String()))
        batch.add_column(sa.Column("refusal", sa.String()))


def downgrade() -> None:
    with op.batch_alter_table("generated_values") as batch:
        batch.drop_column("refusal")
        batch.drop_column("check_key")
