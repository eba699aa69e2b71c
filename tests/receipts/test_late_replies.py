"""Replies and taps that come before their message is recorded (SQLite and PostgreSQL): a context id the outbox
does not hold yet leaves the reply waiting, not linked to an older message of the same sender; a later ingest links
it once the message appears (as unmatched.py does for receipts); a context that never appears falls back, after
CAMPAIGN_REPLY_LINK_WAIT_S, to the sender's last message."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline import store
from pipeline.costs.engagement import engagement
from pipeline.dispatch.outbox import register_campaign
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.replies import link_replies
from pipeline.spec import SpecError, load_spec
from tests.helpers.receipts import add_messages, body, line, write_spool


def _tap(sender: str, mid: str, at: int, context: str) -> dict:
    return {"from": sender, "id": mid, "timestamp": str(at), "type": "button",
            "context": {"from": "1555", "id": context}, "button": {"payload": "STOP_PROMOS", "text": "Stop promotions"}}


def _links(db: store.Store) -> dict[str, tuple]:
    return {e: (linked, m, c) for e, linked, m, c in db.rows("SELECT event_id, linked, message_id, campaign_id "
                                                              "FROM replies")}


def test_a_reply_before_its_message_is_linked_once_the_message_appears(db: store.Store, tmp_path: Path) -> None:
    register_campaign(db, load_spec("campaigns/welcome.yaml"), "c1")
    now = int(time.time())
    # An older campaign's message to the same person: a reply naming another message must not land on it.
    add_messages(db, "old", campaign="c0", recipient="+12015520801", provider_ids=["wamid.old"],
                 sent_at=datetime.fromtimestamp(now - 3600, tz=UTC))
    write_spool(tmp_path / "sp", "1", [line(body(messages=[_tap("12015520801", "wamid.t1", now, "wamid.late")]))])
    first = ingest_spool(db, tmp_path / "sp")
    assert (first.inbound_added, first.suppressions_added, first.replies_linked) == (1, 1, 0)  # suppressed already
    event = next(iter(_links(db)))
    assert _links(db)[event] == (False, None, None)
    assert ingest_spool(db, tmp_path / "sp").replies_linked == 0  # still waiting, looked at again
    # The dispatcher records the message (and the provider id the tap named) after the tap came.
    add_messages(db, "m-late", campaign="c1", recipient="+12015520801", provider_ids=["wamid.late"],
                 sent_at=datetime.fromtimestamp(now - 5, tz=UTC))
    assert ingest_spool(db, tmp_path / "sp").replies_linked == 1
    assert _links(db)[event] == (True, "m-late", "c1")
    assert engagement(db, "c1")["taps"] == {"STOP_PROMOS": 1}
    assert engagement(db, "c0")["replies"] == 0


def test_a_context_that_never_appears_falls_back_after_the_wait(db: store.Store, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    add_messages(db, "last", campaign="c0", recipient="+12015520802", provider_ids=["wamid.last"],
                 sent_at=now - timedelta(hours=1))
    write_spool(tmp_path / "sp", "1", [line(body(messages=[
        _tap("12015520802", "wamid.t2", int(now.timestamp()), "wamid.someone-elses")]))])
    ingest_spool(db, tmp_path / "sp")
    assert list(_links(db).values()) == [(False, None, None)]
    wait = {"CAMPAIGN_REPLY_LINK_WAIT_S": "600"}
    assert link_replies(db, now=now + timedelta(seconds=599), environ=wait) == 0
    assert link_replies(db, now=now + timedelta(seconds=601), environ=wait) == 1
    assert list(_links(db).values()) == [(True, "last", "c0")]
    assert link_replies(db, now=now + timedelta(days=9), environ=wait) == 0  # linked: not looked at again


def test_more_waiting_replies_than_a_page_are_all_looked_at(db: store.Store, tmp_path: Path) -> None:
    now = int(time.time())
    write_spool(tmp_path / "sp", "1", [line(body(messages=[
        _tap(f"1201552090{i}", f"wamid.w{i}", now, f"wamid.c{i}") for i in range(5)]))])
    ingest_spool(db, tmp_path / "sp")
    add_messages(db, "m4", campaign="c1", recipient="+12015520904", provider_ids=["wamid.c4"],
                 sent_at=datetime.fromtimestamp(now - 5, tz=UTC))
    # Pages of 2: the four waiting ones before it do not hide the fifth, whose message appeared.
    assert link_replies(db, batch=2) == 1
    assert sorted(m for _, m, _ in _links(db).values() if m) == ["m4"]


def test_the_wait_setting_is_checked(db: store.Store) -> None:
    for bad in ("0", "-5", "soon"):
        with pytest.raises(SpecError, match="CAMPAIGN_REPLY_LINK_WAIT_S"):
            link_replies(db, environ={"CAMPAIGN_REPLY_LINK_WAIT_S": bad})
