-- Cost report of one campaign: one row per channel x country x category.
-- Parameter: $campaign_id. Money stays DECIMAL(18, 6) (exact sums of the price rows); round only to show.
--
-- Rules (see pipeline/costs.py):
--   sent       outbox rows in state 'sent' (the provider accepted them)
--   delivered  current receipt status delivered or read (read implies delivered)
--   read       current receipt status read
--   failed     refused at send (outbox 'failed') or failed after acceptance (receipt 'failed')
--   platform   per delivered message, at the price of its market and the category Meta billed, from
--              the price row in force on the day it was sent; free_* pricing types pay nothing
--   service    per sent message, from the same price row
WITH msg AS (
    SELECT
        o.message_id,
        o.channel,
        o.country,
        o.state,
        s.status,
        -- Meta may re-categorise a template; bill what the receipts say, else what we sent.
        -- (Receipts spell 'authentication-international' with a hyphen or an underscore.)
        coalesce(replace(s.billed_category, '-', '_'), o.category) AS category,
        coalesce(s.pricing_type, 'regular') AS pricing_type,
        -- Price day in UTC, so the report does not depend on the session's time zone.
        CAST(timezone('UTC', coalesce(o.sent_at, s.delivered_at, o.queued_at)) AS DATE) AS price_day
    FROM outbox AS o
    LEFT JOIN message_status AS s USING (message_id)
    WHERE o.campaign_id = $campaign_id
),
with_market AS (
    SELECT msg.*, mk.market
    FROM msg
    LEFT JOIN markets AS mk ON mk.channel = msg.channel AND mk.region = msg.country
),
priced AS (
    -- ASOF picks, per message, the price row with the greatest effective_from <= price_day:
    -- an old campaign is priced by the card of its day, not today's.
    SELECT
        m.*,
        p.platform_fee_usd AS unit_platform_fee,
        p.service_fee_usd AS unit_service_fee,
        m.status IN ('delivered', 'read') AS is_delivered,
        m.status IN ('delivered', 'read')
            AND m.pricing_type NOT IN ('free_customer_service', 'free_entry_point') AS pays_platform
    FROM with_market AS m
    ASOF LEFT JOIN prices AS p
        ON p.channel = m.channel
       AND p.market = m.market
       AND p.category = m.category
       AND m.price_day >= p.effective_from
),
grouped AS (
    SELECT
        channel,
        country,
        any_value(market) AS market,
        category,
        count(*) FILTER (WHERE state = 'sent') AS sent,
        count(*) FILTER (WHERE is_delivered) AS delivered,
        count(*) FILTER (WHERE status = 'read') AS "read",
        count(*) FILTER (WHERE state = 'failed' OR status = 'failed') AS failed,
        CAST(coalesce(sum(unit_platform_fee) FILTER (WHERE pays_platform), 0) AS DECIMAL(18, 6))
            AS platform_fee_usd,
        CAST(coalesce(sum(unit_service_fee) FILTER (WHERE state = 'sent'), 0) AS DECIMAL(18, 6))
            AS service_fee_usd,
        -- Messages that should have cost something but found no price row: a gap in the price data.
        count(*) FILTER (WHERE (pays_platform OR state = 'sent') AND unit_platform_fee IS NULL) AS unpriced
    FROM priced
    GROUP BY channel, country, category
)
SELECT
    channel,
    country,
    market,
    category,
    sent,
    delivered,
    "read",
    failed,
    delivered / nullif(sent, 0) AS delivery_rate,
    "read" / nullif(delivered, 0) AS read_rate,
    platform_fee_usd,
    service_fee_usd,
    CAST(platform_fee_usd + service_fee_usd AS DECIMAL(18, 6)) AS total_usd,
    unpriced
FROM grouped
ORDER BY channel, country NULLS LAST, category;
