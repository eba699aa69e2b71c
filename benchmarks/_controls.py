"""`benchmarks/prepare.py --controls`: preparation with the team's controls of issue 19 on a store that has sent a lot.

A seeded send history in the store's outbox (`history` rows, default 10M, over the last 10 days, on WhatsApp, Chat
App and SMS, marketing and utility, sent / unknown / failed) of which about a third goes to numbers of the audience,
so many recipients reach the cap; a 7-day cap of 2 marketing messages across WhatsApp and Chat App; and a `language`
column in the audience (exact codes, base languages, regional variants, other spellings, blanks and unknown codes)
against the template's languages. The cap is read once before the timed runs, which stores the week's closed hours
as the send history and keeps their counts per recipient (`history_build_s`), as the first cap read after an hour
closes does in use (pipeline/audience/send_history.py, send_sums.py); the timed runs, a campaign of their own that
has sent nothing, take those counts as every new campaign's preparation in that hour does. One timed run, in a
fresh process, does what the campaign's prepare task does (pipeline/dispatch/preparation.py): read the capped
recipients from the store, then prepare the audience with them and the languages, in memory.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from pipeline import store
from pipeline.store.bulk import insert_frame

CAP = {"max": 2, "per": "7d", "channels": ["whatsapp", "chatapp"], "categories": ["marketing"]}
LANGUAGES = ["en_US", "en_GB", "es", "es_MX", "pt_BR", "de", "fr", "it"]
# What people write in a language column: exact codes, base languages, other spellings, blanks, unknown codes.
WRITTEN = ["en_US", "en", "en-GB", "es", "es_AR", "pt", "pt-br", "DE", "fr_CA", "it", "", "xx", "zh_CN"]
CHUNK = 250_000
MAX_HISTORY = 50_000_000
MAX_SEED_S = 3_600.0  # seeding the history, at most

_HISTORY = """
SELECT md5(CAST(i AS VARCHAR) || ':h' || $seed) AS message_id,
    'history-' || CAST(i // 1000000 AS VARCHAR) AS campaign_id, i AS seq,
    CASE WHEN u1 < 0.33 THEN $keys[1 + CAST(hash(i, $seed, 9) % $n_keys AS INT)]
         ELSE '+1555' || lpad(CAST(hash(i, $seed, 8) % 3000000 AS VARCHAR), 7, '0') END AS recipient_key,
    CASE WHEN u2 < 0.6 THEN 'whatsapp' WHEN u2 < 0.9 THEN 'chatapp' ELSE 'sms' END AS channel,
    '15550001111' AS sender, 'US' AS country,
    CASE WHEN u3 < 0.7 THEN 'marketing' ELSE 'utility' END AS category, '{}' AS payload_json,
    CASE WHEN u4 < 0.9 THEN 'sent' WHEN u4 < 0.95 THEN 'unknown' ELSE 'failed' END AS state, 1 AS attempts,
    $now - to_microseconds(CAST(hash(i, $seed, 5) % 864000000000 AS BIGINT)) AS queued_at,
    $now - to_microseconds(CAST(hash(i, $seed, 5) % 864000000000 AS BIGINT)) AS sent_at
FROM (SELECT i, (hash(i, $seed, 1) % 1000000) / 1e6 AS u1, (hash(i, $seed, 2) % 1000000) / 1e6 AS u2,
             (hash(i, $seed, 3) % 1000000) / 1e6 AS u3, (hash(i, $seed, 4) % 1000000) / 1e6 AS u4
      FROM range($low, $high) AS t(i))
"""


def audience_keys(corpus: Path, limit: int = 500_000) -> list[str]:
    """Numbers of the audience already written in E.164 (most of it): the history's sends to the audience."""
    phones = pl.scan_csv(corpus, infer_schema=False).select("phone").head(limit * 2).collect()["phone"]
    return phones.filter(phones.str.contains(r"^\+[1-9]\d{6,14}$")).unique(maintain_order=True).head(limit).to_list()


def seed_history(url: str, rows: int, keys: list[str], seed: int) -> dict[str, Any]:
    """Loads `rows` outbox rows sent over the last 10 days into the store at `url` (migrated first)."""
    import duckdb

    from benchmarks.report import without_indexes  # here: the timed worker needs none of what it imports

    if not 0 <= rows <= MAX_HISTORY:
        raise ValueError(f"--history {rows:,}: between 0 and {MAX_HISTORY:,} rows")
    started, now = time.perf_counter(), datetime.now(UTC)
    gen = duckdb.connect()
    gen.execute("SET TimeZone = 'UTC'")
    with store.connect(url) as db, without_indexes(db, ("outbox",)):
        for low in range(0, rows, CHUNK):
            if time.perf_counter() - started > MAX_SEED_S:
                raise TimeoutError(f"seeding the history took more than {MAX_SEED_S:.0f} s (at {low:,} rows)")
            frame = gen.sql(_HISTORY, params={"keys": keys, "n_keys": len(keys), "seed": seed, "now": now,
                                              "low": low, "high": min(rows, low + CHUNK)}).pl()
            with db.write() as conn:
                insert_frame(conn, "outbox", frame)
            if low % 2_000_000 == 0:
                print(f"  history: {low + frame.height:,} rows", flush=True)
        loaded = time.perf_counter()
    with store.connect(url) as db:
        if db.dialect == "postgresql":  # as autovacuum would after a bulk load, before anything is timed
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE outbox")
    gen.close()
    indexed = time.perf_counter()
    return {"history_rows": rows, "seed_s": round(loaded - started, 1), "index_s": round(indexed - loaded, 1),
            **build_history(url)}


def build_history(url: str) -> dict[str, Any]:
    """The cap read once before the timed runs: it stores each closed hour's sends of the week as the send history
    (pipeline/audience/send_history.py), as the first cap read after an hour closes does in use."""
    from pipeline.audience.frequency import capped_recipients
    from pipeline.spec import FrequencyCap

    began = time.perf_counter()
    with store.connect(url) as db:
        capped_recipients(db, FrequencyCap.model_validate(CAP))
        blobs, sends = db.rows("SELECT count(*), sum(sends) FROM send_history")[0]
    return {"history_build_s": round(time.perf_counter() - began, 1), "history_blobs": blobs,
            "history_sends": int(sends or 0)}


def controls_spec(audience: Path):  # noqa: ANN201
    """The demo spec with the 7-day cap across WhatsApp and Chat App, and the template's languages."""
    from pipeline.spec import FrequencyCap, load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "campaigns" / "welcome.yaml")
    template = spec.template.model_copy(update={"languages": LANGUAGES, "language_column": "language"})
    return spec.model_copy(update={"audience": audience, "frequency_cap": FrequencyCap.model_validate(CAP),
                                   "template": template})


