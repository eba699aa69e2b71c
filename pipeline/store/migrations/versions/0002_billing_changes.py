"""billing_changes: the campaigns whose billing groups must be counted again, marked as their outbox changes

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 03:30:00

Knowing whether a campaign's outbox changed since billing last counted it otherwise takes a scan of every
outbox row (2.8 s per 2M rows on SQLite, measured): triggers mark the campaign in the writer's own
transaction instead. SQLite: row triggers (a primary-key probe of a tiny table per row, within the noise of
a 500-claim group commit); PostgreSQL: statement triggers over the transition table (one insert per
statement, not per row). pipeline/costs/billing.py marks the campaigns new receipts touched and clears a
mark once it has counted the campaign.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The outbox columns billing counts by (reports/cost_report.sql); other updates (attempts, est_cost_usd, ...)
# mark nothing on SQLite. PostgreSQL cannot name columns on a trigger with a transition table: any update marks.
_COUNTED = "campaign_id, message_id, channel, country, category, state, error_code, error_detail, queued_at, " \
           "sent_at, segments"
_MARK = "INSERT INTO billing_changes (campaign_id) VALUES ({row}.campaign_id) ON CONFLICT (campaign_id) DO NOTHING;"
SQLITE = [
    f"CREATE TRIGGER outbox_billing_insert AFTER INSERT ON outbox BEGIN {_MARK.format(row='NEW')} END",
    f"CREATE TRIGGER outbox_billing_update AFTER UPDATE OF {_COUNTED} ON outbox "
    f"BEGIN {_MARK.format(row='NEW')} {_MARK.format(row='OLD')} END",
    f"CREATE TRIGGER outbox_billing_delete AFTER DELETE ON outbox BEGIN {_MARK.format(row='OLD')} END",
]
POSTGRESQL = [
    """CREATE FUNCTION outbox_billing_mark() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO billing_changes (campaign_id) SELECT DISTINCT campaign_id FROM changed_rows
        ON CONFLICT (campaign_id) DO NOTHING;
        RETURN NULL;
    END $$""",
    "CREATE TRIGGER outbox_billing_insert AFTER INSERT ON outbox REFERENCING NEW TABLE AS changed_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION outbox_billing_mark()",
    "CREATE TRIGGER outbox_billing_update AFTER UPDATE ON outbox REFERENCING NEW TABLE AS changed_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION outbox_billing_mark()",
    "CREATE TRIGGER outbox_billing_delete AFTER DELETE ON outbox REFERENCING OLD TABLE AS changed_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION outbox_billing_mark()",
]


def upgrade() -> None:
    op.create_table(
        "billing_changes",
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id"),
    )
    for statement in SQLITE if op.get_bind().dialect.name == "sqlite" else POSTGRESQL:
        op.execute(statement)
    # Campaigns already in a store made before this revision are counted again once.
    op.execute("INSERT INTO billing_changes (campaign_id) SELECT DISTINCT campaign_id FROM outbox")


def downgrade() -> None:
    for name in ("insert", "update", "delete"):
        op.execute(f"DROP TRIGGER outbox_billing_{name}" + ("" if op.get_bind().dialect.name == "sqlite"
                                                            else " ON outbox"))
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP FUNCTION outbox_billing_mark()")
    op.drop_table("billing_changes")
