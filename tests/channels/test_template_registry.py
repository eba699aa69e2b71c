"""The template and number registry: synced from the sandboxes' management APIs on loopback (Meta's paged
`message_templates` / `phone_numbers`, Chat App's ListChatappTemplate + GetChatappTemplateDetail +
QueryChatappPhoneNumbers), bounded, with changes kept; and `campaign templates sync | list | show`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.channels import templates as registry
from pipeline.channels.template_sync import sync
from pipeline.channels.templates import Limits, SyncError
from pipeline.sandbox.chatapp import create_chatapp_app
from pipeline.sandbox.whatsapp import create_app
from pipeline.sandbox.whatsapp_templates import SandboxNumber, SandboxTemplate
from pipeline.servers import serve_in_thread
from pipeline.spec import parse_spec
from pipeline.store import Store
from tests.helpers.providers import CHATAPP_ENV, CHATAPP_SPEC, chatapp_config, set_env
from tests.helpers.whatsapp import config

ROOT = Path(__file__).resolve().parents[2]
WABA = "102290129340398"
BODY2 = {"type": "BODY", "text": "Hi {{1}}, your code is {{2}}."}
SET = [SandboxTemplate(name=f"promo_{i}", components=[BODY2]) for i in range(7)] + [
    SandboxTemplate(name="promo_0", language="pt_BR", category="UTILITY", status="PENDING", components=[BODY2])]
NUMBERS = [SandboxNumber(id="111", display_phone_number="15550000111"),
           SandboxNumber(id="222", display_phone_number="15550000222", quality_rating="YELLOW",
                         messaging_limit_tier="TIER_2K")]
SPEC: dict[str, Any] = {
    "name": "t", "audience": "x.csv", "channel": "whatsapp", "sender": "111",
    "template": {"name": "promo_0", "language": "en_US", "category": "marketing", "text": "Hi", "body": ["a", "b"]},
    "provider": {"api_version": "v23.0", "options": {"waba_id": WABA}},
}


def _sandbox(**overrides: Any) -> Any:
    return create_app(config(template_set=SET, phone_numbers=NUMBERS, **overrides))


def test_meta_sync_reads_every_page_and_keeps_changes(db: Store) -> None:
    app = _sandbox()
    with serve_in_thread(app) as url:
        counts = sync(db, parse_spec(SPEC), base_url=url, limits=Limits(page_size=3))
        assert counts == {"templates": 8, "changed": 8, "deleted": 0, "numbers": 2}
        found = {(t.name, t.language): t for t in registry.templates(db, "whatsapp")}
        assert len(found) == 8 and found[("promo_0", "pt_BR")].status == "PENDING"
        assert found[("promo_3", "en_US")].components == [BODY2] and found[("promo_3", "en_US")].quality == "GREEN"
        assert found[("promo_3", "en_US")].category == "MARKETING" and found[("promo_3", "en_US")].account == WABA
        numbers = {n.phone_number_id: n for n in registry.numbers(db, "whatsapp")}
        assert numbers["222"].quality_rating == "YELLOW" and numbers["222"].messaging_limit == 2_000
        # The provider changes a template and drops another: the next sync records both.
        sets = app.state.sandbox.template_set
        sets.templates[("promo_1", "en_US")].update(status="PAUSED", category="UTILITY")
        sets.templates[("promo_2", "en_US")]["status"] = "DELETED"
        again = sync(db, parse_spec(SPEC), base_url=url, limits=Limits(page_size=3))
    assert again == {"templates": 7, "changed": 1, "deleted": 1, "numbers": 2}
    promo1 = registry.template(db, "whatsapp", "promo_1", "en_US")
    assert promo1 is not None and promo1.status == "PAUSED" and promo1.category == "UTILITY"
    promo2 = registry.template(db, "whatsapp", "promo_2", "en_US")
    assert promo2 is not None and promo2.status == "DELETED" and promo2.deleted_at is not None
    kinds = [(h.kind, h.old_value, h.new_value) for h in registry.history(db, "whatsapp", "promo_1")]
    assert kinds[-2:] == [("status", "APPROVED", "PAUSED"), ("category", "MARKETING", "UTILITY")]


def test_a_sync_past_its_bound_or_refused_writes_nothing(db: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve_in_thread(_sandbox()) as url:
        with pytest.raises(SyncError, match="more than 5 items"):
            sync(db, parse_spec(SPEC), base_url=url, limits=Limits(templates=5, page_size=2))
        monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", "not-the-token")
        with pytest.raises(SyncError, match=r"HTTP 401 \(190\)"):
            sync(db, parse_spec(SPEC), base_url=url)
    assert registry.templates(db) == [] and registry.numbers(db) == []


def test_chatapp_sync_lists_details_and_numbers_in_metas_shape(db: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, CHATAPP_ENV)
    buttons = {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Stop"}]}
    cfg = chatapp_config(template_set=[SandboxTemplate(name=f"promo_v{i}", language="en", components=[BODY2, buttons])
                                       for i in range(5)],
                         phone_numbers=[SandboxNumber(id="x", display_phone_number="8613100000001",
                                                      quality_rating="RED", messaging_limit_tier="TIER_10")])
    with serve_in_thread(create_chatapp_app(cfg)) as url:
        counts = sync(db, parse_spec(CHATAPP_SPEC), base_url=url, limits=Limits(page_size=2))
    assert counts["templates"] == 5 and counts["numbers"] == 1
    t = registry.template(db, "chatapp", "promo_v3", "en")
    assert t is not None and t.status == "APPROVED" and t.account == "cams-8c8test"
    assert t.components == [BODY2, buttons]
    (number,) = registry.numbers(db, "chatapp")
    assert number.phone_number_id == "8613100000001" and number.quality_rating == "RED"
    assert number.lane_verdict(0.5)[1] is not None


def test_the_templates_commands(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    database = str(tmp_path / "campaigns.sqlite")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "templates", *args, "--db", database],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)

    with serve_in_thread(_sandbox()) as url:
        synced = cli("sync", str(spec), "--provider-base-url", url)
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout.startswith("8 templates (8 changed, 0 no longer listed), 2 numbers")
    listed = cli("list", "--json")
    rows = json.loads(listed.stdout)["templates"]
    assert {(r["name"], r["status"], r["edits_left"]) for r in rows} >= {("promo_4", "APPROVED", 1),
                                                                           ("promo_0", "PENDING", 10)}
    shown = cli("show", "promo_0")
    assert "promo_0 [en_US] at whatsapp 102290129340398: APPROVED, category MARKETING" in shown.stdout
    assert "Hi {{1}}, your code is {{2}}." in shown.stdout
    assert cli("show", "nope").returncode == 2
    missing = subprocess.run([sys.executable, "-m", "pipeline.cli", "templates", "sync", str(spec), "--db", database,
                              "--provider-base-url", "http://127.0.0.1:9"], capture_output=True, text=True,
                             cwd=ROOT, timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith("error: GET 102290129340398/message_templates")
