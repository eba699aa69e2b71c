"""Templates and numbers before and during a send, against the WhatsApp sandbox and the webhook receiver on
loopback: checked before the first send (nothing sent when refused), the template's status and the numbers'
quality watched while sending (webhooks -> spool -> ingest -> registry -> the dispatcher), the 132000 family
stopping the channel with everything unsent queued, and resuming after re-approval sending each message once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.channels import templates as registry
from pipeline.channels.template_rules import TemplateRefused, check_spec, checked_spec
from pipeline.channels.template_sync import sync
from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.policy import DispatchResult, Guards
from pipeline.dispatch.template_watch import TemplateWatch, ends_not_completed
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.whatsapp import create_app
from pipeline.sandbox.whatsapp_templates import SandboxNumber, SandboxTemplate
from pipeline.servers import serve_in_thread
from pipeline.spec import CampaignSpec, RateSpec, parse_spec
from pipeline.store import Store
from tests.helpers.channels import FAST_RETRY
from tests.helpers.waiting import wait_for
from tests.helpers.whatsapp import SPEC, TOKEN, config, queue

WABA = "102290129340398"
HELLO = SandboxTemplate(name="hello", components=[{"type": "BODY", "text": "Hi {{1}}, welcome."}])
NUMBERS = [SandboxNumber(id="111", display_phone_number="15550000111"),
           SandboxNumber(id="222", display_phone_number="15550000222")]


def _spec(**template: Any) -> CampaignSpec:
    return parse_spec({**SPEC, "template": {**SPEC["template"], **template},
                       "provider": {"options": {"waba_id": WABA}}})


@contextmanager
def _stack(tmp_path: Path, **sandbox: Any) -> Iterator[tuple[str, Any, Path]]:
    """(sandbox URL, its state, spool folder): the sandbox posting every webhook to the receiver, which spools."""
    spool = tmp_path / "spool"
    spool.mkdir()
    with serve_in_thread(create_receiver_app(spool, secrets_from_env(), rotate_after_s=0.2)) as hook:
        cfg = config(**{"template_set": [HELLO], "phone_numbers": NUMBERS, "webhook_url": f"{hook}/webhooks/whatsapp",
                        "fail_rate": 0.0, **sandbox})
        app = create_app(cfg)
        with serve_in_thread(app) as url:
            yield url, app.state.sandbox, spool


def _send(db: Store, url: str, spool: Path, rate: float = 1000.0) -> DispatchResult:
    watch = TemplateWatch(db, provider="whatsapp", account=WABA, name="hello", language="en_US",
                          senders=["111", "222"], ingest=lambda: ingest_spool(db, spool))
    channels = {s: WhatsAppChannel(base_url=url, api_version="v23.0", phone_number_id=s, access_token=TOKEN)
                for s in ("111", "222")}
    return asyncio.run(dispatch_campaign(db, "t", channels, rate=RateSpec(max_per_second=rate, concurrency=8),
                                         retry=FAST_RETRY, guards=Guards(watch=watch)))


def _states(db: Store) -> dict[str, int]:
    return {state: int(n) for state, n in db.rows("SELECT state, count(*) FROM outbox GROUP BY state")}


def test_an_unknown_or_unapproved_template_is_refused_before_any_call(sqlite_db: Store, tmp_path: Path) -> None:
    with _stack(tmp_path) as (url, sandbox, _):
        sync(sqlite_db, _spec(), base_url=url)
        with pytest.raises(TemplateRefused, match=r"template_unknown: nope \[en_US\]"):
            checked_spec(sqlite_db, _spec(name="nope"), "whatsapp", WABA)
        with pytest.raises(TemplateRefused, match=r"template_unknown: hello \[pt_BR\]"):
            checked_spec(sqlite_db, _spec(language="pt_BR"), "whatsapp", WABA)
        sandbox.template_set.templates[("hello", "en_US")]["status"] = "REJECTED"
        sync(sqlite_db, _spec(), base_url=url)
        with pytest.raises(TemplateRefused, match="template_not_approved: hello .en_US. is REJECTED"):
            checked_spec(sqlite_db, _spec(), "whatsapp", WABA)
        assert sandbox.accepted == 0 and not sandbox.rejected  # no send was made


def test_what_the_spec_fills_must_match_the_components() -> None:
    t = registry.ProviderTemplate(
        provider="whatsapp", account=WABA, name="hello", language="en_US", status="APPROVED", category="MARKETING",
        components=[{"type": "HEADER", "format": "IMAGE"}, {"type": "BODY", "text": "Hi {{1}} and {{2}}."},
                    {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Stop"},
                                                    {"type": "URL", "text": "Go", "url": "https://x.test/{{1}}"}]}])
    spec = _spec(header=["{{ a }}"], body=["x"], buttons=[{"sub_type": "url", "text": "{{ a }}"}])
    problems = [p.split(":")[0] for p in check_spec(spec, t, "whatsapp", WABA).problems]
    assert problems == ["header_format", "header_parameters", "body_parameters", "button_kind", "button_parameters"]
    fits = _spec(body=["x", "y"], buttons=[{"sub_type": "quick_reply", "payload": "STOP"},
                                           {"sub_type": "url", "text": "{{ a }}"}])
    text_header = [{"type": "BODY", "text": "Hi {{1}} and {{2}}."}, *t.components[2:]]
    assert check_spec(fits, registry.ProviderTemplate(**{**t.__dict__, "components": text_header}),
                      "whatsapp", WABA).problems == []
    # A media header of the template's format fits; another format, or a location where an image is, does not.
    image = _spec(body=["x", "y"], buttons=fits.template.model_dump()["buttons"],
                  header_media={"format": "image", "link": "https://cdn.acme.test/{{ a }}.jpg"})
    assert check_spec(image, t, "whatsapp", WABA).problems == []
    place = _spec(body=["x", "y"], buttons=fits.template.model_dump()["buttons"],
                  header_media={"format": "location", "latitude": 1.0, "longitude": 2.0})
    assert [p.split(":")[0] for p in check_spec(place, t, "whatsapp", WABA).problems] == ["header_format"]
    location = registry.ProviderTemplate(**{**t.__dict__, "components": [
        {"type": "HEADER", "format": "LOCATION"}, *t.components[1:]]})
    assert check_spec(place, location, "whatsapp", WABA).problems == []
    # A carousel's cards must be the template's.
    card = {"header_media": {"format": "image", "link": "https://cdn.acme.test/{{ a }}.jpg"}}
    carousel = _spec(body=["x", "y"], cards=[card, card])
    three = registry.ProviderTemplate(**{**t.__dict__, "components": [
        *text_header[:1], {"type": "CAROUSEL", "cards": [{"components": []}] * 3}]})
    assert [p.split(":")[0] for p in check_spec(carousel, three, "whatsapp", WABA).problems] == ["carousel_cards"]
    two = registry.ProviderTemplate(**{**three.__dict__, "components": [
        *text_header[:1], {"type": "CAROUSEL", "cards": [{"components": []}] * 2}]})
    assert check_spec(carousel, two, "whatsapp", WABA).problems == []


def test_the_providers_category_applies_and_the_run_is_told(sqlite_db: Store, tmp_path: Path) -> None:
    with _stack(tmp_path) as (url, sandbox, _):
        sandbox.template_set.templates[("hello", "en_US")]["category"] = "MARKETING"
        sync(sqlite_db, _spec(), base_url=url)
    checked, notes = checked_spec(sqlite_db, _spec(category="utility"), "whatsapp", WABA)
    assert checked.template.category == "marketing"  # consent, the frequency cap and the estimate read this
    assert notes and notes[0].startswith("category: the spec declares utility, whatsapp has marketing")
    too_many = _spec().model_copy(update={"senders": ["222", "333"]})
    with pytest.raises(TemplateRefused, match="too_many_senders: the spec names 3 sending numbers; a unverified"):
        checked_spec(sqlite_db, too_many, "whatsapp", WABA)


def test_webhooks_reach_the_registry_and_the_dispatchers_guards(db: Store, tmp_path: Path) -> None:
    with _stack(tmp_path) as (url, _, spool):
        sync(db, _spec(), base_url=url)
        watch = TemplateWatch(db, provider="whatsapp", account=WABA, name="hello", language="en_US",
                              senders=["111", "222"], ingest=lambda: ingest_spool(db, spool), slow_factor=0.25)
        guards = Guards(watch=watch)
        guards.check_pause()
        assert guards.paused() is None and guards.lane_paused("222") is None
        with httpx.Client(base_url=url, trust_env=False) as client:
            client.post("/_sandbox/templates/hello", json={"category": "UTILITY", "quality": "YELLOW"})
            client.post("/_sandbox/numbers/222", json={"event": "FLAGGED", "quality_rating": "RED"})
            client.post("/_sandbox/templates/hello", json={"status": "PAUSED"})

        def stopped() -> str | None:
            guards.check_pause()
            return guards.paused()

        reason = wait_for(stopped, timeout_s=30, what="the PAUSED webhook to stop the guards")
    assert reason.startswith("template: hello [en_US] is PAUSED") and ends_not_completed(reason)
    assert guards.lane_paused("222") and guards.lane_paused("111") is None
    t = registry.template(db, "whatsapp", "hello", "en_US")
    assert t is not None and (t.status, t.category, t.previous_category, t.quality) == (
        "PAUSED", "UTILITY", "MARKETING", "YELLOW")
    kinds = [(h.kind, h.new_value) for h in registry.history(db, "whatsapp", "hello") if h.source == "webhook"]
    assert kinds == [("category", "UTILITY"), ("quality", "YELLOW"), ("status", "PAUSED")]
    # Replaying the spool changes nothing.
    db.execute("DELETE FROM spool_files")
    assert ingest_spool(db, spool).registry_updates == 0


def test_paused_after_500_of_2000_then_reapproved_sends_each_message_once(db: Store, tmp_path: Path) -> None:
    queue(db, 2000)
    with _stack(tmp_path, pause_after=500) as (url, sandbox, spool):
        sync(db, _spec(), base_url=url)
        first = _send(db, url, spool)
        assert sandbox.accepted == 500
        assert first.stopped_reason and ends_not_completed(first.stopped_reason)
        assert _states(db) == {"sent": 500, "queued": 1500}  # nothing failed: unsent stays queued
        with httpx.Client(base_url=url, trust_env=False) as client:
            client.post("/_sandbox/templates/hello", json={"status": "APPROVED"})
        # The next run continues once the registry has the re-approval (its first poll ingests the webhook).
        wait_for(lambda: ingest_spool(db, spool) and registry.template(db, "whatsapp", "hello", "en_US").status
                 == "APPROVED", timeout_s=30, what="the APPROVED webhook in the registry")
        second = _send(db, url, spool)
        assert second.stopped_reason is None and second.sent == 1500
        assert _states(db) == {"sent": 2000}
        assert sandbox.accepted == 2000 and sandbox.duplicate_callback_data == 0
        assert len(sandbox.accepted_callback_data()) == 2000


def test_a_red_number_pauses_its_own_lane_and_the_others_complete(db: Store, tmp_path: Path) -> None:
    queue(db, 200, senders=["111", "222"])
    red = [NUMBERS[0], NUMBERS[1].model_copy(update={"quality_rating": "RED"})]
    with _stack(tmp_path, phone_numbers=red) as (url, sandbox, spool):
        sync(db, _spec(), base_url=url)
        result = _send(db, url, spool, rate=500)
    assert set(result.lanes_paused) == {"222"} and "RED" in result.lanes_paused["222"]
    assert result.stopped_reason is None and ends_not_completed(result.lanes_paused["222"])
    by_sender = {(s, state): int(n) for s, state, n in
                 db.rows("SELECT sender, state, count(*) FROM outbox GROUP BY sender, state")}
    assert by_sender == {("111", "sent"): 100, ("222", "queued"): 100}
    assert sandbox.accepted == 100
