"""Chat App's template review pushes (ChatAppAudit, docs/providers.md §3.8) into the registry: parsed from the
documented V1 / V2 shape, resolved by TemplateCode to the template a sync listed, applied by receipts ingest, and
read by the dispatcher's watch — end to end from the Chat App sandbox through the receiver and its spool."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from pipeline.channels import chatapp_webhooks
from pipeline.channels import templates as registry
from pipeline.channels.chatapp_webhooks import MalformedPayload, parse, parse_updates
from pipeline.channels.template_sync import sync
from pipeline.dispatch.template_watch import TemplateWatch
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.chatapp import create_chatapp_app
from pipeline.sandbox.whatsapp_templates import SandboxTemplate
from pipeline.servers import serve_in_thread
from pipeline.spec import parse_spec
from pipeline.store import Store
from tests.helpers.providers import CHATAPP_ENV, CHATAPP_SPEC, CHATAPP_TOKEN, chatapp_config, set_env
from tests.helpers.waiting import wait_for

AT = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def test_the_documented_shapes_become_status_updates_and_nothing_else() -> None:
    body = json.dumps([
        {"WabaId": "90999999901", "TemplateCode": "744000000001", "Language": "en", "AuditStatus": "paused",
         "Reason": ""},
        {"WabaId": "90999999901", "TemplateCode": "744000000002", "Language": "en_US", "AuditStatus": "fail",
         "Reason": "INVALID_FORMAT", "Type": "template"},
        # V2 notices about a number or the WABA, and a category change whose new value the docs do not name.
        {"WabaId": "90999999901", "Type": "phoneQualityUpdate", "PhoneNumber": "8613100000001", "Status": "RED"},
        {"WabaId": "90999999901", "Type": "templateCategoryUpdate", "TemplateCode": "744000000001",
         "Language": "en", "AuditStatus": "pass"},
    ]).encode()
    assert chatapp_webhooks.mentions_updates(body)
    updates = parse_updates(body, AT)
    assert [(u.template_id, u.language, u.kind, u.value, u.reason, u.at) for u in updates] == [
        ("744000000001", "en", "status", "PAUSED", None, AT),
        ("744000000002", "en_US", "status", "REJECTED", "INVALID_FORMAT", AT)]
    assert all(u.name is None for u in updates)  # named by the registry, from the TemplateCode
    assert parse(body) == ([], [])  # not receipts, and not malformed for the receipts parser either
    for status, value in (("pass", "APPROVED"), ("auditing", "PENDING"), ("unaudit", "PENDING"),
                          ("disabled", "DISABLED")):
        one = json.dumps({"WabaId": "1", "TemplateCode": "7", "Language": "en", "AuditStatus": status}).encode()
        assert [u.value for u in parse_updates(one, AT)] == [value]
    with pytest.raises(MalformedPayload, match=r"\[0\]\.AuditStatus: unknown review status 'approvedish'"):
        parse_updates(b'[{"WabaId": "1", "TemplateCode": "7", "Language": "en", "AuditStatus": "approvedish"}]', AT)
    with pytest.raises(MalformedPayload, match=r"\[0\]\.TemplateCode"):
        parse_updates(b'[{"WabaId": "1", "Language": "en", "AuditStatus": "pass"}]', AT)
    # A status push is not an audit push.
    assert not chatapp_webhooks.mentions_updates(b'[{"Status": "Sent", "MessageId": "m", "Timestamp": 1}]')


def test_a_pushed_review_status_reaches_the_registry_and_the_watch(db: Store, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, {**CHATAPP_ENV, "CHATAPP_CALLBACK_TOKEN": CHATAPP_TOKEN})
    spool = tmp_path / "spool"
    spool.mkdir()
    spec = parse_spec({**CHATAPP_SPEC, "provider": {"options": {**CHATAPP_SPEC["provider"]["options"],
                                                                "template_registry": True}}})
    body = {"type": "BODY", "text": "Hi {{1}}."}
    with serve_in_thread(create_receiver_app(spool, secrets_from_env(), rotate_after_s=0.2)) as hook:
        cfg = chatapp_config(template_set=[SandboxTemplate(name="promo_v1", language="en", components=[body]),
                                           SandboxTemplate(name="other", language="en", components=[body])],
                             webhook_url=f"{hook}/webhooks/chatapp")
        with serve_in_thread(create_chatapp_app(cfg)) as url:
            sync(db, spec, base_url=url)
            code = registry.template(db, "chatapp", "promo_v1", "en").template_id
            watch = TemplateWatch(db, provider="chatapp", account="cams-8c8test", name="promo_v1", language="en",
                                  senders=[spec.sender], ingest=lambda: ingest_spool(db, spool))
            watch.poll()
            assert watch.reason is None
            with httpx.Client(base_url=url, trust_env=False) as client:
                assert client.post(f"/_sandbox/templates/{code}", json={"status": "PAUSED"}).json()["posted"]

                def stopped() -> str | None:
                    watch.poll()
                    return watch.reason

                reason = wait_for(stopped, timeout_s=30, what="the ChatAppAudit push to stop the watch")
                assert reason.startswith("template: promo_v1 [en] is PAUSED at chatapp")
                assert client.post(f"/_sandbox/templates/{code}", json={"status": "APPROVED"}).json()["posted"]
                wait_for(lambda: ingest_spool(db, spool) is not None and registry.template(
                    db, "chatapp", "promo_v1", "en").status == "APPROVED", timeout_s=30,
                    what="the APPROVED push in the registry")
    assert registry.template(db, "chatapp", "other", "en").status == "APPROVED"  # only the template it named
    pushed = [(h.old_value, h.new_value) for h in registry.history(db, "chatapp", "promo_v1") if h.source == "webhook"]
    assert pushed == [("APPROVED", "PAUSED"), ("PAUSED", "APPROVED")]
    assert db.scalar("SELECT count(*) FROM quarantine") == 0
