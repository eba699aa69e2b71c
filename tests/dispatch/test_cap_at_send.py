"""The frequency cap as a campaign's dispatch starts (pipeline/dispatch/cap_at_send.py): campaigns queued before any
of them sent get through the cap of preparation; the still-queued messages whose recipients the cap now reaches are
`withheld` (frequency_capped), never sent, never re-queued, costed at nothing, and their recipients are the
campaign's rejects. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from pipeline import store
from pipeline.audience.frequency import describe, frequency_cap_for
from pipeline.costs.costing import estimate_cost, load_prices
from pipeline.costs.summary import campaign_summary
from pipeline.dispatch import operations
from pipeline.dispatch.cap_at_send import withhold_capped
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.locks import campaign_lock, cap_check_over
from pipeline.dispatch.outbox import enqueue_messages, register_campaign, store_preparation
from pipeline.dispatch.policy import Guards
from pipeline.dispatch.preparation import prepare_campaign
from pipeline.spec import CampaignSpec, parse_spec
from tests.helpers.whatsapp import CloudApi, channel

ROOT = Path(__file__).resolve().parents[2]
A, B, C, D = (f"+44740012360{i}" for i in range(4))


def _queue(db: store.Store, tmp: Path, name: str, numbers: list[str], **extra: object) -> CampaignSpec:
    """The campaign prepared (the store's cap as it is now) and queued, as a run does before it waits."""
    audience = tmp / f"{name}.csv"
    audience.write_text("phone,first_name,city,coupon,opt_in\n" + "".join(f"{n},Ann,Leeds,W-1,yes\n" for n in numbers))
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(name=name, audience=str(audience), **extra)
    spec = parse_spec(data)
    prepared = prepare_campaign(spec, name, db.url, tmp / name)
    register_campaign(db, spec, name)
    store_preparation(db, name, prepared.accepted, prepared.rejects)
    enqueue_messages(db, spec, name, channel(), prepared.accepted)
    return spec


def _dispatch(db: store.Store, spec: CampaignSpec, campaign_id: str) -> list[str]:
    """What a run does as its dispatch starts: the cap again, then the dispatch. The numbers the provider got."""
    withhold_capped(db, spec, campaign_id)
    api = CloudApi()
    asyncio.run(dispatch_campaign(db, campaign_id, channel(), guards=Guards(), transport=api))
    return sorted("+" + body["to"] for body in api.bodies)


def _states(db: store.Store, campaign_id: str) -> dict[str, int]:
    return dict(db.rows("SELECT state, count(*) FROM outbox WHERE campaign_id = :c GROUP BY state", c=campaign_id))


def test_campaigns_queued_together_reach_each_recipient_once(db: store.Store, tmp_path: Path) -> None:
    spring = _queue(db, tmp_path, "spring", [A, B, C])
    summer = _queue(db, tmp_path, "summer", [A, B, C, D])  # queued before spring sent: its preparation capped none
    assert _states(db, "summer") == {"queued": 4}

    assert _dispatch(db, spring, "spring") == [A, B, C]
    assert _dispatch(db, summer, "summer") == [D]  # A, B, C had their one marketing message of the 24 h
    per_recipient = dict(db.rows("SELECT recipient_key, count(*) FROM outbox WHERE state = 'sent' GROUP BY 1"))
    assert per_recipient == {A: 1, B: 1, C: 1, D: 1}

    detail = describe(frequency_cap_for(summer))
    assert _states(db, "summer") == {"sent": 1, "withheld": 3}
    withheld = db.rows("SELECT recipient_key, error_code, error_detail, retryable FROM outbox "
                       "WHERE campaign_id = 'summer' AND state = 'withheld'")
    assert set(withheld) == {(k, "frequency_capped", detail, False) for k in (A, B, C)}
    assert sorted(db.rows("SELECT state, error_code FROM outbox_transitions WHERE campaign_id = 'summer' "
                          "AND state = 'withheld'")) == [("withheld", "frequency_capped")] * 3
    # Their rows are the campaign's rejects, as preparation records the cap (rows 2-4 of the file), not accepted.
    assert db.rows("SELECT row_number, reason, detail FROM rejects WHERE campaign_id = 'summer' ORDER BY 1") == [
        (2, "frequency_capped", detail), (3, "frequency_capped", detail), (4, "frequency_capped", detail)]
    assert db.rows("SELECT recipient_key FROM recipients WHERE campaign_id = 'summer'") == [(D,)]

    # `campaign status` and the summary say why they were not sent; nothing of theirs is costed.
    status = operations.campaign_status(db, "summer")
    assert status["states"] == {"sent": 1, "withheld": 3} and status["withheld"] == {"frequency_capped": 3}
    summary = campaign_summary(db, "summer")
    assert (summary["accepted"], summary["rejected_by_reason"], summary["sent"]) == (1, {"frequency_capped": 3}, 1)
    assert (summary["withheld"], summary["withheld_by_reason"]) == (3, {"frequency_capped": 3})
    load_prices(db, service_fee_usd=0.005)
    assert estimate_cost(db, "summer").messages == 1

    # A resume: retry-failed and resend-unknown take none of them, the cap again changes nothing, nothing is sent.
    assert operations.requeue_failed(db, "summer") == 0 and operations.requeue_unknown(db, "summer") == 0
    assert _dispatch(db, summer, "summer") == []
    assert _states(db, "summer") == {"sent": 1, "withheld": 3}

    # A later run whose preparation accepts them again (the cap's period over, its rows replacing the rejects):
    # still withheld, rejects again.
    with db.write() as conn:
        store.run(conn, "DELETE FROM rejects WHERE campaign_id = 'summer'")
        store.run(conn, "INSERT INTO recipients (campaign_id, row_number, recipient_key) VALUES ('summer', 2, :a), "
                        "('summer', 3, :b), ('summer', 4, :c)", a=A, b=B, c=C)
    later = withhold_capped(db, summer, "summer", now=datetime.now(UTC) + timedelta(hours=25))
    assert (later.messages, later.refiled) == (0, 3)
    assert db.scalar("SELECT count(*) FROM rejects WHERE campaign_id = 'summer' AND reason = 'frequency_capped'") == 3
    assert db.rows("SELECT recipient_key FROM recipients WHERE campaign_id = 'summer'") == [(D,)]
    assert _states(db, "summer") == {"sent": 1, "withheld": 3}


def test_a_cap_of_two_counts_every_send_of_the_period_the_campaigns_own_too(db: store.Store, tmp_path: Path) -> None:
    cap = {"frequency_cap": {"max": 2, "per": "24h"}}
    first = _queue(db, tmp_path, "first", [A, B], **cap)
    second = _queue(db, tmp_path, "second", [A, B], **cap)
    third = _queue(db, tmp_path, "third", [A, B, C], **cap)
    assert _dispatch(db, first, "first") == [A, B]
    assert _dispatch(db, second, "second") == [A, B]  # one each before: under the cap of 2
    # C has one message of `third` itself already (on Chat App's WhatsApp, which the cap counts with WhatsApp's)
    # and one of `first`: two, though only one is another campaign's.
    now = datetime.now(UTC)
    db.execute("INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, category, "
               "payload_json, state, queued_at, sent_at) VALUES ('c-own', 'third', 100, :k, 'chatapp', 'S1', "
               "'marketing', '{}', 'sent', :at, :at), ('c-first', 'first', 100, :k, 'whatsapp', 'S1', 'marketing', "
               "'{}', 'sent', :at, :at)", k=C, at=now)
    assert _dispatch(db, third, "third") == []
    assert set(db.rows("SELECT recipient_key FROM outbox WHERE campaign_id = 'third' AND state = 'withheld'")) == {
        (A,), (B,), (C,)}


def test_campaigns_starting_together_reach_each_recipient_once_whichever_sends_first(
        db: store.Store, tmp_path: Path) -> None:
    """Two runs hold their leases at once and both check the cap before either sends (two uploads started together,
    two continuations at a window's opening): the one that checks second counts what the first is about to send, so
    each recipient gets one message however their sends interleave. A run that has not checked yet, or has ended,
    counts for nothing."""
    spring = _queue(db, tmp_path, "spring", [A, B, C])
    summer = _queue(db, tmp_path, "summer", [A, B, C, D])
    autumn = _queue(db, tmp_path, "autumn", [C, D])  # queued, its run over (no lease): not about to send anything
    with campaign_lock(db, "summer"), campaign_lock(db, "spring"):
        assert withhold_capped(db, spring, "spring").messages == 0  # summer holds its lease but has not checked
        assert withhold_capped(db, summer, "summer").messages == 3  # spring will reach A, B and C
        assert _states(db, "summer") == {"withheld": 3, "queued": 1}
        api = CloudApi()  # summer sends first, then spring
        for campaign_id in ("summer", "spring"):
            asyncio.run(dispatch_campaign(db, campaign_id, channel(), guards=Guards(), transport=api))
    assert sorted("+" + body["to"] for body in api.bodies) == [A, B, C, D]
    assert db.scalar("SELECT cap_checked_at FROM leases") is None  # both released
    # autumn's own run: C and D had theirs.
    assert _dispatch(db, autumn, "autumn") == []


def test_a_run_still_sending_counts_its_queued_messages_for_a_run_that_starts_meanwhile(
        db: store.Store, tmp_path: Path) -> None:
    """A dispatch that sends for hours (a max of 2 here): a campaign that starts meanwhile counts what it has sent
    and what it still has queued, each message once."""
    cap = {"frequency_cap": {"max": 2, "per": "24h"}}
    long = _queue(db, tmp_path, "long", [A, B, C], **cap)
    short = _queue(db, tmp_path, "short", [A, B, C, D], **cap)
    other = _queue(db, tmp_path, "other", [A], **cap)  # one message to A already
    assert _dispatch(db, other, "other") == [A]
    with campaign_lock(db, "long"):
        withhold_capped(db, long, "long")
        db.execute("UPDATE outbox SET state = 'sent', sent_at = :now WHERE campaign_id = 'long' AND recipient_key = :k",
                   now=datetime.now(UTC), k=B)  # long has sent to B, A and C still queued
        with campaign_lock(db, "short"):
            assert _dispatch(db, short, "short") == [B, C, D]  # A: other's send + long's queued one
    assert _states(db, "short") == {"sent": 3, "withheld": 1}


def test_a_fleets_groups_count_while_they_send_and_a_finished_dispatch_stops_counting(
        db: store.Store, tmp_path: Path) -> None:
    """A fleet's groups hold sender leases on their workers while they send, even once the run that started them is
    gone: their queued messages count. A run whose dispatch has returned (stopped by its budget, paused, its window
    closed) no longer counts what it left queued, though it holds its lease through receipts and the report."""
    _queue(db, tmp_path, "fleet", [A, B])
    paused = _queue(db, tmp_path, "paused", [C])
    late = _queue(db, tmp_path, "late", [A, B, C, D])
    now = datetime.now(UTC)
    db.execute("INSERT INTO leases (name, holder, pid, host, since, expires_at) VALUES "
               "('sender:fleet:15550001111', 'worker', 4242, 'worker-b', :now, :expires)",
               now=now, expires=now + timedelta(minutes=5))  # its campaign lease expired with its run
    with campaign_lock(db, "paused"):
        withhold_capped(db, paused, "paused")
        cap_check_over(db, "paused")  # its dispatch returned with C still queued
        with campaign_lock(db, "late"):
            assert withhold_capped(db, late, "late").messages == 2
    assert _states(db, "late") == {"withheld": 2, "queued": 2}
    assert set(db.rows("SELECT recipient_key FROM outbox WHERE campaign_id = 'late' AND state = 'queued'")) == {
        (C,), (D,)}
