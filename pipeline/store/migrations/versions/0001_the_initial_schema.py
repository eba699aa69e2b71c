"""the initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-12-06 02:38:32.391337
"""

import sqlalchemy as sa
from alembic import op

import pipeline.store.schema

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The current delivery status of each message, whatever order its receipts arrived in: failed is
# terminal, otherwise the highest of read > delivered > sent. Plain SQL both databases run.
MESSAGE_STATUS = """
CREATE VIEW message_status AS
SELECT
    message_id,
    min(provider_message_id) AS provider_message_id,
    CASE WHEN max(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) = 1 THEN 'failed'
         WHEN max(CASE WHEN status = 'read' THEN 1 ELSE 0 END) = 1 THEN 'read'
         WHEN max(CASE WHEN status = 'delivered' THEN 1 ELSE 0 END) = 1 THEN 'delivered'
         ELSE 'sent' END AS status,
    max(CASE WHEN status = 'failed' THEN error_code END) AS error_code,
    max(category) AS billed_category,
    max(pricing_type) AS pricing_type,
    min(CASE WHEN status IN ('delivered', 'read') THEN occurred_at END) AS delivered_at,
    max(occurred_at) AS last_event_at
FROM events
WHERE message_id IS NOT NULL
GROUP BY message_id
"""


