-- The DuckDB ledger schema of the version before the shared store (for tests of campaign db import).

CREATE TABLE IF NOT EXISTS campaigns (
    campaign_id VARCHAR PRIMARY KEY,
    name        VARCHAR NOT NULL,
    channel     VARCHAR NOT NULL,
    template    VARCHAR NOT NULL,
    category    VARCHAR NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    spec_json   VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    campaign_id    VARCHAR NOT NULL,
    row_number     BIGINT NOT NULL,
    recipient_key  VARCHAR NOT NULL,   -- the address the channel sends to (E.164 for phones)
    phone_e164     VARCHAR,
    country        VARCHAR,            -- ISO 3166 alpha-2 region of the number
    number_type    VARCHAR,
    variables_json VARCHAR,
    text           VARCHAR,            -- the rendered preview text
    PRIMARY KEY (campaign_id, row_number)
);
CREATE TABLE IF NOT EXISTS rejects (
    campaign_id VARCHAR NOT NULL,
    row_number  BIGINT NOT NULL,
    reason      VARCHAR NOT NULL,
    detail      VARCHAR
);
CREATE TABLE IF NOT EXISTS outbox (
    message_id          VARCHAR PRIMARY KEY,  -- uuid5(campaign, recipient, channel): re-runs find it
    campaign_id         VARCHAR NOT NULL,
    seq                 BIGINT,               -- send order within the campaign; ranges of it are claimed
    recipient_key       VARCHAR NOT NULL,
    channel             VARCHAR NOT NULL,
    sender              VARCHAR NOT NULL,
    country             VARCHAR,
    category            VARCHAR,
    payload_json        VARCHAR NOT NULL,
    state               VARCHAR NOT NULL,     -- queued | sending | sent | failed | deferred | unknown
    attempts            INTEGER NOT NULL DEFAULT 0,
    provider_message_id VARCHAR,
    error_code          VARCHAR,
    error_detail        VARCHAR,
    queued_at           TIMESTAMPTZ NOT NULL,
    sent_at             TIMESTAMPTZ,
    updated_at          TIMESTAMPTZ,
    not_before          TIMESTAMPTZ,          -- deferred (e.g. 131049: not before 24 h)
    retryable           BOOLEAN,              -- a failure worth `campaign retry-failed`
    timezone            VARCHAR,              -- recipient's IANA zone, for quiet hours
    est_cost_usd        DECIMAL(12, 6)        -- estimated cost, for the budget guard
);
-- Every transition of every message, appended in the same group commit as the outbox update:
-- the audit trail of what happened to a message and when.
CREATE TABLE IF NOT EXISTS outbox_transitions (
    campaign_id VARCHAR NOT NULL,
    seq         BIGINT NOT NULL,
    state       VARCHAR NOT NULL,
    error_code  VARCHAR,
    changed_at  TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    -- Hash of the normalised receipt: ingest (one at a time, pipeline/receipts/ingest.py) skips ids already
    -- here, so replays add nothing. No key index: maintaining it was a third of a 1M-event ingest
    -- and every checkpoint rewrites it whole (duckdb#24848).
    event_id            VARCHAR NOT NULL,
    provider            VARCHAR NOT NULL,
    provider_message_id VARCHAR NOT NULL,
    message_id          VARCHAR,
    status              VARCHAR NOT NULL,     -- sent | delivered | read | failed
    error_code          VARCHAR,
    error_title         VARCHAR,
    category            VARCHAR,
    pricing_type        VARCHAR,
    recipient           VARCHAR,
    occurred_at         TIMESTAMPTZ NOT NULL,
    received_at         TIMESTAMPTZ,
    raw_json            VARCHAR
);
-- Signed receipts that name no message of the outbox (yet): kept apart, never counted. Each ingest moves those
-- whose message has since appeared into `events` (pipeline/receipts/unmatched.py).
CREATE TABLE IF NOT EXISTS unmatched_events AS SELECT * FROM events WHERE false;  -- the same columns
CREATE TABLE IF NOT EXISTS inbound (
    event_id    VARCHAR PRIMARY KEY,
    provider    VARCHAR NOT NULL,
    sender      VARCHAR NOT NULL,
    text        VARCHAR,
    occurred_at TIMESTAMPTZ NOT NULL,
    raw_json    VARCHAR
);
CREATE TABLE IF NOT EXISTS quarantine (
    spool_file  VARCHAR NOT NULL,
    line_number BIGINT NOT NULL,
    reason      VARCHAR NOT NULL,
    raw         VARCHAR,
    PRIMARY KEY (spool_file, line_number)
);
CREATE TABLE IF NOT EXISTS spool_files (
    name        VARCHAR PRIMARY KEY,
    bytes       BIGINT NOT NULL,
    events      BIGINT NOT NULL,
    ingested_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS suppressions (
    channel VARCHAR NOT NULL,
    address VARCHAR NOT NULL,
    reason  VARCHAR NOT NULL,
    source  VARCHAR,
    since   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (channel, address)
);
CREATE TABLE IF NOT EXISTS prices (
    channel          VARCHAR NOT NULL,
    market           VARCHAR NOT NULL,
    category         VARCHAR NOT NULL,
    platform_fee_usd DECIMAL(12, 6) NOT NULL,
    service_fee_usd  DECIMAL(12, 6) NOT NULL,
    effective_from   DATE NOT NULL,
    source           VARCHAR,
    PRIMARY KEY (channel, market, category, effective_from)
);
CREATE TABLE IF NOT EXISTS markets (
    channel VARCHAR NOT NULL,
    region  VARCHAR NOT NULL,   -- ISO 3166 alpha-2, as libphonenumber names it
    market  VARCHAR NOT NULL,
    PRIMARY KEY (channel, region)
);
-- The current delivery status of each message, whatever order its receipts arrived in:
-- failed is terminal, otherwise the highest of read > delivered > sent.
CREATE OR REPLACE VIEW message_status AS
SELECT
    message_id,
    any_value(provider_message_id) AS provider_message_id,
    CASE WHEN bool_or(status = 'failed') THEN 'failed'
         WHEN bool_or(status = 'read') THEN 'read'
         WHEN bool_or(status = 'delivered') THEN 'delivered'
         ELSE 'sent' END AS status,
    max(error_code) FILTER (WHERE status = 'failed') AS error_code,
    max(category) AS billed_category,
    max(pricing_type) AS pricing_type,
    min(occurred_at) FILTER (WHERE status IN ('delivered', 'read')) AS delivered_at,
    max(occurred_at) AS last_event_at
FROM events
WHERE message_id IS NOT NULL
GROUP BY message_id;
-- Costs (pipeline/costs/pricing.py, billing.py, costs.py, points.py): pricing rules, fees and tiers as dated data,
-- SMS parts per message, receipts folded per message and counted per campaign and price key, estimates, points.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS segments INTEGER;  -- SMS parts; the provider's count wins
CREATE TABLE IF NOT EXISTS pricing_rules (
    rule VARCHAR NOT NULL, channel VARCHAR NOT NULL, category VARCHAR NOT NULL, pricing_type VARCHAR NOT NULL,
    billable BOOLEAN NOT NULL, rate_category VARCHAR, basis VARCHAR NOT NULL, tiered BOOLEAN NOT NULL,
    effective_from DATE NOT NULL, source VARCHAR, PRIMARY KEY (channel, category, pricing_type, effective_from)
);
CREATE TABLE IF NOT EXISTS service_fees (
    channel VARCHAR NOT NULL, fee_points DECIMAL(12, 2) NOT NULL, effective_from DATE NOT NULL, source VARCHAR,
    PRIMARY KEY (channel, effective_from)
);
CREATE TABLE IF NOT EXISTS price_tiers (
    channel VARCHAR NOT NULL, market VARCHAR NOT NULL, category VARCHAR NOT NULL, from_messages BIGINT NOT NULL,
    to_messages BIGINT, platform_fee_usd DECIMAL(12, 6) NOT NULL, effective_from DATE NOT NULL, source VARCHAR,
    PRIMARY KEY (channel, market, category, effective_from, from_messages)
);
CREATE TABLE IF NOT EXISTS billing_messages (  -- message_status as a table, one row per message_id
    message_id VARCHAR NOT NULL, status_rank TINYINT, billed_category VARCHAR, pricing_type VARCHAR,
    receipt_error VARCHAR, error_title VARCHAR, delivered_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS billing_sync (
    source VARCHAR PRIMARY KEY, position BIGINT, row_count BIGINT, fingerprint VARCHAR, synced_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS cost_estimates (
    campaign_id VARCHAR NOT NULL, estimated_at TIMESTAMPTZ NOT NULL, priced_on DATE NOT NULL,
    channel VARCHAR, country VARCHAR, market VARCHAR, category VARCHAR, pricing_type VARCHAR,
    messages BIGINT, segments BIGINT, platform_fee_usd DECIMAL(18, 6), service_fee_usd DECIMAL(18, 6),
    total_usd DECIMAL(18, 6), unpriced BIGINT
);
CREATE TABLE IF NOT EXISTS points_ledger (
    entry_id VARCHAR PRIMARY KEY, booked_at TIMESTAMPTZ NOT NULL, kind VARCHAR NOT NULL, bucket VARCHAR NOT NULL,
    points DECIMAL(18, 2) NOT NULL, campaign_id VARCHAR, note VARCHAR
);
CREATE TABLE IF NOT EXISTS billing_groups (  -- outbox + billing_messages counted per campaign and price key
    campaign_id VARCHAR NOT NULL, channel VARCHAR, country VARCHAR, category VARCHAR, sent_category VARCHAR,
    pricing_type VARCHAR, price_day DATE, error_code VARCHAR, error_title VARCHAR,
    sent BIGINT, delivered BIGINT, "read" BIGINT, failed BIGINT, sent_segments BIGINT
);
-- Meta's own market for a country it prices on its own, used once a card has it (else `market`, its group).
ALTER TABLE markets ADD COLUMN IF NOT EXISTS own_market VARCHAR;
