"""Turns prepared recipients into outbox rows: one deterministic message id per recipient."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import polars as pl

from pipeline.channels.base import Channel, Outgoing
from pipeline.spec import CampaignSpec
from pipeline.store import Store, run
from pipeline.store.bulk import insert_frame

# Fixed namespace: the same campaign, recipient and channel always give the same message id,
# so a re-run after a crash finds the messages it already queued or sent.
MESSAGE_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-4e0b-9a59-3f7b1d2c4e10")


def message_id_for(campaign_id: str, recipient_key: str, channel: str) -> str:
    return str(uuid.uuid5(MESSAGE_NAMESPACE, f"{campaign_id}|{recipient_key}|{channel}"))


def _key(accepted: pl.DataFrame) -> pl.Expr:
    """The address a channel sends to: `recipient_key` (an id or e-mail) when the preparation set
    one, else the E.164 number."""
    if "recipient_key" in accepted.columns:
        return pl.col("recipient_key")
    return pl.col("phone_e164").alias("recipient_key")


def register_campaign(db: Store, spec: CampaignSpec, campaign_id: str) -> None:
    with db.write() as conn:
        run(conn, """
            INSERT INTO campaigns (campaign_id, name, channel, template, category, created_at, spec_json)
            VALUES (:campaign_id, :name, :channel, :template, :category, :created_at, :spec_json)
            ON CONFLICT (campaign_id) DO UPDATE SET spec_json = excluded.spec_json
            """, campaign_id=campaign_id, name=spec.name, channel=spec.channel, template=spec.template.name,
            category=spec.template.category, created_at=datetime.now(UTC), spec_json=spec.model_dump_json())


def store_preparation(db: Store, campaign_id: str, accepted: pl.DataFrame, rejects: pl.DataFrame) -> None:
    """Recipients and rejects of this preparation replace any earlier preparation's rows."""
    recipients = accepted.with_columns(_key(accepted)).select(
        pl.lit(campaign_id).alias("campaign_id"),
        pl.col("row_number").cast(pl.Int64),
        pl.col("recipient_key"),
        pl.col("phone_e164"),
        pl.col("region").alias("country"),
        pl.col("number_type"),
        pl.col("params_json").alias("variables_json") if "params_json" in accepted.columns else pl.lit(None),
        pl.col("text") if "text" in accepted.columns else pl.lit(None).alias("text"),
    )
    reject_rows = rejects.select(
        pl.lit(campaign_id).alias("campaign_id"), pl.col("row_number").cast(pl.Int64), "reason", "detail"
    )
    with db.write() as conn:
        run(conn, "DELETE FROM recipients WHERE campaign_id = :c", c=campaign_id)
        run(conn, "DELETE FROM rejects WHERE campaign_id = :c", c=campaign_id)
        insert_frame(conn, "recipients", recipients.with_columns(pl.col("variables_json", "text").cast(pl.String)))
        insert_frame(conn, "rejects", reject_rows)


def enqueue_messages(
    db: Store, spec: CampaignSpec, campaign_id: str, channel: Channel, accepted: pl.DataFrame,
    *, senders: list[str] | None = None,
) -> int:
    """Queues one message per accepted recipient; messages already in the outbox are left as they are.

    With several senders, recipients are spread over them in turn. A `timezone` column of
    `accepted` (IANA names) is kept for send windows; a `not_before` column (UTC) holds each message back until
    then (send-at). Returns how many new messages were queued.
    """
    senders = senders or [spec.sender]
    ids, payloads = [], []
    accepted = accepted.with_columns(_key(accepted))
    text = accepted["text"] if "text" in accepted.columns else pl.Series([None] * accepted.height)
    # Each recipient's template language when the preparation picked one (pipeline/render/languages.py).
    language = (accepted["template_language"] if "template_language" in accepted.columns
                else pl.Series([spec.template.language] * accepted.height, dtype=pl.String))
    templates = {spec.template.language: spec.template}
    columns = accepted.select("recipient_key", "region", "params_json").with_columns(text.alias("text"),
                                                                                     language.alias("language"))
    for to, country, params_json, body, code in columns.iter_rows():
        message_id = message_id_for(campaign_id, to, channel.name)
        params = json.loads(params_json) if params_json else {}
        template = templates.get(code)
        if template is None:
            template = templates[code] = spec.template.model_copy(update={"language": code})
        message = Outgoing(message_id=message_id, to=to, country=country, text=body, params=params,
                           template=template)
        payload = channel.build_payload(message)
        ids.append(message_id)
        payloads.append(json.dumps(payload, separators=(",", ":"), ensure_ascii=False))
    rows = pl.DataFrame(
        {
            "message_id": ids,
            "recipient_key": accepted["recipient_key"],
            "country": accepted["region"],
            "payload_json": payloads,
        }
    ).with_columns(
        pl.lit(campaign_id).alias("campaign_id"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("seq"),
        pl.lit(channel.name).alias("channel"),
        pl.lit(pl.Series(senders)).gather(pl.int_range(pl.len()) % len(senders)).alias("sender")
        if len(senders) > 1 else pl.lit(senders[0]).alias("sender"),
        (accepted["timezone"] if "timezone" in accepted.columns else pl.lit(None, dtype=pl.String)).alias("timezone"),
        # "send at 10:00 local time": each message's release (pipeline/dispatch/schedule.py); else at once.
        (accepted["not_before"] if "not_before" in accepted.columns
         else pl.lit(None, dtype=pl.Datetime("us", "UTC"))).alias("not_before"),
        pl.lit(spec.template.category).alias("category"),
        pl.lit("queued").alias("state"),
        pl.lit(0, dtype=pl.Int32).alias("attempts"),
        pl.lit(datetime.now(UTC)).alias("queued_at"),
    )
    with db.write() as conn:
        # seq numbers past the campaign's last: read again under the write lock, so two enqueues never share one.
        first = run(conn, "SELECT coalesce(max(seq), -1) + 1 FROM outbox WHERE campaign_id = :c", c=campaign_id)
        rows = rows.with_columns(pl.col("seq") + first.scalar())
        added = insert_frame(conn, "outbox", rows, on_conflict="ignore")
    if db.dialect == "postgresql" and added > 1000:
        # Fresh statistics before the dispatcher's first claims: planned on stale ones, a claim of a few hundred
        # seqs walks every queued message of the campaign instead of the (campaign, seq) index.
        db.execute("ANALYZE outbox")
    return added