def run_controls(corpus: Path, url: str) -> dict[str, Any]:
    """One cold preparation as the campaign's prepare task does it, in memory (called in a subprocess): the capped
    recipients read from the store in a thread while the audience is prepared (frequency.capped_meanwhile).
    `cap_query_s` is how long that read took in its thread, `prepare_s` the whole, which includes it."""
    import resource

    started = time.perf_counter()
    from pipeline.audience import frequency
    from pipeline.audience.policy import blocked_policy
    from pipeline.render.prepare import prepare_audience

    spec = controls_spec(corpus)
    imported, cpu = time.perf_counter(), time.process_time()
    read = frequency.capped_recipients
    query: dict[str, float] = {}

    def timed_read(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return read(*args, **kwargs)
        finally:
            query["seconds"] = time.perf_counter() - began

    frequency.capped_recipients = timed_read  # what capped_meanwhile's thread calls
    cap = frequency.frequency_cap_for(spec)
    with frequency.capped_meanwhile(url, cap, exclude_campaign="bench", app=frequency.app_of(spec)) as capped:
        prepared = prepare_audience(
            corpus, channel=spec.channel, category=spec.template.category, template=spec.template,
            variables=spec.variables, policy=blocked_policy(spec.channel, spec.blocked_countries),
            recently_messaged=capped, frequency_detail=frequency.describe(cap),
            capped_categories=frozenset(cap.categories), out_dir=None, keep_frames=True)
    done, cpu = time.perf_counter(), time.process_time() - cpu
    languages = prepared.accepted["template_language"].value_counts().sort("template_language").rows()
    return {"seconds": done - imported, "cap_query_s": query["seconds"], "prepare_s": done - imported,
            "import_s": imported - started, "cpu_s": cpu, "capped_in_store": len(capped), "rows": prepared.rows_read,
            "accepted": prepared.accepted.height, "counts": prepared.counts,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "languages": {k: v for k, v in languages}}
