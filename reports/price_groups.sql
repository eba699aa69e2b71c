-- Prices groups of messages by the dated data: the rule in force (pricing_rules), the card in force (prices),
-- the service fee in force (service_fees). The groups relation (GROUPS below) has with at least: channel, country, category,
-- sent_category, pricing_type, price_day, sent, delivered, sent_segments; its other columns pass through.
-- Money is DECIMAL(18, 6): exact sums of the card's rates; round only to show.
-- Runs in an in-memory DuckDB (pipeline/costs/costing.py) over the groups and the price data read from the store.
WITH g AS (
    SELECT row_number() OVER () AS gid, * FROM {groups}
),
keyed AS (
    -- Each group priced as billed and, where Meta re-categorised it, as it was sent (for the difference).
    SELECT gid, 'billed' AS role, channel, country, category AS price_category, pricing_type, price_day FROM g
    UNION ALL
    SELECT gid, 'as_sent', channel, country, sent_category, pricing_type, price_day FROM g
    WHERE sent_category IS NOT NULL AND sent_category <> category
),
ruled AS (
    -- The most specific rule (exact pricing type, then exact category), then the latest in force that day.
    SELECT k.*, r.rule, r.billable, coalesce(r.rate_category, k.price_category) AS rate_category, r.basis, r.tiered,
        coalesce(mk.market, k.country) AS market_key, mk.own_market
    FROM keyed AS k
    LEFT JOIN pricing_rules AS r
        ON r.channel = k.channel AND r.category IN (k.price_category, '*') AND r.pricing_type IN (k.pricing_type, '*')
       AND r.effective_from <= k.price_day
    LEFT JOIN markets AS mk ON mk.channel = k.channel AND mk.region = k.country
    QUALIFY row_number() OVER (
        PARTITION BY k.gid, k.role ORDER BY r.pricing_type = '*', r.category = '*', r.effective_from DESC) = 1
),
cards AS (
    SELECT DISTINCT channel, effective_from FROM prices
),
carded AS (
    -- The channel's card in force on the price day: a newer card replaces an older one as a whole.
    SELECT ru.*, c.effective_from AS card_from
    FROM ruled AS ru ASOF LEFT JOIN cards AS c ON c.channel = ru.channel AND ru.price_day >= c.effective_from
),
priced AS (
    -- The country's own market if the card prices it (e.g. an imported fuller card), else its mapped market
    -- (for WhatsApp the group; elsewhere the country itself), else the card's Default row.
    SELECT ca.*,
        CASE WHEN po.market IS NOT NULL THEN po.market WHEN pm.market IS NOT NULL THEN pm.market
             WHEN pw.market IS NOT NULL THEN 'Default' ELSE ca.market_key END AS market,
        coalesce(po.platform_fee_usd, pm.platform_fee_usd, pw.platform_fee_usd) AS unit_fee_usd
    FROM carded AS ca
    LEFT JOIN prices AS po
        ON po.channel = ca.channel AND po.effective_from = ca.card_from AND po.market = ca.own_market
       AND po.category = ca.rate_category
    LEFT JOIN prices AS pm
        ON pm.channel = ca.channel AND pm.effective_from = ca.card_from AND pm.market = ca.market_key
       AND pm.category = ca.rate_category
    LEFT JOIN prices AS pw
        ON pw.channel = ca.channel AND pw.effective_from = ca.card_from AND pw.market = '*'
       AND pw.category = ca.rate_category
),
units AS (
    SELECT p.*,
        CASE p.basis WHEN 'delivered' THEN g.delivered WHEN 'sent' THEN g.sent WHEN 'segment' THEN g.sent_segments
             ELSE 0 END AS units,
        CASE p.basis WHEN 'delivered' THEN g.delivered WHEN 'none' THEN 0 ELSE g.sent END AS unit_messages
    FROM priced AS p JOIN g USING (gid)
),
fees AS (
    SELECT g.gid, f.fee_points
    FROM g ASOF LEFT JOIN service_fees AS f ON f.channel = g.channel AND g.price_day >= f.effective_from
)
SELECT
    g.* EXCLUDE (gid),
    b.market,
    b.rule,
    b.billable,
    b.rate_category,
    b.basis,
    b.tiered,
    b.card_from,
    b.unit_fee_usd,
    b.units,
    CAST(CASE WHEN b.billable THEN coalesce(b.units * b.unit_fee_usd, 0) ELSE 0 END AS DECIMAL(18, 6))
        AS platform_fee_usd,
    CAST(g.sent * coalesce(f.fee_points, 0) * 0.0001 AS DECIMAL(18, 6)) AS service_fee_usd,
    CASE WHEN NOT b.billable AND g.pricing_type LIKE 'free%' THEN b.unit_messages ELSE 0 END AS free_window_messages,
    CAST(CASE WHEN NOT b.billable AND g.pricing_type LIKE 'free%' THEN coalesce(b.units * b.unit_fee_usd, 0)
              ELSE 0 END AS DECIMAL(18, 6)) AS free_window_savings_usd,
    CASE WHEN s.gid IS NOT NULL THEN g.sent ELSE 0 END AS recategorised,
    -- Billed minus what the same messages would have cost as sent (unknown if either has no price).
    CAST(CASE WHEN s.gid IS NULL THEN 0
              ELSE (CASE WHEN b.billable THEN b.units * b.unit_fee_usd ELSE 0 END)
                 - (CASE WHEN s.billable THEN s.units * s.unit_fee_usd ELSE 0 END) END AS DECIMAL(18, 6))
        AS recategorisation_cost_usd,
    -- Messages that should cost something but found no rule or no price: a gap in the price data.
    CASE WHEN b.rule IS NULL THEN g.sent
         WHEN b.billable AND b.unit_fee_usd IS NULL THEN b.unit_messages ELSE 0 END AS unpriced
FROM g
JOIN units AS b ON b.gid = g.gid AND b.role = 'billed'
LEFT JOIN units AS s ON s.gid = g.gid AND s.role = 'as_sent'
LEFT JOIN fees AS f ON f.gid = g.gid
