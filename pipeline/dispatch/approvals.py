"""Approvals before sending, as the store keeps them: each request (what was asked, by which run, until when) and its
outcome (approved, rejected, refused, expired; who, when, with what comment), and what an approver is shown.

Whether a run must wait, and the waiting itself (Prefect's run input), are the flow's (flows/approval.py). An
approval covers the messages queued when it was given (`max_seq`): a later run of the same campaign that queued
more (a weekly schedule adding new recipients) asks again; one that only continues (a send window) does not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import polars as pl

from pipeline.channels.template_rules import VARIABLE
from pipeline.masking import mask_email, mask_phone, mask_text
from pipeline.render.arms import CONTROL, HOLDOUT, arms_of, assign_arms
from pipeline.render.languages import LANGUAGE_COLUMN
from pipeline.spec import CampaignSpec, TemplateSpec
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
                   generation: dict[str, Any] | None = None, sample: list[SampleGroup] | None = None) -> str:
    """What the approver reads above the form (Markdown): the estimate, the rejects by reason, a masked sample
    of the rendered messages for each language and, when a model wrote values (`generation`, the personalise
    task's summary), what it wrote: counts, fallbacks by reason and a masked sample. `sample` (queued_sample: what
    the outbox holds, per variant and language) replaces the sample read from `accepted`."""
    lines = []
    if earlier:
        lines += [f"**Asked again:** {earlier}", ""]
    if refused:
        lines += [f"**The last answer was refused:** {refused}", ""]
    lines += ["### Cost estimate", "", f"{estimate.get('messages', 0):,} messages, "
              f"USD {float(estimate.get('total_usd', 0)):,.4f}", "", "### Rejects", ""]
    lines += [f"- {reason}: {n:,}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1])] or ["- none"]
    lines += ["", "### Sample of rendered messages (numbers masked)", ""]
    if sample is not None:
        lines += _sample_lines(sample)
        return "\n".join(lines + (generated_sample(generation, sample_size) if generation is not None else []))
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


@dataclass(frozen=True)
class SampleGroup:
    """The recipients of one arm (None: no experiment) in one template language, and a masked sample of what the
    outbox will send them: (address, text). The holdout is one group, language None, sent nothing."""

    arm: str | None
    language: str | None
    template: str | None
    recipients: int
    messages: list[tuple[str, str]]


def _sample_lines(groups: list[SampleGroup]) -> list[str]:
    lines: list[str] = []
    for g in groups:
        if g.arm == HOLDOUT:
            lines += [f"**holdout** ({g.recipients:,} recipients): sent nothing, measured against the variants", ""]
            continue
        arm = "" if g.arm is None else f"{g.arm} · " if g.arm == CONTROL else f"variant {g.arm} · "
        template = f" · template `{g.template}`" if g.arm is not None and g.template else ""
        lines.append(f"**{arm}{g.language}**{template} ({g.recipients:,} recipients)")
        lines += [f"- `{address}`: {text}" for address, text in g.messages] or ["- (none queued)"]
        lines.append("")
    return lines


def queued_sample(db: Store, spec: CampaignSpec, campaign_id: str, accepted: pl.DataFrame, *,
                  sample_size: int = 5) -> list[SampleGroup]:
    """What the approver is shown: the accepted recipients counted per arm (variants in the spec's order, the
    holdout last) and template language, with each group's first `sample_size` messages as the outbox holds them
    (the queue step runs before the approval): the template and language of the queued payload, its body as the
    provider has it in that language (the template registry, filled with the message's parameters), else the
    rendered text when it is the spec's own language; a language whose text is not known here says so and shows
    the parameters. Addresses and texts masked."""
    if accepted.is_empty():
        return []
    frame = accepted.sort("row_number") if "row_number" in accepted.columns else accepted
    frame = frame.select(
        pl.col("row_number") if "row_number" in frame.columns else pl.int_range(pl.len()).alias("row_number"),
        (pl.col("recipient_key") if "recipient_key" in frame.columns else pl.col("phone_e164")).alias("key"),
        (pl.col(LANGUAGE_COLUMN) if LANGUAGE_COLUMN in frame.columns
         else pl.lit(spec.template.language)).alias("language"))
    templates: dict[str | None, TemplateSpec] = {None: spec.template}
    order: list[str | None] = [None]
    if spec.experiment is not None:  # arms are a pure function of the campaign and the key, as queued
        arms = arms_of(spec.experiment, spec.template)
        frame = frame.with_columns(assign_arms(campaign_id, frame["key"], arms))
        templates = {arm.name: arm.template for arm in arms if arm.template is not None}
        order = [*templates, HOLDOUT]
    else:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias("arm"))
    groups: list[tuple[str | None, str | None, pl.DataFrame]] = []
    for arm in order:
        rows = frame.filter(pl.col("arm") == arm) if arm is not None else frame
        if arm == HOLDOUT:
            groups += [(arm, None, rows)] if rows.height else []
            continue
        groups += [(arm, key[0], part) for key, part in sorted(
            rows.partition_by("language", as_dict=True).items(), key=lambda kv: str(kv[0]))] if rows.height else []
    wanted = pl.concat([rows.head(2 * sample_size) for arm, _, rows in groups if arm != HOLDOUT]
                       or [frame.clear()])
    queued = _queued(db, spec, campaign_id, wanted) if wanted.height else {}
    out = []
    for arm, language, rows in groups:
        messages: list[tuple[str, str]] = []
        if arm != HOLDOUT:
            for key in rows.head(2 * sample_size)["key"]:
                if key in queued and len(messages) < sample_size:
                    messages.append((_masked(key), mask_text(_delivered_text(*queued[key], templates[arm]))))
        out.append(SampleGroup(arm, language, templates[arm].name if arm != HOLDOUT else None, rows.height,
                               messages))
    return out


def _queued(db: Store, spec: CampaignSpec, campaign_id: str, wanted: pl.DataFrame) -> dict[str, tuple[Any, ...]]:
    """key -> (payload, rendered text, parameters, the registry's body lookup) of the wanted rows' queued messages."""
    from pipeline.channels import templates as registry
    from pipeline.channels.template_sync import registry_target

    payloads = dict(db.rows("SELECT recipient_key, payload_json FROM outbox WHERE campaign_id = :c AND "
                            "recipient_key IN :keys", c=campaign_id, keys=wanted["key"].to_list()))
    stored = {number: (text, variables) for number, text, variables in db.rows(
        "SELECT row_number, text, variables_json FROM recipients WHERE campaign_id = :c AND row_number IN :rows",
        c=campaign_id, rows=wanted["row_number"].to_list())}
    target = registry_target(spec)
    bodies: dict[tuple[str, str], str | None] = {}

    def body(name: str, language: str) -> str | None:
        if target is None:
            return None
        if (name, language) not in bodies:
            t = registry.template(db, target[0], name, language, target[1])
            part = next((c for c in (t.components if t else []) if str(c.get("type", "")).upper() == "BODY"), None)
            bodies[name, language] = str(part["text"]) if part and part.get("text") else None
        return bodies[name, language]

    out = {}
    for number, key in wanted.select("row_number", "key").iter_rows():
        if key in payloads:
            text, variables = stored.get(number, (None, None))
            out[key] = (payloads[key], text, variables, body)
    return out


def _delivered_text(payload_json: str, text: str | None, variables: str | None, body: Any,
                    template: TemplateSpec) -> str:
    """The text a queued message shows its recipient (see queued_sample)."""
    payload = json.loads(payload_json)
    params = json.loads(variables) if variables else {}
    if payload.get("type") == "template" and isinstance(payload.get("template"), dict):  # WhatsApp Cloud API
        sent = payload["template"]
        name, language = str(sent.get("name")), str((sent.get("language") or {}).get("code"))
        values = [str(p.get("text", "")) for c in sent.get("components") or [] if c.get("type") == "body"
                  for p in c.get("parameters") or []]
    elif payload.get("Type") == "template":  # Chat App
        name, language = str(payload.get("TemplateName") or template.name), str(payload.get("Language"))
        values = [str(v) for v in params.get("body") or []]
    else:  # a free-form message (SMS, e-mail, a session message): the rendered text itself goes out
        return text or ""
    known = body(name, language)
    if known is not None:
        return VARIABLE.sub(lambda m: values[int(m.group(1)) - 1] if 0 < int(m.group(1)) <= len(values)
                            else m.group(0), known)
    if name == template.name and language == template.language and text is not None:
        return text  # the spec's text is the approved body in its own language
    return (f"(the provider's approved text of {name} [{language}], not known here: no synced template registry "
            f"holds it; parameters: {', '.join(values) or 'none'})")


def _masked(address: str) -> str:
    return mask_email(address) if "@" in address else mask_phone(address)


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
