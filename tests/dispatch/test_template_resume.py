"""The hold-and-resume rules of pipeline/dispatch/template_resume.py on a real store: what counts as approved
again, the bounds (CAMPAIGN_TEMPLATE_HOLD_S, CAMPAIGN_TEMPLATE_RESUMES, CAMPAIGN_MAX_REAPPROVAL_RUNS), and which
ended campaigns are due a continuation. The flows using them: tests/flows/test_template_reapproval.py."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.channels import templates as registry
from pipeline.dispatch.policy import DispatchResult
from pipeline.dispatch.template_resume import (
    Target,
    Wait,
    dispatch_with_holds,
    due_waits,
    hold_seconds,
    mark_continued,
    record_wait,
    wait_for_reapproval,
)
from pipeline.spec import SpecError
from pipeline.store import Store

T = Target("whatsapp", "waba", "hello", "en_US")
STOP = "template: hello [en_US] is PAUSED at whatsapp"
_seconds = itertools.count()


def _template(db: Store, **others: str) -> None:
    """`hello` APPROVED, and the `others` with their statuses, as a sync lists them."""
    registry.store_templates(db, "whatsapp", "waba", [
        registry.ProviderTemplate(provider="whatsapp", account="waba", name=n, language="en_US", status=status)
        for n, status in {"hello": "APPROVED", **others}.items()])


def _webhook(db: Store, status: str) -> None:
    at = datetime(2026, 12, 6, tzinfo=UTC) + timedelta(seconds=next(_seconds))
    with db.write() as conn:
        registry.apply_updates(conn, [registry.Update(provider="whatsapp", account="waba", kind="status", at=at,
                                                      name="hello", language="en_US", value=status)])


def test_the_hold_setting_is_bounded_and_named() -> None:
    assert hold_seconds({}) == 600 and hold_seconds({"CAMPAIGN_TEMPLATE_HOLD_S": "0"}) == 0
    for bad in ("abc", "-1", "86401"):
        with pytest.raises(SpecError, match="CAMPAIGN_TEMPLATE_HOLD_S: .* is not a number of seconds from 0 to 86400"):
            hold_seconds({"CAMPAIGN_TEMPLATE_HOLD_S": bad})


def test_approved_again_needs_a_stop_in_the_registry_first(sqlite_db: Store) -> None:
    _template(sqlite_db)
    clock = itertools.count(step=0.5).__next__  # a clock the loop advances itself: no waiting in the test
    mark = T.mark(sqlite_db)
    # Stopped by a 132015 answer before the PAUSED webhook came: APPROVED in the registry is not "again".
    assert not wait_for_reapproval(sqlite_db, T, mark, ingest=None, hold_s=5, clock=clock, sleep=lambda _: None)
    # Both webhooks ingested in one go: the recorded PAUSED counts.
    _webhook(sqlite_db, "PAUSED")
    _webhook(sqlite_db, "APPROVED")
    assert wait_for_reapproval(sqlite_db, T, mark, ingest=None, hold_s=5, clock=clock, sleep=lambda _: None)
    # Still PAUSED when the hold runs out.
    _webhook(sqlite_db, "PAUSED")
    assert not wait_for_reapproval(sqlite_db, T, T.mark(sqlite_db), ingest=None, hold_s=3, clock=clock,
                                   sleep=lambda _: None)


def test_resumptions_per_run_are_bounded(sqlite_db: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    _template(sqlite_db)
    passes: list[int] = []

    def paused_then_approved() -> DispatchResult:  # the provider pauses it on every pass, and approves it again
        passes.append(1)
        _webhook(sqlite_db, "PAUSED")
        _webhook(sqlite_db, "APPROVED")
        return DispatchResult(total=10, sent=1, stopped_reason=STOP, errors={"132015": 1})

    result, resumed = dispatch_with_holds(sqlite_db, paused_then_approved, T, ingest=None, hold_s=5)
    assert (len(passes), resumed) == (11, 10)  # CAMPAIGN_TEMPLATE_RESUMES' default
    assert (result.total, result.sent, result.errors, result.stopped_reason) == (10, 11, {"132015": 11}, STOP)
    monkeypatch.setenv("CAMPAIGN_TEMPLATE_RESUMES", "2")
    passes.clear()
    assert dispatch_with_holds(sqlite_db, paused_then_approved, T, ingest=None, hold_s=5)[1] == 2
    assert len(passes) == 3
    monkeypatch.setenv("CAMPAIGN_TEMPLATE_RESUMES", "0")
    with pytest.raises(SpecError, match="CAMPAIGN_TEMPLATE_RESUMES"):
        dispatch_with_holds(sqlite_db, paused_then_approved, T, ingest=None, hold_s=5)
    monkeypatch.delenv("CAMPAIGN_TEMPLATE_RESUMES")
    # A stop that is not the template's (a lane, the budget) never holds.
    passes.clear()
    lane = DispatchResult(stopped_reason="budget of USD 1.00 reached")
    assert dispatch_with_holds(sqlite_db, lambda: passes.append(1) or lane, T, ingest=None, hold_s=5)[1] == 0


def test_due_waits_are_the_approved_ones_with_a_deployment_at_most_the_setting(
        db: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    _template(db, still_paused="PAUSED")
    start = datetime(2026, 12, 6, 9, tzinfo=UTC)
    for i in range(3):
        record_wait(db, Wait(campaign_id=f"c{i}", target=T, reason=STOP, deployment_id="d",
                             parameters={"spec_path": f"c{i}.yaml"}, stopped_at=start + timedelta(minutes=i)))
    record_wait(db, Wait(campaign_id="manual", target=T, reason=STOP, deployment_id=None, stopped_at=start))
    record_wait(db, Wait(campaign_id="paused", target=Target("whatsapp", "waba", "still_paused", "en_US"),
                         reason=STOP, deployment_id="d", stopped_at=start))
    monkeypatch.setenv("CAMPAIGN_MAX_REAPPROVAL_RUNS", "2")
    due = due_waits(db)
    assert [w.campaign_id for w in due] == ["c0", "c1"] and due[0].parameters == {"spec_path": "c0.yaml"}
    assert all(mark_continued(db, w, f"run-{w.campaign_id}") for w in due)
    assert not mark_continued(db, due[0], "again")  # once
    assert [w.campaign_id for w in due_waits(db)] == ["c2"]
    assert [w.campaign_id for w in due_waits(db, "c1")] == []
