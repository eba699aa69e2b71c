"""The store's tables for the operator's features, on the same metadata as pipeline/store/schema.py (which imports
this module): templates and numbers as the provider knows them, replies and taps, header files uploaded once,
experiment arms and conversions, the model-written values' cache, approvals, test sends, and campaigns waiting for
a template's re-approval. Each table's migration is named beside it."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, String, Table, Text

from pipeline.store.types import TS, Money, metadata

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
