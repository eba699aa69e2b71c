"""Approvals before sending, as the store keeps them: each request (what was asked, by which run, until when) and its
outcome (approved, rejected, refused, expired; who, when, with what comment), and what an approver is shown.

Whether a run must wait, and the waiting itself (Prefect's run input), are the flow's (flows/approval.py). An
approval covers the messages queued when it was given (`max_seq`): a later run of the same campaign that queued
more (a weekly schedule adding new recipients) asks again; one that only continues (a send window) does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import polars as pl

from pipeline.masking import mask_phone, mask_text
from pipeline.store import Store, utc

DECISIONS = ("pending", "approved", "rejected", "refused", "expired")


@dataclass(frozen=True)
class Request:
    request_id: str
    campaign_id: str
    messages: int
    max_seq: int
    estimate_usd: float
    expires_at: datetime | None


def approved_through(db: Store, campaign_id: str) -> int | None:
    """The outbox seq up to which an approval covers the campaign, or None when nothing was approved."""
    return db.scalar("SELECT max(max_seq) FROM campaign_approvals WHERE campaign_id = :c AND decision = 'approved'",
                     c=campaign_id)


def queued_extent(db: Store, campaign_id: str) -> tuple[int, int]:
    """(messages still queued, the campaign's highest seq)."""
    queued, top = db.rows("SELECT sum(CASE WHEN state = 'queued' THEN 1 ELSE 0 END), max(seq) FROM outbox "
                          "WHERE campaign_id = :c", c=campaign_id)[0]
    return int(queued or 0), int(top if top is not None else -1)


def open_request(db: Store, campaign_id: str, request_id: str, *, flow_run_id: str | None, origin: str,
                 requested_by: str | None, estimate_usd: float, timeout_s: float) -> Request:
    """Records a pending request (again after a resumed run replays it: the first one stays)."""
    queued, top = queued_extent(db, campaign_id)
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=timeout_s)
    db.execute("""
        INSERT INTO campaign_approvals (request_id, campaign_id, flow_run_id, origin, requested_by, requested_at,
            expires_at, messages, max_seq, estimate_usd, decision)
        VALUES (:r, :c, :f, :o, :by, :now, :exp, :n, :top, :usd, 'pending')
        ON CONFLICT (request_id) DO NOTHING
        """, r=request_id, c=campaign_id, f=flow_run_id, o=origin, by=requested_by, now=now, exp=expires, n=queued,
        top=top, usd=Decimal(str(round(estimate_usd, 6))))
    row = db.rows("SELECT expires_at FROM campaign_approvals WHERE request_id = :r", r=request_id)[0]
    return Request(request_id, campaign_id, queued, top, estimate_usd, utc(row[0]))


def decide(db: Store, request_id: str, decision: str, *, approver: str | None, comment: str | None) -> None:
    if decision not in DECISIONS:
        raise ValueError(f"decision {decision!r} is not one of {DECISIONS}")
    db.execute("UPDATE campaign_approvals SET decision = :d, approver = :a, comment = :m, decided_at = :now "
               "WHERE request_id = :r", d=decision, a=approver, m=comment, now=datetime.now(UTC), r=request_id)


def history(db: Store, campaign_id: str) -> list[dict[str, Any]]:
    """Every request of the campaign, oldest first, a pending one past its time shown as expired."""
    rows = db.rows("SELECT request_id, origin, requested_by, requested_at, expires_at, messages, estimate_usd, "
                   "decision, approver, comment, decided_at, flow_run_id FROM campaign_approvals "
                   "WHERE campaign_id = :c ORDER BY requested_at, request_id", c=campaign_id)
    now = datetime.now(UTC)
    out = []
    for r in rows:
        item = dict(zip(("request_id", "origin", "requested_by", "requested_at", "expires_at", "messages",
                         "estimate_usd", "decision", "approver", "comment", "decided_at", "flow_run_id"), r,
                        strict=True))
        if item["decision"] == "pending" and item["expires_at"] is not None and utc(item["expires_at"]) < now:
            item["decision"] = "expired"
        out.append(item)
    return out


def standing_refusal(db: Store, campaign_id: str) -> dict[str, Any] | None:
    """The campaign's last outcome when it stands against sending: a rejection, or a request that expired unanswered,
    with no approval asked for after it. Whoever runs the campaign next (a resume, a manual run that would not need an
    approval otherwise) has to get one first."""
    outcomes = [h for h in history(db, campaign_id) if h["decision"] in ("approved", "rejected", "expired")]
    return outcomes[-1] if outcomes and outcomes[-1]["decision"] != "approved" else None


def pending_request(db: Store, campaign_id: str) -> dict[str, Any] | None:
    """The campaign's newest request still waiting for a decision (and not past its time), or None."""
    waiting = [h for h in history(db, campaign_id) if h["decision"] == "pending"]
    return waiting[-1] if waiting else None


def approval_brief(counts: dict[str, int], accepted: pl.DataFrame, estimate: dict[str, Any], *,
                   sample_size: int = 5, refused: str | None = None, earlier: str | None = None,
                   generation: dict[str, Any] | None = None) -> str:
    """What the approver reads above the form (Markdown): the estimate, the rejects by reason, a masked sample
    of the rendered messages for each language and, when a model wrote values (`generation`, the personalise
    task's summary), what it wrote: counts, fallbacks by reason and a masked sample."""
    lines = []
    if earlier:
        lines += [f"**Asked again:** {earlier}", ""]
    if refused:
        lines += [f"**The last answer was refused:** {refused}", ""]
    lines += ["### Cost estimate", "", f"{estimate.get('messages', 0):,} messages, "
              f"USD {float(estimate.get('total_usd', 0)):,.4f}", "", "### Rejects", ""]
    lines += [f"- {reason}: {n:,}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1])] or ["- none"]
    lines += ["", "### Sample of rendered messages (numbers masked)", ""]
    language = "template_language" if "template_language" in accepted.columns else None
    groups = accepted.partition_by(language, as_dict=True) if language and accepted.height else {("",): accepted}
    for key, rows in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if language:
            lines.append(f"**{key[0]}** ({rows.height:,} recipients)")
        for phone, text in rows.head(sample_size).select(
                pl.col("phone_e164") if "phone_e164" in rows.columns else pl.lit(None).alias("phone_e164"),
                pl.col("text") if "text" in rows.columns else pl.lit("").alias("text")).iter_rows():
            lines.append(f"- `{mask_phone(phone)}`: {mask_text(text or '')}")
        lines.append("")
    if generation is not None:
        lines += generated_sample(generation, sample_size)
    return "\n".join(lines)


def generated_sample(generation: dict[str, Any], sample_size: int) -> list[str]:
    """The model-written values the approver is shown (masked again: the sample may come from anywhere)."""
    fallbacks = generation.get("fallbacks") or {}
    lines = ["### Model-written values (numbers and addresses masked)", "",
             f"{generation.get('generated', 0):,} written by the model, "
             f"{sum(fallbacks.values()):,} fell back to the fixed text"
             + (f" ({', '.join(f'{r}: {n:,}' for r, n in sorted(fallbacks.items()))})" if fallbacks else "")
             + f"; USD {float(generation.get('cost_usd') or 0):,.4f} for the model", ""]
    samples = list(generation.get("samples") or [])[:sample_size]
    lines += [f"- `{name}`: {mask_text(value)}" for name, value in samples] or ["- (none)"]
    return [*lines, ""]
