"""Variants and a holdout in the store (SQLite and PostgreSQL): the holdout recorded and never queued, each arm
queued with its template, arms unchanged by a resume with more rows, and the fallback leg keeping each
recipient's arm (its template) and never reaching the holdout."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import polars as pl

from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.experiment import queue_experiment
from pipeline.dispatch.fallback import fallback_leg_id, send_fallback
from pipeline.dispatch.outbox import register_campaign
from pipeline.records import empty_rejects
from pipeline.render.arms import arms_of, assign_arms
from pipeline.spec import parse_spec
from pipeline.store import Store, run
from pipeline.testing import FakeChannel
from tests.helpers.channels import FAST_RETRY
from tests.helpers.whatsapp import SPEC

VARIANT_B = {"name": "welcome_b", "language": "en_US", "category": "marketing", "text": "Hello {{ name }}, 20% off",
             "body": ["{{ name }}"]}


def _spec(**extra):
    template = {**SPEC["template"], "text": "Hi {{ name }}", "body": ["{{ name }}"], "header": [], "buttons": []}
    return parse_spec({**SPEC, "senders": [], "template": template, "variables": {"name": "name"}, "experiment": {
        "holdout": 0.2, "variants": [{"name": "a", "template": template, "weight": 1},
                                     {"name": "b", "template": VARIANT_B, "weight": 1}]}, **extra})


def _accepted(n: int) -> pl.DataFrame:
    return pl.DataFrame({
        "row_number": list(range(2, n + 2)), "name": [f"N{i}" for i in range(n)],
        "phone_e164": [f"+4477009{i:05d}" for i in range(n)], "region": ["GB"] * n, "number_type": ["mobile"] * n,
        "text": ["prepared"] * n, "params_json": ["{}"] * n, "segments": [1] * n, "encoding": ["gsm7"] * n,
    })


def _arms(db: Store, campaign: str) -> dict[str, str]:
    return dict(db.rows("SELECT recipient_key, arm FROM experiment_arms WHERE campaign_id = :c", c=campaign))


def test_holdout_recorded_never_queued_and_arms_survive_a_resume(db: Store):
    spec = _spec()
    register_campaign(db, spec, "exp")
    queued = queue_experiment(db, spec, "exp", FakeChannel(), _accepted(300), empty_rejects())
    arms = _arms(db, "exp")
    holdout = {k for k, arm in arms.items() if arm == "holdout"}
    assert len(arms) == 300 and 30 < len(holdout) < 90 and queued == 300 - len(holdout)
    outbox = {k: json.loads(p) for k, p in db.rows("SELECT recipient_key, payload_json FROM outbox")}
    assert not holdout & set(outbox) and len(outbox) == queued
    for key, payload in outbox.items():  # each arm's own template went into the payload
        assert payload["text"] == (f"Hi N{int(key[-5:])}" if arms[key] == "a" else f"Hello N{int(key[-5:])}, 20% off")
    # The store's arms are the pure function's.
    expected = assign_arms("exp", pl.Series(list(arms)), arms_of(spec.experiment, spec.template)).to_list()
    assert list(arms.values()) == expected

    # A resume with 100 more rows: nobody changes arm, nothing already queued is queued again.
    again = queue_experiment(db, spec, "exp", FakeChannel(), _accepted(400), empty_rejects())
    after = _arms(db, "exp")
    assert {k: after[k] for k in arms} == arms
    new_holdout = sum(1 for k, a in after.items() if a == "holdout" and k not in arms)
    assert again == 100 - new_holdout
    assert db.scalar("SELECT count(*) FROM outbox") == 400 - sum(1 for a in after.values() if a == "holdout")


def test_fallback_leg_keeps_each_recipients_arm_and_never_reaches_the_holdout(db: Store):
    spec = _spec(fallback={"channel": "sms", "sender": "Acme", "after_s": 600})
    register_campaign(db, spec, "exp")
    queue_experiment(db, spec, "exp", FakeChannel(), _accepted(120), empty_rejects())
    # Every first-leg message ends "sent" two hours ago with no receipt: all are due a fallback.
    with db.write() as conn:
        run(conn, "UPDATE outbox SET state = 'sent', sent_at = :t", t=datetime.now(UTC) - timedelta(hours=2))
    sms = FakeChannel()
    counts = send_fallback(db, spec, "exp", sms)
    arms = _arms(db, "exp")
    sent_arms = {k for k, a in arms.items() if a != "holdout"}
    leg = fallback_leg_id("exp")
    leg_rows = {k: json.loads(p)["text"] for k, p in db.rows(
        "SELECT recipient_key, payload_json FROM outbox WHERE campaign_id = :leg", leg=leg)}
    assert counts["sent"] == len(sent_arms) and set(leg_rows) == sent_arms
    assert _arms(db, leg) == {k: arms[k] for k in sent_arms}  # the leg's arms are the first leg's
    for key, text in leg_rows.items():  # the arm's rendered text goes out on the second channel
        assert text.startswith("Hi " if arms[key] == "a" else "Hello ")
    # Dispatching the leg again sends nothing more.
    import asyncio
    asyncio.run(dispatch_campaign(db, leg, sms, rate=spec.rate_limit, retry=FAST_RETRY))
    assert len(sms.accepted) == len(sent_arms)


def test_audience_outcome_column_becomes_conversions(db: Store):
    spec = _spec(experiment={"holdout": 0.5, "outcome_column": "bought"})
    frame = _accepted(6).with_columns(pl.Series("bought", ["12.5", "yes", "", "0", "no", "TRUE"]))
    register_campaign(db, spec, "exp")
    queue_experiment(db, spec, "exp", FakeChannel(), frame, empty_rejects())
    got = sorted((k[-1], v) for k, v in db.rows("SELECT recipient_key, value FROM conversions"))
    assert got == [("0", 12.5), ("1", None), ("5", None)]
