"""Template submission against the WhatsApp sandbox on loopback: Meta's lint and the FAQ's limits (10 edits in 30
days, 1 in 24 h for an APPROVED template, a deleted name locked 30 days) refuse before any call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipeline.channels import templates as registry
from pipeline.channels.template_rules import lint
from pipeline.channels.template_sync import submit, sync
from pipeline.channels.templates import SyncError
from pipeline.sandbox.whatsapp import create_app
from pipeline.sandbox.whatsapp_templates import SandboxTemplate
from pipeline.servers import serve_in_thread
from pipeline.spec import parse_spec
from pipeline.store import Store
from tests.helpers.whatsapp import SPEC, config

WABA = "102290129340398"
BODY = {"type": "BODY", "text": "Hi {{1}}, your order {{2}} is on its way."}
NEW: dict[str, Any] = {"name": "order_update", "language": "en_US", "category": "utility", "components": [BODY]}


def _spec() -> Any:
    return parse_spec({**SPEC, "provider": {"options": {"waba_id": WABA}}})


def test_lint_names_each_finding() -> None:
    bad = [{"type": "HEADER", "format": "TEXT", "text": "{{1}} and {{2}}"},
           {"type": "BODY", "text": "{{1}}{{2}} then {{4}}"}, {"type": "FOOTER", "text": "x {{1}} " + "y" * 60},
           {"type": "BUTTONS", "buttons": [{"type": "URL", "text": "a" * 30, "url": "https://x"}] * 3}]
    found = [f.split(":")[0] for f in lint("Order-Update", bad)]
    assert found == ["name", "footer_length", "header_variables", "footer_variable", "variable_at_start",
                     "variable_at_end", "adjacent_variables", "variable_numbering", "button_count",
                     "button_text_length", "button_text_length", "button_text_length"]
    assert lint("order_update", [BODY]) == []


def test_create_edit_limits_and_the_deleted_name_lock(db: Store) -> None:
    app = create_app(config(template_set=[SandboxTemplate(name="promo", components=[BODY])]))
    sandbox = app.state.sandbox.template_set
    with serve_in_thread(app) as url:
        kind, answer = submit(db, _spec(), NEW, base_url=url)
        assert kind == "create" and answer["status"] == "PENDING" and ("order_update", "en_US") in sandbox.templates
        with pytest.raises(SyncError, match="variable_at_end"):
            submit(db, _spec(), {**NEW, "components": [{"type": "BODY", "text": "Your code is {{1}}"}]}, base_url=url)
        sync(db, _spec(), base_url=url)
        # An APPROVED template: one edit a day, then refused before any call.
        assert submit(db, _spec(), {**NEW, "name": "promo"}, base_url=url)[0] == "edit"
        assert sandbox.templates[("promo", "en_US")]["status"] == "PENDING"  # an edit goes back to review
        sandbox.templates[("promo", "en_US")]["status"] = "APPROVED"
        sync(db, _spec(), base_url=url)
        before = dict(sandbox.templates[("promo", "en_US")])
        with pytest.raises(SyncError, match="edit_limit_24_hours"):
            submit(db, _spec(), {**NEW, "name": "promo"}, base_url=url)
        assert sandbox.templates[("promo", "en_US")] == before
        # Ten edits in 30 days (a day apart): the 11th is refused, whatever its status.
        t = registry.template(db, "whatsapp", "promo", "en_US")
        assert t is not None and registry.edits_left(db, t) == 0
        now = datetime.now(UTC)
        for day in range(2, 11):
            registry.record_submission(db, t, "edit", at=now - timedelta(days=day))
        sync(db, _spec(), base_url=url)
        sandbox.templates[("promo", "en_US")]["status"] = "PAUSED"
        sync(db, _spec(), base_url=url)
        with pytest.raises(SyncError, match="edit_limit_30_days: promo .en_US. was edited 10 times"):
            submit(db, _spec(), {**NEW, "name": "promo"}, base_url=url)
        # A deleted name cannot be created again for 30 days.
        sandbox.templates[("order_update", "en_US")]["status"] = "DELETED"
        sync(db, _spec(), base_url=url)
        with pytest.raises(SyncError, match="deleted_name_locked: order_update"):
            submit(db, _spec(), NEW, base_url=url)
