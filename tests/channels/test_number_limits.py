"""A number's messaging limit (docs/providers.md §1.6): read from `whatsapp_business_manager_messaging_limit` (the
deprecated `messaging_limit_tier` only when an answer carries nothing else), changed by Meta's
`business_capability_update` for every number of the account and by `phone_number_quality_update` UPGRADE /
DOWNGRADE, which are limit changes that never pause a lane (§1.8: quality no longer lowers the limit)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.channels import templates as registry
from pipeline.channels.whatsapp_account_webhooks import MARKERS, mentions_updates, parse_updates
from pipeline.channels.whatsapp_manage import MetaManagement
from pipeline.channels.whatsapp_webhooks import MalformedPayload
from pipeline.receipts.ingest import ingest_spool
from pipeline.sandbox.whatsapp import create_app
from pipeline.sandbox.whatsapp_templates import SandboxNumber
from pipeline.servers import serve_in_thread
from pipeline.store import Store
from tests.helpers.receipts import line, write_spool
from tests.helpers.whatsapp import TOKEN, config

WABA = "102290129340398"
AT = 4102444800  # 2100-01-01: after any sync's changed_at
A, B = ("106540352242922", "15550783881"), ("106540352242923", "15550783882")


def _webhook(field: str, value: dict[str, Any], account: str = WABA) -> bytes:
    return json.dumps({"object": "whatsapp_business_account", "entry": [
        {"id": account, "time": AT, "changes": [{"field": field, "value": value}]}]}).encode()


def _numbers(db: Store, account: str = WABA, quality: str = "GREEN") -> None:
    registry.store_numbers(db, "whatsapp", account, [registry.ProviderNumber(
        provider="whatsapp", account=account, phone_number_id=i, display_phone_number=phone, status="CONNECTED",
        quality_rating=quality, messaging_limit_tier="TIER_10K") for i, phone in (A, B)])


def _apply(db: Store, body: bytes) -> int:
    with db.write() as conn:
        return registry.apply_updates(conn, parse_updates(body))


def _state(db: Store, account: str = WABA) -> dict[str, tuple[str | None, str | None, str | None]]:
    return {n.phone_number_id: (n.quality_rating, n.status, n.messaging_limit_tier)
            for n in registry.numbers(db, "whatsapp") if n.account == account}


def test_a_downgrade_sets_the_tier_and_leaves_the_lane_running(db: Store) -> None:
    _numbers(db)
    body = _webhook("phone_number_quality_update", {"display_phone_number": B[1], "event": "DOWNGRADE",
                                                    "old_limit": "TIER_10K", "current_limit": "TIER_2K"})
    assert _apply(db, body) == 1
    assert _state(db) == {A[0]: ("GREEN", "CONNECTED", "TIER_10K"), B[0]: ("GREEN", "CONNECTED", "TIER_2K")}
    number = next(n for n in registry.numbers(db, "whatsapp") if n.phone_number_id == B[0])
    assert number.lane_verdict(0.5) == (1.0, None) and number.messaging_limit == 2_000
    assert _apply(db, body) == 0  # a replay
    # v24+ names the limit max_daily_conversations_per_business (current_limit is deprecated), here as a number.
    _apply(db, _webhook("phone_number_quality_update", {"display_phone_number": A[1], "event": "DOWNGRADE",
                                                         "max_daily_conversations_per_business": "250"}))
    assert _state(db)[A[0]] == ("GREEN", "CONNECTED", "TIER_250")


def test_an_upgrade_keeps_the_quality_the_quality_signal_set(db: Store) -> None:
    _numbers(db, quality="YELLOW")
    _apply(db, _webhook("phone_number_quality_update", {"display_phone_number": A[1], "event": "UPGRADE",
                                                         "current_limit": "TIER_100K"}))
    assert _state(db)[A[0]] == ("YELLOW", "CONNECTED", "TIER_100K")
    # FLAGGED still pauses the lane (the quality rule), and a throughput level is not a messaging limit.
    _apply(db, _webhook("phone_number_quality_update", {"display_phone_number": A[1], "event": "FLAGGED"}))
    _apply(db, _webhook("phone_number_quality_update", {"display_phone_number": B[1], "event": "THROUGHPUT_UPGRADE",
                                                         "current_limit": "TIER_UNLIMITED"}))
    assert _state(db) == {A[0]: ("RED", "FLAGGED", "TIER_100K"), B[0]: ("YELLOW", "CONNECTED", "TIER_10K")}
    assert registry.numbers(db, "whatsapp")[0].lane_verdict(0.5)[0] == 0.0


def test_business_capability_update_sets_the_limit_of_every_number_of_the_account(db: Store) -> None:
    _numbers(db)
    _numbers(db, account="999")
    body = _webhook("business_capability_update", {"max_daily_conversations_per_business": 2000,
                                                   "max_phone_numbers_per_business": 2})
    assert mentions_updates(body) and any(m in body for m in MARKERS)
    (update,) = parse_updates(body)
    assert (update.kind, update.account, update.limit_tier) == ("number_limit", WABA, "TIER_2K")
    assert _apply(db, body) == 2 and _apply(db, body) == 0
    assert {n: s[2] for n, s in _state(db).items()} == {A[0]: "TIER_2K", B[0]: "TIER_2K"}
    assert {s[2] for s in _state(db, "999").values()} == {"TIER_10K"}  # another account's numbers
    _apply(db, _webhook("business_capability_update", {"max_daily_conversations_per_business": -1}))
    assert {n.messaging_limit_tier: n.messaging_limit for n in registry.numbers(db, "whatsapp")
            if n.account == WABA} == {"TIER_UNLIMITED": None}


def test_business_capability_update_shapes() -> None:
    # Only the deprecated name (before v24): still the limit; no limit at all (phone-number counts): no update.
    (old,) = parse_updates(_webhook("business_capability_update", {"max_daily_conversation_per_phone": 10000}))
    assert old.limit_tier == "TIER_10K"
    assert parse_updates(_webhook("business_capability_update", {"max_phone_numbers_per_waba": 25})) == []
    for bad in (4000, {"tier": 2000}):  # an unknown limit would read as unlimited: quarantined instead
        with pytest.raises(MalformedPayload, match="business_capability_update: messaging limit"):
            parse_updates(_webhook("business_capability_update", {"max_daily_conversations_per_business": bad}))


@pytest.mark.parametrize("bulk", [True, False])
def test_ingest_applies_a_spooled_business_capability_update(db: Store, tmp_path: Path, bulk: bool) -> None:
    _numbers(db)
    write_spool(tmp_path / "sp", "1", [line(_webhook("business_capability_update",
                                                     {"max_daily_conversations_per_business": 100000}))])
    result = ingest_spool(db, tmp_path / "sp", bulk=bulk)
    assert result.registry_updates == 2 and not db.scalar("SELECT count(*) FROM quarantine")
    assert {s[2] for s in _state(db).values()} == {"TIER_100K"}


def _management(answer: dict[str, Any], asked: list[str]) -> MetaManagement:
    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.params["fields"])
        return httpx.Response(200, json={"data": [{"id": "1", "display_phone_number": "15550000001", **answer}]})

    return MetaManagement(base_url="https://graph.invalid", api_version="v23.0", waba_id=WABA, access_token="t",
                          transport=httpx.MockTransport(handler))


def test_the_number_listing_asks_for_and_reads_the_new_limit_field() -> None:
    asked: list[str] = []
    with _management({"whatsapp_business_manager_messaging_limit": "TIER_2K"}, asked) as api:
        assert api.numbers()[0].messaging_limit_tier == "TIER_2K"
    fields = asked[0].split(",")
    assert "whatsapp_business_manager_messaging_limit" in fields and "messaging_limit_tier" not in fields
    with _management({"whatsapp_business_manager_messaging_limit": "10000", "messaging_limit_tier": "TIER_1K"},
                     asked) as api:
        assert api.numbers()[0].messaging_limit_tier == "TIER_10K"  # the new field wins, as a number too
    with _management({"messaging_limit_tier": "TIER_1K"}, asked) as api:
        assert api.numbers()[0].messaging_limit_tier == "TIER_1K"  # an answer carrying only the old field


def test_the_sandbox_answers_the_limit_under_the_field_asked_for() -> None:
    app = create_app(config(phone_numbers=[SandboxNumber(id="111", messaging_limit_tier="TIER_2K")]))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, trust_env=False) as client:
        got = client.get(f"/v23.0/{WABA}/phone_numbers", params={
            "fields": "display_phone_number,whatsapp_business_manager_messaging_limit"},
            headers={"Authorization": f"Bearer {TOKEN}"}).json()["data"]
    assert got == [{"id": "111", "display_phone_number": "15550783881",
                    "whatsapp_business_manager_messaging_limit": "TIER_2K"}]
