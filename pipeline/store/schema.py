"""The store's tables, once for both databases (SQLAlchemy Core): what each holds and its keys.

Types that SQLite lacks are mapped here, so the rest of the code sees one store: timestamps are
timezone-aware UTC datetimes (SQLite keeps them as ISO text, which sorts in time order), money is
an exact Decimal (SQLite keeps its text). Migrations (pipeline/store/migrations/) create exactly
this; a test compares the two.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect


class UtcTimestamp(TypeDecorator[datetime]):
    """A UTC instant: `timestamptz` on PostgreSQL, 'YYYY-MM-DD HH:MM:SS.ffffff' text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(26))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store keeps UTC instants")
        value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f") if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Money(TypeDecorator[Decimal]):
    """An exact amount: NUMERIC on PostgreSQL, its decimal text on SQLite (which has no decimal type)."""

    impl = Numeric(18, 6)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(40))
        return dialect.type_descriptor(Numeric(18, 6))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = value if isinstance(value, Decimal) else Decimal(str(value))
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(str(value))


class Day(TypeDecorator[date]):
    """A calendar day: DATE on PostgreSQL, 'YYYY-MM-DD' text on SQLite."""

    impl = Date
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        return dialect.type_descriptor(String(10)) if dialect.name == "sqlite" else dialect.type_descriptor(Date())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            value = date.fromisoformat(value)
        return value.isoformat() if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> date | None:
        if value is None:
            return None
        return date.fromisoformat(value) if isinstance(value, str) else value


