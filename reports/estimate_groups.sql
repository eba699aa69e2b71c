-- The forecast of one campaign before sending: every outbox message (any state) as if delivered, at the
-- template's current category, its SMS parts, and the windows known at $at from the recipients' inbound
-- messages: a free entry point (a click-to-WhatsApp ad referral within 72 h, docs/providers.md 1.10 — approximated
-- from the inbound message, as the business reply that opens it is not recorded) or a customer-service
-- window (any inbound message within 24 h). Feeds reports/price_groups.sql.
-- Runs in an in-memory DuckDB over what pipeline/costs/costing.py reads from the store (no message-level read
-- of the whole campaign):
--   counts     the campaign's outbox counted in the store per channel, country, category (messages, segments)
--   inbound    the inbound messages of the 72 h before $at
--   in_window  the campaign's outbox rows whose recipient wrote in those 72 h (channel, country, category,
--              recipient_key, segments)
WITH windows AS (
    SELECT
        provider AS channel,
        '+' || regexp_replace(sender, '[^0-9]', '', 'g') AS address,
        bool_or(json_extract(raw_json, '$.referral') IS NOT NULL) AS entry_point,
        bool_or(occurred_at > $at - INTERVAL 24 HOUR) AS service_window
    FROM inbound
    WHERE occurred_at <= $at AND occurred_at > $at - INTERVAL 72 HOUR
    GROUP BY ALL
),
free AS (
    SELECT o.channel, o.country, o.category,
        CASE WHEN w.entry_point THEN 'free_entry_point' ELSE 'free_customer_service' END AS pricing_type,
        count(*) AS messages,
        sum(o.segments) AS segments
    FROM in_window AS o
    JOIN windows AS w ON w.channel = o.channel AND w.address = o.recipient_key
    WHERE w.entry_point OR w.service_window
    GROUP BY ALL
),
regular AS (
    -- Every other message of the campaign.
    SELECT c.channel, c.country, c.category, 'regular' AS pricing_type,
        c.messages - coalesce(sum(f.messages), 0) AS messages,
        c.segments - coalesce(sum(f.segments), 0) AS segments
    FROM counts AS c
    LEFT JOIN free AS f ON f.channel = c.channel AND f.country IS NOT DISTINCT FROM c.country
        AND f.category IS NOT DISTINCT FROM c.category
    GROUP BY c.channel, c.country, c.category, c.messages, c.segments
)
SELECT
    CASE WHEN channel = 'chatapp' THEN $chatapp_channel ELSE channel END AS channel,
    country,
    category,
    category AS sent_category,
    pricing_type,
    CAST($on AS DATE) AS price_day,
    CAST(sum(messages) AS BIGINT) AS messages,
    CAST(sum(messages) AS BIGINT) AS sent,
    CAST(sum(messages) AS BIGINT) AS delivered,
    CAST(sum(segments) AS BIGINT) AS sent_segments
FROM (SELECT * FROM free UNION ALL SELECT * FROM regular WHERE messages > 0)
GROUP BY ALL
