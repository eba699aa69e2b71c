"""Language per recipient (pipeline/render/languages.py): the audience's `language` column picks the template
language among those the template exists in (the spec's list, or the provider's registry when the spec names its
account), read as people write it, else the fallback; each queued message carries its recipient's language."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import store
from pipeline.channels.template_rules import TemplateRefused, checked_spec
from pipeline.channels.templates import ProviderTemplate, store_templates
from pipeline.render.languages import language_expr, with_languages
from pipeline.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]


def test_values_as_people_write_them_match_exactly_by_base_or_by_variant_else_the_fallback() -> None:
    frame = pl.DataFrame({"language": ["pt-br", "PT_BR", " es ", "es_MX", "es_AR", "pt", "fr", None, "", "EN", "x_y"]})
    got = with_languages(frame, "language", ["en_US", "es", "pt_BR", "es_MX"], "en_US")["template_language"]
    assert got.to_list() == ["pt_BR", "pt_BR", "es", "es_MX", "es", "pt_BR", "en_US", "en_US", "en_US", "en_US",
                             "en_US"]
    assert "template_language" not in with_languages(frame.rename({"language": "lang"}), "language", ["es"], "en_US")


_WRITTEN = st.one_of(st.none(), st.sampled_from(["en_US", "en", "en-GB", "es", "ES_ar", " pt-br ", "pt", "DE", "",
                                                 "xx", "zh_CN", "fr_CA", "it", "es_MX", "e", "engl"]),
                     st.text(alphabet="abcdefgENUS_- ", max_size=7))


@settings(max_examples=60, deadline=None)
@given(values=st.lists(_WRITTEN, max_size=40),
       available=st.lists(st.sampled_from(["en_US", "en_GB", "es", "es_MX", "pt_BR", "de", "fr"]), min_size=1,
                          max_size=5))
def test_each_distinct_value_read_once_gives_what_reading_every_row_gives(values: list[str | None],
                                                                          available: list[str]) -> None:
    frame = pl.DataFrame({"language": values}, schema={"language": pl.String})
    expected = frame.with_columns(language_expr("language", available, "it"))["template_language"]
    assert with_languages(frame, "language", available, "it")["template_language"].to_list() == expected.to_list()


def _campaign(tmp: Path, **template: object) -> dict:
    numbers = [f"+44740012310{i}" for i in range(5)]
    languages = ["es", "pt-BR", "fr", "", "es_MX"]
    audience = tmp / "lang.csv"
    audience.write_text("phone,first_name,city,coupon,opt_in,language\n" + "".join(
        f"{n},Ann,Leeds,W-1,yes,{lang}\n" for n, lang in zip(numbers, languages, strict=True)))
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(name="lang", audience=str(audience))
    data["template"].update(template)
    return data


def _queued_languages(spec: dict, db_url: str, tmp: Path) -> dict[str, str]:
    from flows.campaign import prepare, queue

    parsed = parse_spec(spec)
    prepared = prepare.fn(parsed, "lang", db_url, tmp / "out")
    queue.fn(parsed, "lang", prepared, db_url, "http://127.0.0.1:9")
    with store.connect(db_url) as db:
        rows = db.rows("SELECT recipient_key, payload_json FROM outbox WHERE campaign_id = 'lang' ORDER BY seq")
    return {key[-1]: json.loads(payload)["template"]["language"]["code"] for key, payload in rows}


def test_each_recipient_gets_the_language_the_spec_lists_else_the_fallback(sqlite_db: store.Store,
                                                                           tmp_path: Path) -> None:
    spec = _campaign(tmp_path, languages=["es", "pt_BR"], fallback_language="es")
    db_url = str(tmp_path / "campaigns.sqlite")
    # fr is not a language of the template and the 4th row names none: the fallback (es); es_MX → es by its base.
    assert _queued_languages(spec, db_url, tmp_path) == {"0": "es", "1": "pt_BR", "2": "es", "3": "es", "4": "es"}


def test_the_registry_says_which_languages_exist(db_url: str, tmp_path: Path) -> None:
    # The spec lists fr, but at the provider fr is REJECTED and es_MX APPROVED: the registry decides.
    with store.connect(db_url) as db:
        store_templates(db, "whatsapp", "waba-1", [
            ProviderTemplate("whatsapp", "waba-1", "welcome_offer", code, status, "MARKETING")
            for code, status in (("en_US", "APPROVED"), ("es", "APPROVED"), ("es_MX", "APPROVED"),
                                 ("pt_BR", "PAUSED"), ("fr", "REJECTED"))])
    spec = _campaign(tmp_path, languages=["fr"])
    spec["provider"]["options"] = {"waba_id": "waba-1"}
    assert _queued_languages(spec, db_url, tmp_path) == {
        "0": "es", "1": "en_US", "2": "en_US", "3": "en_US", "4": "es_MX"}


def test_the_fallback_language_must_be_approved_at_the_provider(db_url: str, tmp_path: Path) -> None:
    # Recipients without an APPROVED language of their own get the fallback: the template check refuses a fallback
    # the registry has but not APPROVED, or does not have, before anything is queued; an APPROVED one is sent.
    with store.connect(db_url) as db:
        store_templates(db, "whatsapp", "waba-1", [
            ProviderTemplate("whatsapp", "waba-1", "welcome_offer", code, status, "MARKETING", components=[
                {"type": "BODY", "text": "Hi {{1}}, code {{2}} in {{3}}"},
                {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Stop promotions"}]}])
            for code, status in (("en_US", "APPROVED"), ("es", "APPROVED"), ("fr", "REJECTED"))])
        for fallback, problem in (("fr", r"fallback_language_not_approved: welcome_offer \[fr\] .* is REJECTED"),
                                  ("de", r"fallback_language_unknown: welcome_offer \[de\] .* en_US, es, fr")):
            spec = _campaign(tmp_path, fallback_language=fallback)
            spec["provider"]["options"] = {"waba_id": "waba-1"}
            with pytest.raises(TemplateRefused, match=problem):
                checked_spec(db, parse_spec(spec), "whatsapp", "waba-1")
        spec = _campaign(tmp_path, fallback_language="es")
        spec["provider"]["options"] = {"waba_id": "waba-1"}
        assert checked_spec(db, parse_spec(spec), "whatsapp", "waba-1")[1] == []
    # fr (REJECTED), pt_BR (absent) and no language: the fallback; es_MX → es by its base.
    assert _queued_languages(spec, db_url, tmp_path) == {"0": "es", "1": "es", "2": "es", "3": "es", "4": "es"}
