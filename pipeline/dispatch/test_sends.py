"""Test sends: some audience rows rendered exactly as the campaign renders them (the same preparation call,
pipeline/dispatch/preparation.py, and the channel's own payload), sent over the real channel to internal seeds,
and kept in the store's `test_sends` (migration 0006), never in the outbox.

Why a table of their own rather than outbox rows under another campaign id: the outbox is what the campaign's
counts, reports, billing counts and the team's frequency cap (across campaigns) read. Rows under a test campaign id
would still count in the cap and in the period bill; here they are out of all of them, and their cost is summed
apart (`costs_of_test_sends`). Receipts for them name no outbox message, so they stay in `unmatched_events`, which no
report counts.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import polars as pl

from pipeline.channels.base import Channel, Outgoing, SendOutcome
from pipeline.costs.costing import load_prices
from pipeline.dispatch.budget import _PRICE
from pipeline.dispatch.seeds import Seed, SeedError, SendLimits
from pipeline.masking import mask_email, mask_phone
from pipeline.render.arms import HOLDOUT, Arm, arms_of, assign_arms, render_arms
from pipeline.render.limits import RenderLimits
from pipeline.render.personalise import stand_in
from pipeline.render.prepare import Prepared
from pipeline.spec import CampaignSpec, TemplateSpec
from pipeline.store import Store, run
from pipeline.store.bulk import insert_frame

DEFAULT_ROWS = 3
TEST_NAMESPACE = uuid.UUID("0b7f4f1e-2f8a-4d55-93c1-5a1e7c0d9e21")


@dataclass(frozen=True)
class SeedResult:
    row_number: int
    seed: str
    status: str  # sent | failed | unknown
    provider_message_id: str | None
    error: str | None
    cost_usd: Decimal
    variant: str | None = None  # the experiment variant whose template it went out with


def pick_rows(prepared: Prepared, limits: SendLimits, *, rows: int | None = None,
              row_numbers: list[int] | None = None, source: str = "audience") -> pl.DataFrame:
    """The first `rows` accepted rows (default 3), or the accepted rows of `row_numbers` (as the audience file
    numbers them, header = row 1). A chosen row the campaign would not send to is refused with its reason."""
    wanted = _wanted(limits, rows, row_numbers, source)
    accepted = prepared.accepted.sort("row_number")
    if not row_numbers:
        if accepted.height == 0:
            raise SeedError(f"{source}: no row the campaign would send to")
        return accepted.head(wanted)
    found = accepted.filter(pl.col("row_number").is_in(row_numbers))
    for number in row_numbers:
        if number in set(found["row_number"].to_list()):
            continue
        reject = prepared.rejects.filter(pl.col("row_number") == number)
        if reject.height:
            raise SeedError(f"{source}: row {number}: the campaign would not send to it "
                            f"({reject['reason'][0]}: {reject['detail'][0]})")
        raise SeedError(f"{source}: row {number}: not a row of the audience ({prepared.rows_read} rows read)")
    return found


def _wanted(limits: SendLimits, rows: int | None, row_numbers: list[int] | None, source: str) -> int:
    wanted = len(row_numbers) if row_numbers else (DEFAULT_ROWS if rows is None else rows)
    if wanted < 1:
        raise SeedError(f"{source}: --rows must be at least 1")
    if wanted > limits.max_rows:
        raise SeedError(f"{source}: {wanted} rows asked, at most {limits.max_rows} (CAMPAIGN_TEST_SEND_MAX_ROWS)")
    return wanted


def variant_templates(spec: CampaignSpec) -> dict[str, TemplateSpec]:
    """The experiment's variants by name (empty without an experiment or without variants: the spec's template)."""
    return {v.name: v.template for v in (spec.experiment.variants if spec.experiment else [])}


def pick_variant_rows(spec: CampaignSpec, campaign_id: str, prepared: Prepared, limits: SendLimits, *,
                      variant: str | None = None, rows: int | None = None, row_numbers: list[int] | None = None,
                      source: str = "audience") -> pl.DataFrame:
    """pick_rows, for a spec with experiment variants: the rows with `arm`, each rendered with its variant's
    template as the queue step renders it (pipeline/dispatch/experiment.py). `variant` names the one variant to
    test (default: each of them); `rows` are each tested variant's first rows of its own arm (an arm the
    audience gives no row: the first rows); `row_numbers` go out with their own arm's template, or `variant`'s
    when named (a holdout row, sent nothing by the campaign, needs one). Without variants: pick_rows."""
    templates = variant_templates(spec)
    if not templates:
        if variant is not None:
            raise SeedError(f"--variant {variant}: the spec has no experiment variants")
        return pick_rows(prepared, limits, rows=rows, row_numbers=row_numbers, source=source)
    if variant is not None and variant not in templates:
        raise SeedError(f"--variant {variant}: not a variant of the spec ({', '.join(templates)})")
    assert spec.experiment is not None
    wanted = _wanted(limits, rows, row_numbers, source)
    accepted = prepared.accepted.sort("row_number")
    keys = accepted["recipient_key"] if "recipient_key" in accepted.columns else accepted["phone_e164"]
    accepted = accepted.with_columns(assign_arms(campaign_id, keys, arms_of(spec.experiment, spec.template)))
    if row_numbers:
        found = pick_rows(prepared, limits, row_numbers=row_numbers, source=source)  # refuses rows not sent to
        chosen = accepted.filter(pl.col("row_number").is_in(found["row_number"].implode()))
        if variant is not None:
            chosen = chosen.with_columns(pl.lit(variant).alias("arm"))
        held = chosen.filter(pl.col("arm") == HOLDOUT)["row_number"].to_list()
        if held:
            raise SeedError(f"{source}: row {held[0]}: in the holdout, the campaign sends it nothing "
                            "(--variant NAME tests a variant's text on it)")
    else:
        if accepted.height == 0:
            raise SeedError(f"{source}: no row the campaign would send to")
        parts = []
        for name in [variant] if variant else list(templates):
            own = accepted.filter(pl.col("arm") == name)
            parts.append((own if own.height else accepted).head(wanted).with_columns(pl.lit(name).alias("arm")))
        chosen = pl.concat(parts)
    # Generated values render as their fallback, as in the campaign's own preparation (stand_in).
    arms = [Arm(name, stand_in(spec.model_copy(update={"template": t})).template, 1.0) for name, t in templates.items()]
    rendered, failed = render_arms(chosen, arms, spec.variables, RenderLimits.for_spec(spec))
    if failed.height:
        raise SeedError(f"{source}: row {failed['row_number'][0]}: its variant's template cannot render it "
                        f"({failed['reason'][0]}: {failed['detail'][0]})")
    return rendered


def send_tests(db: Store, spec: CampaignSpec, campaign_id: str, channel: Channel, rows: pl.DataFrame,
               seeds: list[Seed], limits: SendLimits, *, started_by: str | None = None) -> list[SeedResult]:
    """Every chosen row to every seed, one request each, recorded in `test_sends` with its cost."""
    if rows.height * len(seeds) > limits.max_messages:
        raise SeedError(f"{rows.height} rows x {len(seeds)} seeds = {rows.height * len(seeds)} messages, at most "
                        f"{limits.max_messages} per test (CAMPAIGN_TEST_SEND_MAX_MESSAGES)")
    test_id = uuid.uuid4().hex[:16]
    messages = _messages(spec, channel, rows, seeds, test_id)
    outcomes = asyncio.run(_send(channel, [m[2] for m in messages], spec.provider.timeout_s))
    load_prices(db, service_fee_usd=spec.service_fee_usd if spec.service_fee_usd is not None else 0.005)
    now, results, records = datetime.now(UTC), [], []
    with db.read() as conn:
        for (row_number, seed, payload, message_id, arm, category), outcome in zip(messages, outcomes, strict=True):
            cost = _price(conn, channel.name, seed.country, category, now) if outcome.kind == "sent" else Decimal(0)
            status = outcome.kind if outcome.kind in ("sent", "unknown") else "failed"
            error = None if outcome.kind == "sent" else f"{outcome.error_code}: {outcome.error_detail or ''}".strip()
            results.append(SeedResult(row_number, seed.address, status, outcome.provider_message_id, error, cost, arm))
            records.append({
                "test_id": test_id, "message_id": message_id, "campaign_id": campaign_id, "row_number": row_number,
                "seed": seed.address, "channel": channel.name, "sender": spec.sender, "country": seed.country,
                "category": category, "payload_json": payload, "status": status,
                "provider_message_id": outcome.provider_message_id, "error_code": outcome.error_code,
                "error_detail": outcome.error_detail, "cost_usd": cost, "started_by": started_by, "sent_at": now,
            })
    with db.write() as conn:
        insert_frame(conn, "test_sends", pl.DataFrame(records, infer_schema_length=None))
    return results


def _messages(spec: CampaignSpec, channel: Channel, rows: pl.DataFrame, seeds: list[Seed],
              test_id: str) -> list[tuple[int, Seed, str, str, str | None, str]]:
    """(row, seed, payload, message id, variant, category): the row's rendered text and parameters, its variant's
    template (an `arm` column, pick_variant_rows) and its template language, as pipeline/dispatch/outbox.py builds
    them, addressed to the seed."""
    language = rows["template_language"] if "template_language" in rows.columns else None
    text = rows["text"] if "text" in rows.columns else None
    arms = rows["arm"] if "arm" in rows.columns else None
    templates = variant_templates(spec)
    out = []
    for i, (row_number, params_json) in enumerate(rows.select("row_number", "params_json").iter_rows()):
        arm = arms[i] if arms is not None else None
        base = templates[arm] if arm is not None else spec.template
        code = language[i] if language is not None else base.language
        template = base if code == base.language else base.model_copy(update={"language": code})
        for seed in seeds:
            message_id = str(uuid.uuid5(TEST_NAMESPACE, f"test|{test_id}|{row_number}|{seed.address}"
                                        + (f"|{arm}" if arm is not None else "")))
            message = Outgoing(message_id=message_id, to=seed.address, country=seed.country,
                               text=text[i] if text is not None else None,
                               params=json.loads(params_json) if params_json else {}, template=template)
            payload = json.dumps(channel.build_payload(message), separators=(",", ":"), ensure_ascii=False)
            out.append((row_number, seed, payload, message_id, arm, template.category))
    return out


async def _send(channel: Channel, payloads: list[str], timeout_s: float) -> list[SendOutcome]:
    # One at a time: a test is a handful of messages, far below any provider's rate.
    outcomes: list[SendOutcome] = []
    async with channel.open_session(timeout_s) as session:
        for payload in payloads:
            outcomes.extend(await channel.send(session, [payload]))
    return outcomes


def _price(conn: object, channel: str, country: str | None, category: str, now: datetime) -> Decimal:
    row = run(conn, _PRICE, channel=channel, country=country or "", category=category, today=now.date()).first()
    return Decimal(str(row[0])) + Decimal(str(row[1])) if row else Decimal(0)


def costs_of_test_sends(db: Store, campaign_id: str) -> dict[str, object]:
    """The campaign's test sends, counted and costed apart from the campaign."""
    with db.read() as conn:
        messages, sent, cost = run(conn, """
            SELECT count(*), sum(CASE WHEN status = 'sent' THEN 1 ELSE 0 END), coalesce(sum(cost_usd), 0)
            FROM test_sends WHERE campaign_id = :c""", c=campaign_id).one()
    return {"messages": int(messages), "sent": int(sent or 0), "cost_usd": Decimal(str(cost))}


def masked(address: str) -> str:
    return mask_email(address) if "@" in address else mask_phone(address)


def format_results(results: list[SeedResult]) -> str:
    lines = []
    for r in results:
        outcome = r.provider_message_id if r.status == "sent" else r.error
        variant = f" (variant {r.variant})" if r.variant else ""
        lines.append(f"row {r.row_number}{variant} -> {masked(r.seed)}: {r.status} {outcome or ''}".rstrip())
    total = sum((r.cost_usd for r in results), Decimal(0))
    sent = sum(r.status == "sent" for r in results)
    lines.append(f"{sent} of {len(results)} test messages sent; test cost USD {total:.4f} "
                 "(apart: not in the campaign's counts, report or frequency cap)")
    return "\n".join(lines)
