"""What the approver reads above the form (pipeline/dispatch/approvals.py, `approval_brief`): with model-written
values (issue 20), their counts, fallbacks by reason, cost and a masked sample, the same lines the personalise
artifact shows; without them, no such section. The sample of messages is the queued one (`queued_sample`): per
variant (the holdout counted) and template language, the text each recipient gets, never another language's."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import yaml

from pipeline.channels.templates import ProviderTemplate, store_templates
from pipeline.channels.whatsapp import WhatsAppChannel
from pipeline.dispatch.approvals import approval_brief, queued_sample
from pipeline.dispatch.experiment import queue_experiment
from pipeline.dispatch.outbox import enqueue_messages, register_campaign, store_preparation
from pipeline.dispatch.preparation import prepare_campaign
from pipeline.spec import CampaignSpec, parse_spec
from pipeline.store import Store

ROOT = Path(__file__).resolve().parents[2]

ACCEPTED = pl.DataFrame({"phone_e164": ["+447700900123"], "text": ["Hi Ann, your code W-1"]})
ESTIMATE = {"messages": 1, "total_usd": 0.07}


def test_the_model_written_values_are_shown_masked_with_their_counts() -> None:
    generation = {"generated": 5, "fallbacks": {"link": 2, "phone_number": 1}, "cost_usd": 0.0123,
                  "samples": [("opener", "Good to have you with us"), ("opener", "Write to ann@example.com"),
                              ("opener", "Call +44 7700 900456")]}
    brief = approval_brief({"invalid_number": 1}, ACCEPTED, ESTIMATE, generation=generation)
    section = brief.split("### Model-written values", 1)[1]
    assert "5 written by the model, 3 fell back to the fixed text (link: 2, phone_number: 1)" in section
    assert "USD 0.0123 for the model" in section
    assert "- `opener`: Good to have you with us" in section
    assert "a***@example.com" in section and "ann@example.com" not in section  # masked again, whatever came in
    assert "+44*******456" in section and "7700 900456" not in section


def test_the_sample_is_bounded_and_absent_without_a_model() -> None:
    samples = [("opener", f"Hello {i}") for i in range(9)]
    generation = {"generated": 9, "fallbacks": {}, "cost_usd": 0, "samples": samples}
    brief = approval_brief({}, ACCEPTED, ESTIMATE, generation=generation, sample_size=3)
    assert [line for line in brief.splitlines() if line.startswith("- `opener`")] == [
        "- `opener`: Hello 0", "- `opener`: Hello 1", "- `opener`: Hello 2"]
    assert "Model-written values" not in approval_brief({}, ACCEPTED, ESTIMATE)


NUMBERS = [f"+4474001234{i:02d}" for i in range(40)]


def _spec(tmp: Path, **extra: object) -> CampaignSpec:
    """welcome.yaml over 40 recipients, every other one Spanish-speaking (an e-mail address in one coupon)."""
    audience = tmp / "audience.csv"
    audience.write_text("phone,first_name,city,coupon,opt_in,language\n" + "".join(
        f"{n},Ann,Leeds,{'ann@example.com' if i == 0 else f'W-{i}'},yes,{'es' if i % 2 else 'en'}\n"
        for i, n in enumerate(NUMBERS)))
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(name="brief", audience=str(audience), **extra)
    data["template"]["languages"] = ["es"]
    return parse_spec(data)


def _variant(name: str, text: str) -> dict[str, object]:
    template = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())["template"]
    return {"name": name, "template": {**template, "name": f"offer_{name}", "text": text}}


def _channel() -> WhatsAppChannel:
    return WhatsAppChannel(base_url="http://127.0.0.1:9", api_version="v23.0", phone_number_id="106540352242922",
                           access_token="test-token")


def _sections(brief: str) -> dict[str, list[str]]:
    """Heading (`variant a · es`, `en_US`, `holdout`) -> its sample lines."""
    out: dict[str, list[str]] = {}
    for block in brief.split("### Sample of rendered messages (numbers masked)", 1)[1].strip().split("\n\n"):
        head, *lines = block.splitlines()
        out[re.match(r"\*\*(.+?)\*\*", head).group(1)] = [head, *lines]
    return out


def _spanish(name: str, body: str) -> ProviderTemplate:
    return ProviderTemplate("whatsapp", "waba-1", name, "es", "APPROVED", "marketing", [{"type": "BODY", "text": body}])


def test_each_variant_and_language_shows_the_text_its_recipients_get(sqlite_db: Store, tmp_path: Path) -> None:
    spec = _spec(tmp_path, provider={"options": {"waba_id": "waba-1"}}, experiment={"holdout": 0.2, "variants": [
        _variant("a", "VARIANT-A hello {{ first_name }}, code {{ code }} in {{ city }}"),
        _variant("b", "VARIANT-B hi {{ first_name }}, show {{ code }} in {{ city }}")]})
    # The registry: the base template in both languages (recipients pick among them), each variant's Spanish body.
    store_templates(sqlite_db, "whatsapp", "waba-1", [
        ProviderTemplate("whatsapp", "waba-1", "welcome_offer", lang, "APPROVED", "marketing") for lang in
        ("en_US", "es")] + [_spanish("offer_a", "VARIANTE-A hola {{1}}, código {{2}} en {{3}}"),
                            _spanish("offer_b", "VARIANTE-B hola {{1}}, muestra {{2}} en {{3}}")])
    prepared = prepare_campaign(spec, "brief", str(sqlite_db.path), tmp_path / "out")
    register_campaign(sqlite_db, spec, "brief")
    queued = queue_experiment(sqlite_db, spec, "brief", _channel(), prepared.accepted, prepared.rejects)
    sample = queued_sample(sqlite_db, spec, "brief", prepared.accepted, sample_size=3)
    brief = approval_brief(prepared.counts, prepared.accepted, {"messages": queued, "total_usd": 1}, sample=sample,
                           sample_size=3)
    sections = _sections(brief)
    assert set(sections) == {"variant a · en_US", "variant a · es", "variant b · en_US", "variant b · es", "holdout"}
    arms = dict(sqlite_db.rows("SELECT arm, count(*) FROM experiment_arms WHERE campaign_id = 'brief' GROUP BY arm"))
    assert f"**holdout** ({arms['holdout']} recipients): sent nothing" in brief
    assert sum(g.recipients for g in sample if g.arm != "holdout") == queued == 40 - arms["holdout"]
    for arm, english, spanish in (("a", "VARIANT-A hello Ann, code ", "VARIANTE-A hola Ann, código "),
                                  ("b", "VARIANT-B hi Ann, show ", "VARIANTE-B hola Ann, muestra ")):
        head, *lines = sections[f"variant {arm} · en_US"]
        assert f"template `offer_{arm}`" in head and 1 <= len(lines) <= 3
        assert all(english in line and " in Leeds" in line for line in lines), lines
        head, *lines = sections[f"variant {arm} · es"]
        assert 1 <= len(lines) <= 3  # the registry's Spanish body, filled with the queued parameters
        assert all(spanish in line and " en Leeds" in line and "hello" not in line for line in lines), lines
    assert "welcome to Acme" not in brief  # the base template's text goes to nobody
    # Masked: no number in full, the e-mail in a coupon too.
    assert not any(n in brief or n[1:] in brief for n in NUMBERS) and "ann@example.com" not in brief


def test_a_language_whose_text_is_not_known_shows_its_parameters_not_the_base_text(sqlite_db: Store,
                                                                                    tmp_path: Path) -> None:
    spec = _spec(tmp_path)  # no registry: the spec's text is the en_US body; Spanish is the provider's
    prepared = prepare_campaign(spec, "brief", str(sqlite_db.path), tmp_path / "out")
    register_campaign(sqlite_db, spec, "brief")
    store_preparation(sqlite_db, "brief", prepared.accepted, prepared.rejects)
    enqueue_messages(sqlite_db, spec, "brief", _channel(), prepared.accepted)
    sample = queued_sample(sqlite_db, spec, "brief", prepared.accepted, sample_size=2)
    brief = approval_brief(prepared.counts, prepared.accepted, {"messages": 40, "total_usd": 1}, sample=sample,
                           sample_size=2)
    sections = _sections(brief)
    assert set(sections) == {"en_US", "es"}
    assert sections["en_US"][0] == "**en_US** (20 recipients)" and sections["es"][0] == "**es** (20 recipients)"
    assert sections["en_US"][1:] == ["- `+44*******400`: Hi Ann, welcome to Acme! Show code a***@example.com in our "
                                     "Leeds store for 10% off. Reply STOP to opt out.",
                                     "- `+44*******402`: Hi Ann, welcome to Acme! Show code W-2 in our Leeds store "
                                     "for 10% off. Reply STOP to opt out."]
    assert sections["es"][1:] == [
        f"- `+44*******40{i}`: (the provider's approved text of welcome_offer [es], not known here: no synced "
        f"template registry holds it; parameters: Ann, W-{i}, Leeds)" for i in (1, 3)]
    assert not any(n in brief for n in NUMBERS) and "ann@example.com" not in brief
