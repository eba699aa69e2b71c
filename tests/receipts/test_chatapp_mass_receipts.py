"""ChatApp mass sends (SendChatappMassMessage): one TaskId for up to 1,000 recipients, yet each status
callback resolves to that recipient's own message, from the sandbox through the real dispatcher, the
receiver's spool and ingest into the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from pipeline import store
from pipeline.channels import chatapp_webhooks
from pipeline.channels.chatapp import MASS_PREFIX
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.spool import encode_record
from pipeline.sandbox.chatapp import create_chatapp_app
from pipeline.servers import serve_in_thread
from pipeline.spec import RateSpec, RetrySpec
from tests.helpers.channels import dispatch, drain
from tests.helpers.providers import CHATAPP_ENV, CHATAPP_TOKEN, chatapp_channel, chatapp_config, chatapp_queue, set_env
from tests.helpers.receipts import add_messages, count, spooling_receiver, write_spool


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, CHATAPP_ENV)


MASS = {"provider": {"options": {"channel_type": "whatsapp", "cust_space_id": "cams-8c8test", "mass_send": True}}}


def test_mass_send_receipts_resolve_to_each_recipients_message(db: store.Store, tmp_path) -> None:
    spool = tmp_path / "spool"
    refused = "6591000004"  # accepted within the batch, then reported Failed
    with spooling_receiver(spool, {"CHATAPP_CALLBACK_TOKEN": CHATAPP_TOKEN}) as receiver:
        config = chatapp_config(webhook_url=f"{receiver}/webhooks/chatapp", fail_rate=0.1, read_rate=0.5,
                         invalid_recipients=frozenset({refused}))
        app = create_chatapp_app(config)
        with serve_in_thread(app) as url:
            channel = chatapp_channel(url, **MASS)
            chatapp_queue(db, channel, 40)
            result = dispatch(db, channel)
            drain(url)
    stats = app.state.sandbox.ledger.snapshot()
    assert result.sent == 40 and stats["accepted"] == 40 and stats["calls"] < 40  # batches went out as mass sends

    ingested = ingest_spool(db, spool)
    assert ingested.quarantined == 0 and ingested.events_added > 40
    # Every receipt names the mass send's TaskId and the recipient, and resolves to our message.
    unresolved = db.scalar("SELECT count(*) FROM events WHERE message_id IS NULL")
    assert unresolved == 0
    assert {pid.split(":")[0].startswith(MASS_PREFIX) for (pid,) in
            db.rows("SELECT DISTINCT provider_message_id FROM events")} == {True}
    fate = {m["to"]: m["outcome"] for m in stats["messages"]}
    got = dict(db.rows("SELECT o.recipient_key, s.status FROM outbox o JOIN message_status s USING (message_id)"))
    assert got == {f"+{to}": outcome for to, outcome in fate.items()}
    assert got[f"+{refused}"] == "failed"
    codes = db.rows("SELECT s.error_code FROM message_status s JOIN outbox o USING (message_id)"
                    " WHERE o.recipient_key = :key", key=f"+{refused}")
    assert [tuple(c) for c in codes] == [("InvalidParameter.PhoneNumberError",)]
    # Replaying the spool changes nothing.
    db.execute("DELETE FROM spool_files")
    assert ingest_spool(db, spool).events_added == 0


def test_a_mass_report_names_the_recipient_as_the_send_stored_it() -> None:
    # Sent as digits (Alibaba's form for WhatsApp/Viber numbers); a report may carry the "+" form.
    task = MASS_PREFIX + "0" * 32
    reports = [{"Status": "Delivered", "TaskId": task, "To": to, "MessageId": "m", "Timestamp": 1764000000000}
               for to in ("6591000001", "+6591000002", " 6591000003 ")]
    receipts, _ = chatapp_webhooks.parse(json.dumps(reports).encode())
    assert [r.provider_message_id for r in receipts] == [f"{task}:659100000{i}" for i in (1, 2, 3)]
    assert {r.message_id for r in receipts} == {None}


def test_reports_that_arrive_before_the_send_is_recorded_resolve_on_a_later_ingest(
    db: store.Store, tmp_path
) -> None:
    task = MASS_PREFIX + "1" * 32
    add_messages(db, "m-1", recipient="+6591000001", channel="chatapp", sender="S", state="sending")
    report = {"Status": "Delivered", "TaskId": task, "To": "6591000001", "MessageId": "a1", "Timestamp": 1764000000000}
    write_spool(tmp_path / "sp", "1", [encode_record("chatapp", json.dumps([report]).encode())])
    first = ingest_spool(db, tmp_path / "sp")
    assert (first.events_added, first.unmatched) == (0, 1)  # kept apart until its message is known
    assert count(db, "events") == 0
    # The dispatcher records the mass send's outcome; the next collect pass links without a new file.
    db.execute("UPDATE outbox SET state = 'sent', provider_message_id = :pid WHERE message_id = 'm-1'",
               pid=f"{task}:6591000001")
    assert ingest_spool(db, tmp_path / "sp").promoted == 1
    assert [tuple(r) for r in db.rows("SELECT message_id, status FROM message_status")] == [("m-1", "delivered")]


class _AnswerLostOnce(httpx.AsyncBaseTransport):
    """The real network to the sandbox, except that the first mass send's answer is lost: the
    sandbox accepted it, the client sees a read timeout (as when a proxy drops the response)."""

    def __init__(self) -> None:
        self.network = httpx.AsyncHTTPTransport()
        self.lost: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.network.handle_async_request(request)
        if request.headers.get("x-acs-action") == "SendChatappMassMessage" and not self.lost:
            await response.aread()
            self.lost.append(response.json()["GroupMessageId"])
            raise httpx.ReadTimeout("answer lost", request=request)
        return response

    async def aclose(self) -> None:  # the dispatcher's client closes its transport: the network's connections too
        await self.network.aclose()


def test_a_mass_send_whose_answer_is_lost_is_settled_from_receipts_not_sent_twice(
    db: store.Store, tmp_path
) -> None:
    spool = tmp_path / "spool"
    transport = _AnswerLostOnce()
    with spooling_receiver(spool, {"CHATAPP_CALLBACK_TOKEN": CHATAPP_TOKEN}) as receiver:
        app = create_chatapp_app(chatapp_config(webhook_url=f"{receiver}/webhooks/chatapp", read_rate=0.0))
        with serve_in_thread(app) as url:
            channel = chatapp_channel(url, **MASS)
            chatapp_queue(db, channel, 40)
            result = asyncio.run(dispatch_campaign(
                db, "t", channel, rate=RateSpec(max_per_second=1000, concurrency=2), timeout_s=5,
                retry=RetrySpec(max_attempts=5, base_delay_s=0.02, deadline_s=60, reconcile_grace_s=20),
                reconcile=lambda: ingest_spool(db, spool), transport=transport))
            drain(url)
    stats = app.state.sandbox.ledger.snapshot()
    assert transport.lost  # a mass send's answer was lost ...
    # ... yet every recipient got exactly one message, and the lost batch was settled by its receipts.
    sent_to = [m["to"] for m in stats["messages"]]
    assert len(sent_to) == 40 and len(set(sent_to)) == 40
    assert result.sent == 40 and result.reconciled_sent >= 2 and result.resent_after_timeout == 0
    states = dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY state"))
    assert states == {"sent": 40}
    ingest_spool(db, spool)
    assert db.scalar("SELECT count(*) FROM events WHERE message_id IS NULL") == 0
