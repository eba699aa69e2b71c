"""Meta's `user_preferences` webhook (docs/providers.md §1.9, §1.5 row 131050): a user who stops marketing messages is
suppressed on WhatsApp like a 131050 failure, by both parsers of the ingest, once; a resume records nothing (the store
lifts no suppression). Store-facing tests run on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from pipeline import store
from pipeline.channels.whatsapp_webhooks import MalformedPayload, Preference, parse_preferences, parse_webhook, sign
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.receiver import create_receiver_app
from pipeline.render.prepare import prepare_audience
from pipeline.servers import serve_in_thread
from tests.helpers.receipts import T0, body, line, second_store, status, write_spool

USER = "16505551234"
SUPPRESSED = ("whatsapp", "+16505551234", "marketing_opt_out", "user_preferences")


def pref(wa_id: str = USER, value: str = "stop", ts: object = T0, category: str = "marketing_messages") -> dict:
    detail = "User requested to stop marketing messages" if value == "stop" else "User requested to resume marketing"
    return {"wa_id": wa_id, "detail": detail, "category": category, "value": value, "timestamp": ts}


def prefs_body(*items: dict, extra_changes: list | None = None) -> bytes:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
             "contacts": [{"profile": {"name": "Jane"}, "wa_id": USER}], "user_preferences": list(items)}
    changes = [{"field": "user_preferences", "value": value}, *(extra_changes or [])]
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "102290129340398", "changes": changes}]}).encode()


def suppressions(db: store.Store) -> list[tuple]:
    return [tuple(r) for r in db.rows("SELECT channel, address, reason, source, since FROM suppressions "
                                      "ORDER BY channel, address")]


def test_stop_and_resume_are_parsed() -> None:
    raw = prefs_body(pref(ts=T0), pref(value="resume", ts=str(T0 + 60)))
    at = datetime.fromtimestamp(T0, tz=UTC)
    assert parse_preferences(raw) == [
        Preference(USER, "marketing_messages", "stop", at),
        Preference(USER, "marketing_messages", "resume", datetime.fromtimestamp(T0 + 60, tz=UTC)),
    ]
    assert parse_webhook(raw) == ([], [])  # neither a receipt nor an inbound message
    assert parse_preferences(body([status("wamid.A", "sent", T0)])) == []
    for broken in ({**pref(), "wa_id": None}, {**pref(), "timestamp": "yesterday"}, "stop"):
        with pytest.raises(MalformedPayload):
            parse_preferences(prefs_body(broken))  # type: ignore[arg-type]


def test_a_marketing_stop_is_suppressed_once_and_a_resume_records_nothing(db: store.Store, tmp_path: Path) -> None:
    write_spool(tmp_path / "sp", "1", [
        line(prefs_body(pref(ts=T0 + 5), pref(ts=T0))),  # Meta's retry within one POST: the earliest counts
        line(prefs_body(pref("16505550000", value="resume"))),  # never stopped: nothing to record
        line(prefs_body(pref("16505550001", category="offers"))),  # not a category we know
    ])
    result = ingest_spool(db, tmp_path / "sp")
    assert result.suppressions_added == 1 and result.quarantined == 0
    got = suppressions(db)
    assert [r[:4] for r in got] == [SUPPRESSED]
    assert store.utc(got[0][4]) == datetime.fromtimestamp(T0, tz=UTC)
    # A replay (Meta's re-delivery lands in another spool file) and a later resume add and remove nothing.
    write_spool(tmp_path / "sp", "2", [line(prefs_body(pref(ts=T0))),
                                       line(prefs_body(pref(value="resume", ts=T0 + 3600)))])
    assert ingest_spool(db, tmp_path / "sp").suppressions_added == 0
    assert suppressions(db) == got


def test_a_later_preparation_rejects_the_number(db: store.Store, tmp_path: Path) -> None:
    write_spool(tmp_path / "sp", "1", [line(prefs_body(pref()))])
    ingest_spool(db, tmp_path / "sp")
    audience = tmp_path / "a.csv"
    audience.write_text("phone,opt_in\n+1 650-555-1234,yes\n+16505551299,yes\n")
    reasons = store.suppression_reasons(db, "whatsapp")
    prepared = prepare_audience(audience, channel="whatsapp", category="marketing", suppressed=frozenset(reasons),
                                suppression_reasons=reasons)
    assert prepared.rejects.select("row_number", "detail").rows() == [
        (2, "on the whatsapp suppression list (opted out earlier: stopped marketing messages at the provider)")]


def test_bulk_and_reference_parser_agree(db: store.Store, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The bulk SQL leaves these lines to the reference parser, statuses beside a preference change included."""
    receipt = {"field": "messages", "value": {"statuses": [status("wamid.B", "sent", T0, message_id="m-B")]}}
    lines = [
        line(body([status("wamid.A", "delivered", T0, message_id="m-A")])),
        line(prefs_body(pref("16505550002", ts=T0 + 1), extra_changes=[receipt])),
        line(prefs_body(pref(), pref("16505550003", value="resume"))),
        line(prefs_body({**pref("16505550004"), "timestamp": "soon"}, extra_changes=[receipt])),  # quarantined
        # An escaped field name: still the field (DuckDB's JSON texts come back unescaped).
        line(prefs_body(pref("16505550005")).replace(b'"field": "user_preferences"',
                                                     b'"field": "user\\u005fpreferences"')),
    ]
    out = []
    with second_store(db, tmp_path, request) as reference:
        for bulk, into in ((True, db), (False, reference)):
            write_spool(tmp_path / f"sp-{bulk}", "1", lines)
            ingest_spool(into, tmp_path / f"sp-{bulk}", bulk=bulk)
            out.append({t: sorted((tuple(r) for r in into.rows(sql)), key=repr) for t, sql in (
                ("suppressions", "SELECT channel, address, reason, source, since FROM suppressions"),
                ("quarantine", "SELECT line_number, reason FROM quarantine"),
                ("receipts", "SELECT provider_message_id, status, occurred_at, raw_json FROM unmatched_events"))})
    assert out[0] == out[1]
    assert {r[1] for r in out[0]["suppressions"]} == {"+16505550002", "+16505551234", "+16505550005"}
    assert [r[0] for r in out[0]["quarantine"]] == [4]
    assert {r[0] for r in out[0]["receipts"]} == {"wamid.A", "wamid.B"}  # receipts of every line kept


def test_the_receiver_accepts_it_and_ingest_suppresses(sqlite_db: store.Store, tmp_path: Path) -> None:
    secrets = {"whatsapp_app_secret": "s3cret-app", "whatsapp_verify_token": "verify-me"}
    raw = prefs_body(pref())
    app = create_receiver_app(tmp_path / "spool", secrets)
    with serve_in_thread(app) as base:
        answer = httpx.post(base + "/webhooks/whatsapp", content=raw, headers={
            "X-Hub-Signature-256": sign(raw, secrets["whatsapp_app_secret"]), "Content-Type": "application/json"})
        assert answer.status_code == 200
    ingest_spool(sqlite_db, tmp_path / "spool")
    assert [r[:4] for r in suppressions(sqlite_db)] == [SUPPRESSED]