def upgrade() -> None:

    op.create_table(
        "billing_groups",
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=True),
        sa.Column("country", sa.String(), nullable=True),
        sa.Column("category", sa.String(), nullable=True),
        sa.Column("sent_category", sa.String(), nullable=True),
        sa.Column("pricing_type", sa.String(), nullable=True),
        sa.Column("price_day", pipeline.store.schema.Day(), nullable=True),
        sa.Column("error_code", sa.String(), nullable=True),
        sa.Column("error_title", sa.Text(), nullable=True),
        sa.Column("sent", sa.BigInteger(), nullable=True),
        sa.Column("delivered", sa.BigInteger(), nullable=True),
        sa.Column("read", sa.BigInteger(), nullable=True),
        sa.Column("failed", sa.BigInteger(), nullable=True),
        sa.Column("sent_segments", sa.BigInteger(), nullable=True),
    )
    with op.batch_alter_table("billing_groups", schema=None) as batch_op:
        batch_op.create_index("billing_groups_campaign", ["campaign_id"], unique=False)

    op.create_table(
        "billing_messages",
        sa.Column("message_id", sa.String(), nullable=False),
        sa.Column("status_rank", sa.SmallInteger(), nullable=True),
        sa.Column("billed_category", sa.String(), nullable=True),
        sa.Column("pricing_type", sa.String(), nullable=True),
        sa.Column("receipt_error", sa.String(), nullable=True),
        sa.Column("error_title", sa.Text(), nullable=True),
        sa.Column("delivered_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_table(
        "billing_sync",
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=True),
        sa.Column("row_count", sa.BigInteger(), nullable=True),
        sa.Column("fingerprint", sa.String(), nullable=True),
        sa.Column("synced_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("source"),
    )
    op.create_table(
        "campaign_control",
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("paused_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=True),
        sa.Column("status_json", sa.Text(), nullable=True),
        sa.Column("status_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("campaign_id"),
    )
    op.create_table(
        "campaigns",
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("template", sa.String(), nullable=False),
        sa.Column("category", sa.String(), nullable=False),
        sa.Column("created_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id"),
    )
    op.create_table(
        "cost_estimates",
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("estimated_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=False),
        sa.Column("priced_on", pipeline.store.schema.Day(), nullable=False),
        sa.Column("channel", sa.String(), nullable=True),
        sa.Column("country", sa.String(), nullable=True),
        sa.Column("market", sa.String(), nullable=True),
        sa.Column("category", sa.String(), nullable=True),
        sa.Column("pricing_type", sa.String(), nullable=True),
        sa.Column("messages", sa.BigInteger(), nullable=True),
        sa.Column("segments", sa.BigInteger(), nullable=True),
        sa.Column("platform_fee_usd", pipeline.store.schema.Money(precision=18, scale=6), nullable=True),
        sa.Column("service_fee_usd", pipeline.store.schema.Money(precision=18, scale=6), nullable=True),
        sa.Column("total_usd", pipeline.store.schema.Money(precision=18, scale=6), nullable=True),
        sa.Column("unpriced", sa.BigInteger(), nullable=True),
    )
    with op.batch_alter_table("cost_estimates", schema=None) as batch_op:
        batch_op.create_index("cost_estimates_campaign", ["campaign_id", "estimated_at"], unique=False)

    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("provider_message_id", sa.String(), nullable=False),
        sa.Column("message_id", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error_code", sa.String(), nullable=True),
        sa.Column("error_title", sa.Text(), nullable=True),
        sa.Column("category", sa.String(), nullable=True),
        sa.Column("pricing_type", sa.String(), nullable=True),
        sa.Column("recipient", sa.String(), nullable=True),
        sa.Column("occurred_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=False),
        sa.Column("received_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=True),
        sa.Column("raw_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("events_key", ["occurred_at", "event_id"], unique=True)
        batch_op.create_index("events_message", ["message_id"], unique=False)
        unlinked = sa.text("message_id IS NULL")
        batch_op.create_index("events_unlinked", ["provider_message_id"], unique=False,
                              sqlite_where=unlinked, postgresql_where=unlinked)

    op.create_table(
        "inbound",
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("sender", sa.String(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("occurred_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=False),
        sa.Column("raw_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("event_id"),
    )
    with op.batch_alter_table("inbound", schema=None) as batch_op:
        batch_op.create_index("inbound_sender", ["provider", "sender"], unique=False)

    op.create_table(
        "leases",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("holder", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("host", sa.String(), nullable=True),
        sa.Column("flow_run_id", sa.String(), nullable=True),
        sa.Column("flow_run_name", sa.String(), nullable=True),
        sa.Column("since", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=False),
        sa.Column("expires_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "markets",
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("region", sa.String(), nullable=False),
        sa.Column("market", sa.String(), nullable=False),
        sa.Column("own_market", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("channel", "region"),
    )
    op.create_table(
        "outbox",
        sa.Column("message_id", sa.String(), nullable=False),
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("recipient_key", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("sender", sa.String(), nullable=False),
        sa.Column("country", sa.String(), nullable=True),
        sa.Column("category", sa.String(), nullable=True),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("provider_message_id", sa.String(), nullable=True),
        sa.Column("error_code", sa.String(), nullable=True),
        sa.Column("error_detail", sa.Text(), nullable=True),
        sa.Column("queued_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=False),
        sa.Column("sent_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=True),
        sa.Column("updated_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=True),
        sa.Column("not_before", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=True),
        sa.Column("retryable", sa.Boolean(), nullable=True),
        sa.Column("timezone", sa.String(), nullable=True),
        sa.Column("est_cost_usd", pipeline.store.schema.Money(precision=18, scale=6), nullable=True),
        sa.Column("segments", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("message_id"),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("outbox_campaign_seq", ["campaign_id", "seq"], unique=True)
        batch_op.create_index("outbox_lane", ["campaign_id", "sender", "state", "seq"], unique=False)
        batch_op.create_index("outbox_provider_id", ["provider_message_id"], unique=False)
        batch_op.create_index("outbox_recent", ["channel", "sent_at"], unique=False)
        batch_op.create_index("outbox_recipient", ["recipient_key"], unique=False)

    op.create_table(
        "outbox_transitions",
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("error_code", sa.String(), nullable=True),
        sa.Column("changed_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=False),
    )
    with op.batch_alter_table("outbox_transitions", schema=None) as batch_op:
        batch_op.create_index("transitions_message", ["campaign_id", "seq"], unique=False)

    op.create_table(
        "points_ledger",
        sa.Column("entry_id", sa.String(), nullable=False),
        sa.Column("booked_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("bucket", sa.String(), nullable=False),
        sa.Column("points", pipeline.store.schema.Money(precision=18, scale=6), nullable=False),
        sa.Column("campaign_id", sa.String(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("entry_id"),
    )
    op.create_table(
        "price_tiers",
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("market", sa.String(), nullable=False),
        sa.Column("category", sa.String(), nullable=False),
        sa.Column("from_messages", sa.BigInteger(), nullable=False),
        sa.Column("to_messages", sa.BigInteger(), nullable=True),
        sa.Column("platform_fee_usd", pipeline.store.schema.Money(precision=18, scale=6), nullable=False),
        sa.Column("effective_from", pipeline.store.schema.Day(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("channel", "market", "category", "from_messages", "effective_from"),
    )
    op.create_table(
        "prices",
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("market", sa.String(), nullable=False),
        sa.Column("category", sa.String(), nullable=False),
        sa.Column("platform_fee_usd", pipeline.store.schema.Money(precision=18, scale=6), nullable=False),
        sa.Column("service_fee_usd", pipeline.store.schema.Money(precision=18, scale=6), nullable=False),
        sa.Column("effective_from", pipeline.store.schema.Day(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("channel", "market", "category", "effective_from"),
    )
    op.create_table(
        "pricing_rules",
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("category", sa.String(), nullable=False),
        sa.Column("pricing_type", sa.String(), nullable=False),
        sa.Column("billable", sa.Boolean(), nullable=False),
        sa.Column("rate_category", sa.String(), nullable=True),
        sa.Column("basis", sa.String(), nullable=False),
        sa.Column("tiered", sa.Boolean(), nullable=False),
        sa.Column("effective_from", pipeline.store.schema.Day(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("channel", "category", "pricing_type", "effective_from"),
    )
    op.create_table(
        "quarantine",
        sa.Column("spool_file", sa.String(), nullable=False),
        sa.Column("line_number", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("spool_file", "line_number"),
    )
    op.create_table(
        "recipients",
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("row_number", sa.BigInteger(), nullable=False),
        sa.Column("recipient_key", sa.String(), nullable=False),
        sa.Column("phone_e164", sa.String(), nullable=True),
        sa.Column("country", sa.String(), nullable=True),
        sa.Column("number_type", sa.String(), nullable=True),
        sa.Column("variables_json", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("campaign_id", "row_number"),
    )
    op.create_table(
        "rejects",
        sa.Column("campaign_id", sa.String(), nullable=False),
        sa.Column("row_number", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    with op.batch_alter_table("rejects", schema=None) as batch_op:
        batch_op.create_index("rejects_campaign", ["campaign_id", "row_number"], unique=False)

    op.create_table(
        "service_fees",
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("fee_points", pipeline.store.schema.Money(precision=18, scale=6), nullable=False),
        sa.Column("effective_from", pipeline.store.schema.Day(), nullable=False),
        sa.Column("source", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("channel", "effective_from"),
    )
    op.create_table(
        "spool_files",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("ingested_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "suppressions",
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("address", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=True),
        sa.Column("since", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel", "address"),
    )

    op.create_table(
        "unmatched_events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("provider_message_id", sa.String(), nullable=False),
        sa.Column("message_id", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error_code", sa.String(), nullable=True),
        sa.Column("error_title", sa.Text(), nullable=True),
        sa.Column("category", sa.String(), nullable=True),
        sa.Column("pricing_type", sa.String(), nullable=True),
        sa.Column("recipient", sa.String(), nullable=True),
        sa.Column("occurred_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=False),
        sa.Column("received_at", pipeline.store.schema.UtcTimestamp(timezone=True), nullable=True),
        sa.Column("raw_json", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("unmatched_events_key", "unmatched_events", ["occurred_at", "event_id"], unique=True)
    op.execute(MESSAGE_STATUS)

def downgrade() -> None:
    op.execute("DROP VIEW message_status")
    op.drop_index("unmatched_events_key", table_name="unmatched_events")
    op.drop_table("unmatched_events")

    op.drop_table("suppressions")
    op.drop_table("spool_files")
    op.drop_table("service_fees")
    with op.batch_alter_table("rejects", schema=None) as batch_op:
        batch_op.drop_index("rejects_campaign")

    op.drop_table("rejects")
    op.drop_table("recipients")
    op.drop_table("quarantine")
    op.drop_table("pricing_rules")
    op.drop_table("prices")
    op.drop_table("price_tiers")
    op.drop_table("points_ledger")
    with op.batch_alter_table("outbox_transitions", schema=None) as batch_op:
        batch_op.drop_index("transitions_message")

    op.drop_table("outbox_transitions")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("outbox_recipient")
        batch_op.drop_index("outbox_recent")
        batch_op.drop_index("outbox_provider_id")
        batch_op.drop_index("outbox_lane")
        batch_op.drop_index("outbox_campaign_seq")

    op.drop_table("outbox")
    op.drop_table("markets")
    op.drop_table("leases")
    with op.batch_alter_table("inbound", schema=None) as batch_op:
        batch_op.drop_index("inbound_sender")

    op.drop_table("inbound")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("events_unlinked")
        batch_op.drop_index("events_message")
        batch_op.drop_index("events_key")

    op.drop_table("events")
    with op.batch_alter_table("cost_estimates", schema=None) as batch_op:
        batch_op.drop_index("cost_estimates_campaign")

    op.drop_table("cost_estimates")
    op.drop_table("campaigns")
    op.drop_table("campaign_control")
    op.drop_table("billing_sync")
    op.drop_table("billing_messages")
    with op.batch_alter_table("billing_groups", schema=None) as batch_op:
        batch_op.drop_index("billing_groups_campaign")

    op.drop_table("billing_groups")