metadata = MetaData()
TS = UtcTimestamp

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
    Column("state", String, nullable=False),  # queued | sending | sent | failed | deferred | unknown
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
    Index("outbox_recent", "channel", "sent_at"),
    Index("outbox_recipient", "recipient_key"),
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
)
# The operator's pause flag of a campaign and the running dispatch's last progress.
campaign_control = Table(
    "campaign_control", metadata,
    Column("campaign_id", String, primary_key=True),
    Column("paused_at", TS),
    Column("status_json", Text),
    Column("status_at", TS),
)
# Templates and sending numbers as the provider knows them (pipeline/channels/templates.py): synced from its API
# (`campaign templates sync`), kept current by its webhooks (receipts ingest), read before and during a send.
# `account` is the WhatsApp Business Account id (Meta) or the CustSpaceId (Chat App, '' for a direct customer).
provider_templates = Table(
    "provider_templates", metadata,
    Column("provider", String, primary_key=True),  # whatsapp | chatapp
    Column("account", String, primary_key=True),
    Column("name", String, primary_key=True),
    Column("language", String, primary_key=True),
    Column("template_id", String),  # Meta's id / Chat App's TemplateCode
    Column("status", String, nullable=False),  # APPROVED, PENDING, REJECTED, PAUSED, DISABLED, DELETED, ...
    Column("category", String),  # MARKETING | UTILITY | AUTHENTICATION, as the provider has it now
    Column("previous_category", String),
    Column("components_json", Text),  # the provider's components, as it lists them
    Column("quality", String),  # GREEN | YELLOW | RED | UNKNOWN
    Column("reason", Text),  # the provider's reason for the last status (rejection, pause, ...)
    Column("changed_at", TS),  # the provider's time of the last change we know of
    Column("synced_at", TS),
    Column("deleted_at", TS),  # a deleted name cannot be created again for 30 days
)
# Every change of a template: status, category and quality changes (sync or webhook) and our own submissions
# (kind `create` / `edit` / `delete`), which the edit limits count.
template_changes = Table(
    "template_changes", metadata,
    Column("change_id", Integer, primary_key=True, autoincrement=True),
    Column("provider", String, nullable=False),
    Column("account", String, nullable=False),
    Column("name", String, nullable=False),
    Column("language", String, nullable=False),
    Column("kind", String, nullable=False),  # status | category | quality | create | edit | delete
    Column("old_value", String),
    Column("new_value", String),
    Column("source", String, nullable=False),  # sync | webhook | submit
    Column("at", TS, nullable=False),
    Index("template_changes_name", "provider", "account", "name", "at"),
)
provider_numbers = Table(
    "provider_numbers", metadata,
    Column("provider", String, primary_key=True),
    Column("account", String, primary_key=True),
    Column("phone_number_id", String, primary_key=True),  # Meta's id; Chat App: the number itself
    Column("display_phone_number", String),
    Column("verified_name", String),
    Column("status", String),  # CONNECTED, FLAGGED, RESTRICTED, ...
    Column("quality_rating", String),  # GREEN | YELLOW | RED | UNKNOWN
    Column("messaging_limit_tier", String),  # TIER_250, TIER_2K, ..., TIER_UNLIMITED
    Column("code_verification_status", String),
    Column("changed_at", TS),
    Column("synced_at", TS),
)
# Every inbound message as a reply: a text reply or a button tap, the message and campaign it answers (by the
# provider's context id, else the last message sent to the sender within the link window; NULL when none),
# whether it opted out (STOP, an opt-out button). Filled by receipts ingest (pipeline/receipts/replies.py).
replies = Table(
    "replies", metadata,
    Column("event_id", String, primary_key=True),  # the inbound row's
    Column("channel", String, nullable=False),
    Column("address", String),  # as the outbox writes recipients (E.164, user id, e-mail)
    Column("kind", String, nullable=False),  # reply | tap
    Column("payload", Text),  # a tap's button payload
    Column("context_id", String),  # the provider's id of the message answered, when the provider says
    Column("opt_out", Boolean, nullable=False),
    Column("occurred_at", TS, nullable=False),
    Column("linked", Boolean, nullable=False),  # the link was looked for (message_id NULL: none was found)
    Column("message_id", String),
    Column("campaign_id", String),
    Index("replies_campaign", "campaign_id"),
    Index("replies_unlinked", "linked"),
)
# A campaign's header file, uploaded once through the provider's media endpoint: its id, by file digest
# (pipeline/channels/whatsapp_media.py).
media_uploads = Table(
    "media_uploads", metadata,
    Column("campaign_id", String, primary_key=True),
    Column("sha256", String, primary_key=True),
    Column("media_id", String, nullable=False),
    Column("file_name", String),
    Column("uploaded_at", TS, nullable=False),
)
# Experiments (issue 20, migration 0005): every accepted recipient's arm, the holdout included (the outbox never
# holds it); outcomes imported or read from the audience; a model's answers by input hash (a re-run calls nothing).
experiment_arms = Table(
    "experiment_arms", metadata,
    Column("campaign_id", String, primary_key=True),
    Column("recipient_key", String, primary_key=True),
    Column("arm", String, nullable=False),  # a variant's name, `control`, or `holdout`
    Column("country", String),
    Column("assigned_at", TS, nullable=False),
)
conversions = Table(
    "conversions", metadata,
    Column("campaign_id", String, primary_key=True),
    Column("recipient_key", String, primary_key=True),
    Column("converted_at", TS, primary_key=True),
    Column("value", Float),
    Column("source", String, nullable=False),  # import:<file name> | audience
)
generated_values = Table(
    "generated_values", metadata,
    Column("input_hash", String, primary_key=True),  # sha256 of model, prompt and settings
    Column("value", Text),  # the model's answer as it came (checked on every use)
    Column("model", String, nullable=False),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("created_at", TS, nullable=False),
    # The checks' outcome for `value`: check_key names the checks and their settings, refusal their reason
    # (NULL: it passed); a re-run under the same key reads it instead of checking again (migration 0010).
    Column("check_key", String),
    Column("refusal", String),
)
# Approvals before sending (flows/approval.py): each request and its outcome, kept with the campaign.
campaign_approvals = Table(
    "campaign_approvals", metadata,
    Column("request_id", String, primary_key=True),  # <flow run id>:<attempt>
    Column("campaign_id", String, nullable=False),
    Column("flow_run_id", String),
    Column("origin", String),  # manual | scheduled | upload
    Column("requested_by", String),  # who started or uploaded the run, when known
    Column("requested_at", TS, nullable=False),
    Column("expires_at", TS),
    Column("messages", BigInteger),  # queued when it was asked
    Column("max_seq", BigInteger),  # the approval covers the outbox up to this seq
    Column("estimate_usd", Money),
    Column("decision", String, nullable=False),  # pending | approved | rejected | refused | expired
    Column("approver", String),
    Column("comment", Text),
    Column("decided_at", TS),
    Index("campaign_approvals_campaign", "campaign_id", "requested_at"),
)
# Test sends (issue 19, migration 0006): audience rows rendered as the campaign would, sent to the team's own
# numbers or addresses. Never in the outbox, so never in the campaign's counts, reports or caps; costs apart.
test_sends = Table(
    "test_sends", metadata,
    Column("test_id", String, primary_key=True),
    Column("message_id", String, primary_key=True),
    Column("campaign_id", String, nullable=False),
    Column("row_number", BigInteger, nullable=False),  # the audience row rendered
    Column("seed", String, nullable=False),  # the internal number or address it went to
    Column("channel", String, nullable=False),
    Column("sender", String),
    Column("country", String),
    Column("category", String),
    Column("payload_json", Text, nullable=False),
    Column("status", String, nullable=False),  # sent | failed
    Column("provider_message_id", String),
    Column("error_code", String),
    Column("error_detail", Text),
    Column("cost_usd", Money),
    Column("started_by", String),
    Column("sent_at", TS, nullable=False),
    Index("test_sends_campaign", "campaign_id"),
)
# Campaigns the provider's template stopped whose run has ended (issue 17, migration 0008): what to run again once the
# registry has the template APPROVED again (pipeline/dispatch/template_resume.py, flows/reapproval.py). One row per
# campaign, the latest stop; `continued_at` / `flow_run_id` once its continuation was scheduled.
template_waits = Table(
    "template_waits", metadata,
    Column("campaign_id", String, primary_key=True),
    Column("provider", String, nullable=False),
    Column("account", String, nullable=False),
    Column("name", String, nullable=False),
    Column("language", String, nullable=False),
    Column("reason", Text),
    Column("deployment_id", String),  # NULL: the run was not from a deployment (nothing can start it by itself)
    Column("parameters_json", Text, nullable=False),
    Column("stopped_at", TS, nullable=False),
    Column("continued_at", TS),
    Column("flow_run_id", String),
)
