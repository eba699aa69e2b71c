-- The forecast of one campaign before sending: every outbox message (any state) as if delivered, at the
-- template's current category, its SMS parts, and the windows known at $at from the recipients' inbound
-- messages: a free entry point (a click-to-WhatsApp ad referral within 72 h, docs/providers.md 1.10 — approximated
-- from the inbound message, as the business reply that opens it is not recorded) or a customer-service
-- window (any inbound message within 24 h). Feeds reports/price_groups.sql.
WITH windows AS (
    SELECT
        provider AS channel,
        '+' || regexp_replace(sender, '[^0-9]', '', 'g') AS address,
        bool_or(json_extract(raw_json, '$.referral') IS NOT NULL) AS entry_point,
        bool_or(occurred_at > $at - INTERVAL 24 HOUR) AS service_window
    FROM inbound
    WHERE occurred_at <= $at AND occurred_at > $at - INTERVAL 72 HOUR
    GROUP BY ALL
)
SELECT
    CASE WHEN o.channel = 'chatapp'
         THEN coalesce(json_extract_string(c.spec_json, '$.provider.options.channel_type'), 'chatapp')
         ELSE o.channel END AS channel,
    o.country,
    o.category,
    o.category AS sent_category,
    CASE WHEN w.entry_point THEN 'free_entry_point'
         WHEN w.service_window THEN 'free_customer_service'
         ELSE 'regular' END AS pricing_type,
    CAST($on AS DATE) AS price_day,
    count(*) AS messages,
    count(*) AS sent,
    count(*) AS delivered,
    sum(coalesce(o.segments, 1)) AS sent_segments
FROM outbox AS o
LEFT JOIN campaigns AS c ON c.campaign_id = o.campaign_id
LEFT JOIN windows AS w ON w.channel = o.channel AND w.address = o.recipient_key
WHERE o.campaign_id = $campaign_id
GROUP BY ALL
