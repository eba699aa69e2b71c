"""Properties of every webhook parser (pipeline/channels/*_webhooks.py): a body that passes its provider's
signature check — arbitrary bytes, arbitrary JSON, or a real payload with any of its values replaced — is
parsed or refused with the module's MalformedPayload, never another exception; and through ingest every
such line is stored or quarantined with a reason, the bulk SQL parser agreeing with the reference one (in fresh
SQLite stores, one per example and parser: the parsers are the subject; tests/receipts/test_ingest_bulk.py compares
them on both stores)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipeline.channels.alibaba_sms_webhooks as alibaba_sms_webhooks
import pipeline.channels.chatapp_webhooks as chatapp_webhooks
import pipeline.channels.email_webhooks as email_webhooks
import pipeline.channels.messenger_webhooks as messenger_webhooks
import pipeline.channels.twilio_webhooks as twilio_webhooks
import pipeline.channels.unsubscribe_webhooks as unsubscribe_webhooks
import pipeline.channels.viber_webhooks as viber_webhooks
import pipeline.channels.whatsapp_webhooks as whatsapp_webhooks
from pipeline import store
from pipeline.channels.email import unsubscribe_token
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.spool import encode_record
from pipeline.receipts.staging import PARSERS
from pipeline.receipts.unmatched import COLUMNS
from tests.helpers.receipts import write_spool

SECRET = "property-test-secret"
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- what a signed body may hold ------------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30)
           | st.sampled_from(["", "0", "-1", "1e400", "1750030073", "1750030073000", "2026-11-25 10:00:00",
                              "2026-11-25T10:00:00Z", "delivered", "read", "failed", "sent", "131050",
                              "<m-1@x.test>", "+447700900123", "mass-0:1", "watermark:1:2", "\u0000", "ü退订"]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                          max_size=4), max_leaves=25)


def mutated(template: Any) -> st.SearchStrategy[Any]:
    """`template` with any of its values (at any depth) kept, replaced by arbitrary JSON, or removed."""
    if isinstance(template, dict):
        items = [st.one_of(st.just((k, v)), st.tuples(st.just(k), mutated(v)), st.just(None))
                 for k, v in template.items()]
        return st.tuples(*items).map(lambda kv: {k: v for k, v in (p for p in kv if p is not None)}) | JSON
    if isinstance(template, list):
        return st.lists(st.one_of(*(mutated(v) for v in template)), max_size=3) | JSON
    return st.one_of(st.just(template), JSON)


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


STATUS = {"id": "wamid.1", "status": "delivered", "timestamp": "1750030073", "recipient_id": "16505551234",
          "biz_opaque_callback_data": "m-1", "conversation": {"id": "c", "origin": {"type": "marketing"}},
          "pricing": {"billable": True, "category": "marketing", "type": "regular", "pricing_model": "PMP"},
          "errors": [{"code": 131050, "title": "t", "message": "m", "error_data": {"details": "d"}}]}
INBOUND = {"from": "16505551234", "id": "wamid.in", "timestamp": "1750030073", "type": "text", "text": {"body": "STOP"}}
TEMPLATES: dict[str, Any] = {
    "whatsapp": {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
                 "value": {"messaging_product": "whatsapp", "statuses": [STATUS], "messages": [INBOUND]}}]}]},
    "messenger": {"object": "page", "entry": [{"id": "p", "time": 1750030073000, "messaging": [
        {"sender": {"id": "u"}, "recipient": {"id": "p"}, "timestamp": 1750030073000,
         "delivery": {"mids": ["m1"], "watermark": 1750030073000}},
        {"sender": {"id": "u"}, "recipient": {"id": "p"}, "timestamp": 1750030073000, "read": {"watermark": 1}},
        {"sender": {"id": "u"}, "recipient": {"id": "p"}, "timestamp": 1750030073000,
         "message": {"mid": "m2", "text": "stop"}}]}]},
    "viber": {"event": "failed", "timestamp": 1750030073000, "message_token": 491266184665523145, "user_id": "u=",
              "desc": "d", "sender": {"id": "u"}, "message": {"text": "hi"}},
    "chatapp": [{"Status": "Failed", "TaskId": "m-1", "MessageId": "a1", "To": "6591000001", "From": "S",
                 "Timestamp": 1750030073000, "ErrorCode": "E", "ErrorDescription": "d", "ConversationType": "utility"}],
    "alibaba_sms": [{"phone_number": "8613800000000", "success": False, "err_code": "DELIVERED", "err_msg": "m",
                     "biz_id": "1", "out_id": "m-1", "send_time": "2026-11-25 10:00:00",
                     "report_time": "2026-11-25 10:00:05", "sms_size": "1"}],
    "email": {"object": "email_report", "reports": [{"event": "bounced", "message_id": "<m-1@x.test>",
                                                     "queue_id": "q", "timestamp": "2026-11-25T10:00:00Z",
                                                     "recipient": "a@x.test", "code": "5.1.1", "detail": "d"}]},
}
TWILIO_FIELDS = ["MessageSid", "MessageStatus", "To", "From", "Body", "SmsStatus", "ErrorCode", "ErrorMessage",
                 "RawDlrDoneDate", "_received_at", "_url"]


def body_strategy(provider: str) -> st.SearchStrategy[bytes]:
    if provider == "twilio":
        form = st.dictionaries(st.sampled_from(TWILIO_FIELDS) | st.text(max_size=8), st.text(max_size=20), max_size=8)
        return form.map(lambda f: urlencode(f).encode()) | st.binary(max_size=300)
    if provider == "unsubscribe":
        return st.builds(_unsubscribe_record, st.text(max_size=30), st.text(max_size=30), st.text(max_size=8))
    return st.binary(max_size=300) | JSON.map(dumps) | mutated(TEMPLATES[provider]).map(dumps)


def _unsubscribe_record(address: str, at: str, channel: str) -> bytes:
    return dumps({"object": "unsubscribe", "channel": channel or "email", "address": address,
                  "token": unsubscribe_token(SECRET, address, channel or "email"), "at": at})


# --- signing and parsing, as the receiver and ingest do ---------------------------------------------------------

def _verified(provider: str, raw: bytes, url: str) -> bool:
    """The receiver's check on a body signed with the test secret."""
    if provider in ("whatsapp", "messenger", "instagram"):
        header = {"X-Hub-Signature-256": whatsapp_webhooks.sign(raw, SECRET)}
        return messenger_webhooks.verify(raw, header, SECRET)
    if provider == "viber":
        return viber_webhooks.verify(raw, {"X-Viber-Content-Signature": viber_webhooks.sign(raw, SECRET)}, SECRET)
    if provider == "email":
        return email_webhooks.verify(raw, {email_webhooks.SIGNATURE_HEADER: email_webhooks.sign(raw, SECRET)}, SECRET)
    if provider == "chatapp":
        return chatapp_webhooks.verify(raw, {chatapp_webhooks.TOKEN_HEADER: SECRET}, SECRET)
    if provider == "alibaba_sms":
        return alibaba_sms_webhooks.verify(raw, {alibaba_sms_webhooks.TOKEN_HEADER: SECRET}, SECRET)
    if provider == "twilio":
        try:  # Twilio signs the URL and the form's fields: a body that is no form cannot be signed
            params = twilio_webhooks._form(raw) if raw else []
        except twilio_webhooks.MalformedPayload:
            return False
        return twilio_webhooks.verify(raw, {"X-Twilio-Signature": twilio_webhooks.sign(url, params, SECRET)},
                                      SECRET, url=url)
    return unsubscribe_webhooks.verify(raw, {}, SECRET)


