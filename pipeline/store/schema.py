"""The store's tables, once for both databases (SQLAlchemy Core): what each holds and its keys.

Column types SQLite lacks are mapped in pipeline/store/types.py, so the rest of the code sees one store; the
operator features' tables are in schema_features.py, on the same metadata. Migrations (pipeline/store/migrations/)
create exactly this; a test compares the two.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)

# Day, Money and UtcTimestamp are imported from here by the rest of the code too.
from pipeline.store.types import TS, Day, Money, UtcTimestamp, metadata  # noqa: F401

campaigns = Table(
    "campaigns", metadata,
    Column("campaign_id", String, primary_key=True),
    Column("name", String, nullable=False),
    Column("channel", String, nullable=False),
    Column("template", String, nullable=False),
    Column("category", String, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("spec_json", Text, nullable=False),
)
recipients = Table(
    "recipients", metadata,
    Column("campaign_id", String, primary_key=True),
    Column("row_number", BigInteger, primary_key=True),
    Column("recipient_key", String, nullable=False),  # the address the channel sends to (E.164 for phones)
    Column("phone_e164", String),
    Column("country", String),  # ISO 3166 alpha-2 region of the number
    Column("number_type", String),
    Column("variables_json", Text),
    Column("text", Text),  # the rendered preview text
)
rejects = Table(
    "rejects", metadata,
    Column("campaign_id", String, nullable=False),
    Column("row_number", BigInteger, nullable=False),
    Column("reason", String, nullable=False),
    Column("detail", Text),
    Index("rejects_campaign", "campaign_id", "row_number"),
)
outbox = Table(
    "outbox", metadata,
    Column("message_id", String, primary_key=True),  # uuid5(campaign, recipient, channel): re-runs find it
    Column("campaign_id", String, nullable=False),
    Column("seq", BigInteger, nullable=False),  # send order within the campaign
    Column("recipient_key", String, nullable=False),
    Column("channel", String, nullable=False),
    Column("sender", String, nullable=False),
    Column("country", String),
    Column("category", String),
    Column("payload_json", Text, nullable=False),
    Column("state", String, nullable=False),  # queued | sending | sent | failed | deferred | unknown | withheld
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("provider_message_id", String),
    Column("error_code", String),
    Column("error_detail", Text),
    Column("queued_at", TS, nullable=False),
    Column("sent_at", TS),
    Column("updated_at", TS),
    Column("not_before", TS),  # deferred (e.g. 131049: not before 24 h)
    Column("retryable", Boolean),  # a failure worth `campaign retry-failed`
    Column("timezone", String),  # recipient's IANA zone, for send windows
    Column("est_cost_usd", Money),  # estimated cost, for the budget guard
    Column("segments", Integer),  # SMS parts; the provider's count wins
    Index("outbox_campaign_seq", "campaign_id", "seq", unique=True),
    # The dispatcher's pages: a sender's queued messages in send order.
    Index("outbox_lane", "campaign_id", "sender", "state", "seq"),
    Index("outbox_provider_id", "provider_message_id"),
    # A channel's sends since a time, holding what the frequency cap filters and counts (read without the table).
    Index("outbox_recent", "channel", "sent_at", "category", "state", "recipient_key", "campaign_id",
          sqlite_where=text("sent_at IS NOT NULL"), postgresql_where=text("sent_at IS NOT NULL")),
    Index("outbox_recipient", "recipient_key"),
)
# The outbox's sends of each closed hour per channel, in columns: what the frequency cap counts, kept so that a
# week of sends is read as a few hundred compressed blobs instead of millions of index entries (migration 0012,
# pipeline/audience/send_history.py). Triggers on the outbox delete an hour's blob whenever a send of it changes.
send_history = Table(
    "send_history", metadata,
    Column("hour", String, primary_key=True),  # 'YYYY-MM-DD HH', UTC
    Column("channel", String, primary_key=True),
    Column("sends", BigInteger, nullable=False),
    Column("data", LargeBinary, nullable=False),  # Arrow IPC (zstd): number, other, category, campaign_id
    Column("version", String),  # new each time the blob is stored (migration 0013; NULL: stored before it)
)
# The cap's counts per recipient over the closed hours of its window, kept once per cap with the versions of the
# blobs they were counted from (migration 0013, pipeline/audience/send_history.py): used only while those blobs are
# all still the current ones.
send_history_sums = Table(
    "send_history_sums", metadata,
    Column("cap", String, primary_key=True),  # channels, categories and left-out campaigns the counts are for
    Column("blobs", String, nullable=False),  # digest of the (hour, channel, version) counted
    Column("campaigns", Text, nullable=False),  # JSON: channel -> campaigns the blobs hold (who can be left out)
    Column("data", LargeBinary, nullable=False),  # Arrow IPC (zstd): number, other, sends
)
# Every transition of every message, appended in the same transaction as the outbox update.
outbox_transitions = Table(
    "outbox_transitions", metadata,
    Column("campaign_id", String, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("state", String, nullable=False),
    Column("error_code", String),
    Column("changed_at", TS, nullable=False),
    Index("transitions_message", "campaign_id", "seq"),
)
events = Table(
    "events", metadata,
    # Ingest order: reports fold new receipts past a watermark of it (append-only table).
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("event_id", String, nullable=False),  # hash of the normalised receipt: replays add nothing
    Column("provider", String, nullable=False),
    Column("provider_message_id", String, nullable=False),
    Column("message_id", String),
    Column("status", String, nullable=False),  # sent | delivered | read | failed
    Column("error_code", String),
    Column("error_title", Text),
    Column("category", String),
    Column("pricing_type", String),
    Column("recipient", String),
    Column("occurred_at", TS, nullable=False),
    Column("received_at", TS),
    Column("raw_json", Text),
    # Idempotence, and every lookup by message: keyed by message first, so an ingest that writes its batch sorted
    # by message id touches each page of the index once, not at random places (migration 0009). Receipts naming no
    # message (Messenger's watermarks) are unique by their id alone.
    Index("events_key", "message_id", "event_id", unique=True),
    Index("events_unnamed_key", "event_id", unique=True, sqlite_where=text("message_id IS NULL"),
          postgresql_where=text("message_id IS NULL")),
    # Only receipts still to be linked to a message by the provider's id (pipeline/receipts/links.py).
    Index("events_unlinked", "provider_message_id", sqlite_where=text("message_id IS NULL"),
          postgresql_where=text("message_id IS NULL")),
)
# Signed receipts that name no message of the outbox (yet): kept apart, never counted. Each ingest moves those
# whose message has since appeared into `events` (pipeline/receipts/unmatched.py).
unmatched_events = Table(
    "unmatched_events", metadata,
    *(Column(c.name, c.type, nullable=c.nullable, primary_key=c.primary_key, autoincrement=c.autoincrement)
      for c in events.columns),
    Index("unmatched_events_key", "occurred_at", "event_id", unique=True),
)
inbound = Table(
    "inbound", metadata,
    Column("event_id", String, primary_key=True),
    Column("provider", String, nullable=False),
    Column("sender", String, nullable=False),
    Column("text", Text),
    Column("occurred_at", TS, nullable=False),
    Column("raw_json", Text),
    Index("inbound_sender", "provider", "sender"),
)
quarantine = Table(
    "quarantine", metadata,
    Column("spool_file", String, primary_key=True),
    Column("line_number", BigInteger, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("raw", Text),
)
spool_files = Table(
    "spool_files", metadata,
    Column("name", String, primary_key=True),
    Column("bytes", BigInteger, nullable=False),
    Column("events", BigInteger, nullable=False),
    Column("ingested_at", TS, nullable=False),
)
suppressions = Table(
    "suppressions", metadata,
    Column("channel", String, primary_key=True),
    Column("address", String, primary_key=True),
    Column("reason", String, nullable=False),
    Column("source", String),
    Column("since", TS, nullable=False),
)
prices = Table(
    "prices", metadata,
    Column("channel", String, primary_key=True),
    Column("market", String, primary_key=True),
    Column("category", String, primary_key=True),
    Column("platform_fee_usd", Money, nullable=False),
    Column("service_fee_usd", Money, nullable=False),
    Column("effective_from", Day, primary_key=True),
    Column("source", Text),
)
markets = Table(
    "markets", metadata,
    Column("channel", String, primary_key=True),
    Column("region", String, primary_key=True),  # ISO 3166 alpha-2, as libphonenumber names it
    Column("market", String, nullable=False),
    # Meta's own market for a country it prices on its own, used once a card has it (else `market`).
    Column("own_market", String),
)
pricing_rules = Table(
    "pricing_rules", metadata,
    Column("rule", String, nullable=False),
    Column("channel", String, primary_key=True),
    Column("category", String, primary_key=True),
    Column("pricing_type", String, primary_key=True),
    Column("billable", Boolean, nullable=False),
    Column("rate_category", String),
    Column("basis", String, nullable=False),
    Column("tiered", Boolean, nullable=False),
    Column("effective_from", Day, primary_key=True),
    Column("source", Text),
)
service_fees = Table(
    "service_fees", metadata,
    Column("channel", String, primary_key=True),
    Column("fee_points", Money, nullable=False),
    Column("effective_from", Day, primary_key=True),
    Column("source", Text),
)
price_tiers = Table(
    "price_tiers", metadata,
    Column("channel", String, primary_key=True),
    Column("market", String, primary_key=True),
    Column("category", String, primary_key=True),
    Column("from_messages", BigInteger, primary_key=True),
    Column("to_messages", BigInteger),
    Column("platform_fee_usd", Money, nullable=False),
    Column("effective_from", Day, primary_key=True),
    Column("source", Text),
)
# Receipts folded per message (the current status as billing reads it), kept in step by pipeline/costs/billing.py.
billing_messages = Table(
    "billing_messages", metadata,
    Column("message_id", String, primary_key=True),
    Column("status_rank", SmallInteger),
    Column("billed_category", String),
    Column("pricing_type", String),
    Column("receipt_error", String),
    Column("error_title", Text),
    Column("delivered_at", TS),
)
billing_sync = Table(
    "billing_sync", metadata,
    Column("source", String, primary_key=True),
    Column("position", BigInteger),
    Column("row_count", BigInteger),
    Column("fingerprint", String),
    Column("synced_at", TS),
)
cost_estimates = Table(
    "cost_estimates", metadata,
    Column("campaign_id", String, nullable=False),
    Column("estimated_at", TS, nullable=False),
    Column("priced_on", Day, nullable=False),
    Column("channel", String),
    Column("country", String),
    Column("market", String),
    Column("category", String),
    Column("pricing_type", String),
    Column("messages", BigInteger),
    Column("segments", BigInteger),
    Column("platform_fee_usd", Money),
    Column("service_fee_usd", Money),
    Column("total_usd", Money),
    Column("unpriced", BigInteger),
    Index("cost_estimates_campaign", "campaign_id", "estimated_at"),
)
points_ledger = Table(
    "points_ledger", metadata,
    Column("entry_id", String, primary_key=True),
    Column("booked_at", TS, nullable=False),
    Column("kind", String, nullable=False),
    Column("bucket", String, nullable=False),
    Column("points", Money, nullable=False),
    Column("campaign_id", String),
    Column("note", Text),
)
# A campaign's messages counted per price key (outbox + billing_messages), kept in step by billing.py.
billing_groups = Table(
    "billing_groups", metadata,
    Column("campaign_id", String, nullable=False),
    Column("channel", String),
    Column("country", String),
    Column("category", String),
    Column("sent_category", String),
    Column("pricing_type", String),
    Column("price_day", Day),
    Column("error_code", String),
    Column("error_title", Text),
    Column("sent", BigInteger),
    Column("delivered", BigInteger),
    Column("read", BigInteger),
    Column("failed", BigInteger),
    Column("sent_segments", BigInteger),
    Index("billing_groups_campaign", "campaign_id"),
)
# Campaigns whose billing_groups must be counted again: marked by triggers on outbox in the writer's own
# transaction (migration 0002) and by billing.py for receipts; cleared by billing.py once it has counted them.
billing_changes = Table(
    "billing_changes", metadata,
    Column("campaign_id", String, primary_key=True),
)
# Control state that every process and machine reaching the store shares.
# A lease: who holds a named thing (a campaign's run) until when; renewed while the holder lives.
leases = Table(
    "leases", metadata,
    Column("name", String, primary_key=True),  # campaign:<id>
    Column("holder", String, nullable=False),  # a random token of the holding process
    Column("pid", Integer),
    Column("host", String),
    Column("flow_run_id", String),
    Column("flow_run_name", String),
    Column("since", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    # When the run checked the frequency cap before sending (pipeline/dispatch/cap_at_send.py); null until then.
    Column("cap_checked_at", TS),
)
# The operator's pause flag of a campaign and the running dispatch's last progress.
campaign_control = Table(
    "campaign_control", metadata,
    Column("campaign_id", String, primary_key=True),
    Column("paused_at", TS),
    Column("status_json", Text),
    Column("status_at", TS),
)

# The tables of the operator's features (templates and numbers, replies, experiments, the personalisation cache,
# approvals, test sends) live in schema_features.py, on the same metadata: imported here so that every reader of
# `metadata` (migrations, bulk loads, the schema test) sees them.
from pipeline.store import schema_features  # noqa: E402,F401