MODULES: dict[str, Any] = {
    "whatsapp": whatsapp_webhooks, "messenger": messenger_webhooks, "viber": viber_webhooks,
    "chatapp": chatapp_webhooks, "alibaba_sms": alibaba_sms_webhooks, "email": email_webhooks,
    "twilio": twilio_webhooks, "unsubscribe": unsubscribe_webhooks,
}
URL = "https://receiver.example/webhooks/twilio?mid=m-1"


def _spooled(provider: str, raw: bytes) -> bytes:
    """The record body the receiver spools for a verified request."""
    return twilio_webhooks.spool_body(raw, URL) if provider == "twilio" else raw


def _parse_never_raises(provider: str) -> Callable[[], None]:
    @PROPERTY
    @given(body_strategy(provider))
    def check(raw: bytes) -> None:
        if not _verified(provider, raw, URL):
            return  # not signed as the receiver requires (e.g. a Twilio body that is not a form)
        try:
            receipts, inbound = PARSERS[provider](_spooled(provider, raw))
        except MODULES[provider].MalformedPayload as exc:
            assert str(exc)  # a reason for the quarantine line
            return
        for item in [*receipts, *inbound]:
            assert item.provider and item.occurred_at.tzinfo is not None and item.raw_json
            assert not math.isnan(item.occurred_at.timestamp())

    return check


test_whatsapp_parser_never_raises = _parse_never_raises("whatsapp")
test_messenger_parser_never_raises = _parse_never_raises("messenger")
test_viber_parser_never_raises = _parse_never_raises("viber")
test_chatapp_parser_never_raises = _parse_never_raises("chatapp")
test_alibaba_sms_parser_never_raises = _parse_never_raises("alibaba_sms")
test_email_parser_never_raises = _parse_never_raises("email")
test_twilio_parser_never_raises = _parse_never_raises("twilio")
test_unsubscribe_parser_never_raises = _parse_never_raises("unsubscribe")


def test_signed_lines_are_ingested_or_quarantined_and_both_parsers_agree(tmp_path: Path) -> None:
    providers = sorted(MODULES)
    lines = st.lists(st.sampled_from(providers).flatmap(lambda p: st.tuples(st.just(p), body_strategy(p))),
                     min_size=1, max_size=12)
    runs = iter(range(10**6))

    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(lines)
    def check(batch: list[tuple[str, bytes]]) -> None:
        run = next(runs)
        records = [encode_record(p, _spooled(p, raw)) for p, raw in batch if _verified(p, raw, URL)]
        if not records:
            return
        tables = []
        for bulk in (True, False):
            spool = tmp_path / f"spool-{run}-{bulk}"
            write_spool(spool, "1", records)
            with store.connect(tmp_path / f"db-{run}-{bulk}.sqlite") as db:
                ingest_spool(db, spool, bulk=bulk)
                quarantined = db.rows("SELECT reason FROM quarantine")
                assert all(reason for (reason,) in quarantined)
                tables.append([sorted((tuple(r) for r in db.rows(sql)), key=repr) for sql in (
                    f"SELECT {COLUMNS} FROM events", f"SELECT {COLUMNS} FROM unmatched_events", "SELECT * FROM inbound",
                    "SELECT * FROM quarantine", "SELECT * FROM suppressions")])
        assert tables[0] == tables[1]

    check()
