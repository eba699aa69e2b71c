"""The warm path of model-written personalisation: prompts rendered by the compiled path byte for byte as Jinja2
renders them; the cache read in bulk on SQLite and PostgreSQL; each answer's check outcome kept beside it under
the key of the checks and settings that gave it, read by a re-run instead of checking again, and worked out again
(a value failing today's checks is refused) when the checks or their settings changed; the client's workers."""

from __future__ import annotations

import asyncio
import unicodedata
from pathlib import Path

import polars as pl
import pytest
from jinja2 import StrictUndefined

from pipeline.render.environment import BoundedEnvironment
from pipeline.render.generated_cache import lookup, save_answers
from pipeline.render.generated_checks import check_key, control_characters, refusal
from pipeline.render.llm_client import complete_all
from pipeline.render.personalise import MAX_PROMPT_CHARS, _prompts, gen_column, input_hash, personalise
from pipeline.sandbox.llm import LlmSandboxConfig, create_llm_app
from pipeline.servers import serve_in_thread
from pipeline.spec import CampaignSpec, parse_spec
from pipeline.store import Store
from tests.helpers.llm import GENERATE
from tests.helpers.llm import endpoint as _endpoint
from tests.helpers.llm import prepared as _prepared
from tests.helpers.llm import spec as _spec
from tests.helpers.llm import stats as _stats

FALLBACK = GENERATE["variables"]["opener"]["fallback"]


def _with_max_chars(spec: CampaignSpec, max_chars: int) -> CampaignSpec:
    opener = {**GENERATE["variables"]["opener"], "max_chars": max_chars}
    return parse_spec({**spec.model_dump(mode="json"), "generate": {**GENERATE, "variables": {"opener": opener}}})


def _stored(db: Store) -> set[tuple[str | None, str | None]]:
    return {(k, r) for k, r in db.rows("SELECT check_key, refusal FROM generated_values")}


def test_a_cached_value_that_fails_todays_checks_is_refused(db: Store, tmp_path: Path):
    spec = _spec(tmp_path)
    emoji = "A treat for you \U0001F389"  # fine on WhatsApp, not in GSM-7 SMS
    with serve_in_thread(create_llm_app(LlmSandboxConfig(answers={"Name1": emoji}))) as url:
        endpoint = _endpoint(url)
        _, first = personalise(db, spec, _prepared(spec, tmp_path), endpoint=endpoint)
        assert first.calls == 6 and first.generated == 6
        assert _stored(db) == {(check_key("whatsapp", 60), None)}  # each outcome stored with its answer

        # A tighter length: nothing is asked again, every cached value is checked again and refused.
        tight = _with_max_chars(spec, 15)
        done, second = personalise(db, tight, _prepared(tight, tmp_path), endpoint=endpoint)
        assert second.calls == 0 and second.cache_hits == 6 and dict(second.fallbacks) == {"too_long": 6}
        assert set(done.accepted[gen_column("opener")]) == {FALLBACK}
        assert _stored(db) == {(check_key("whatsapp", 15), "too_long")}

        # The same prompts for SMS: the emoji that passed on WhatsApp is refused.
        sms = _spec(tmp_path, channel="sms")
        done, third = personalise(db, sms, _prepared(sms, tmp_path), endpoint=endpoint)
        assert third.calls == 0 and dict(third.fallbacks) == {"charset": 1} and third.generated == 5
        assert done.accepted[gen_column("opener")][1] == FALLBACK

        # An outcome stored by other checks (an older version of them) is not trusted: the value is checked again.
        first_prompt = "Write a one-line opener for Name0 from City0."
        db.execute("UPDATE generated_values SET value = 'Visit https://acme.example/deal', check_key = 'older', "
                   "refusal = NULL WHERE input_hash = :h", h=input_hash(endpoint, first_prompt))
        done, fourth = personalise(db, spec, _prepared(spec, tmp_path), endpoint=endpoint)
        assert fourth.calls == 0 and dict(fourth.fallbacks) == {"link": 1} and fourth.generated == 5
        assert done.accepted[gen_column("opener")][0] == FALLBACK
        assert db.scalar("SELECT refusal FROM generated_values WHERE input_hash = :h",
                         h=input_hash(endpoint, first_prompt)) == "link"
        assert _stats(url)["requests"] == 6


def test_a_rerun_reads_the_stored_outcome_instead_of_checking_again(sqlite_db: Store, tmp_path: Path):
    spec = _spec(tmp_path, rows=3)
    with serve_in_thread(create_llm_app(LlmSandboxConfig())) as url:
        endpoint = _endpoint(url)
        personalise(sqlite_db, spec, _prepared(spec, tmp_path), endpoint=endpoint)
        # The checks would pass this value; the outcome stored under today's key says otherwise, and is what counts.
        sqlite_db.execute("UPDATE generated_values SET refusal = 'phone_number' WHERE input_hash = :h",
                          h=input_hash(endpoint, "Write a one-line opener for Name2 from City2."))
        done, again = personalise(sqlite_db, spec, _prepared(spec, tmp_path), endpoint=endpoint)
    assert again.calls == 0 and dict(again.fallbacks) == {"phone_number": 1} and again.generated == 2
    assert done.accepted[gen_column("opener")][2] == FALLBACK


def test_the_cache_is_read_in_batches_on_both_stores(db: Store):
    answers = pl.DataFrame({"input_hash": [f"{i:064x}" for i in range(10)], "value": [f"v{i}" for i in range(10)],
                            "prompt_tokens": [1] * 10, "completion_tokens": [2] * 10,
                            "check_key": ["k1"] * 5 + ["k2"] * 4 + [None], "refusal": [None] * 9 + ["link"]},
                           schema_overrides={"check_key": pl.String, "refusal": pl.String})
    save_answers(db, answers, "qwen-plus")
    asked = pl.Series([f"{i:064x}" for i in range(12)][::-1])  # two never cached
    found = lookup(db, asked, "k1", batch=5).sort("input_hash")
    assert found["input_hash"].to_list() == [f"{i:064x}" for i in range(10)]
    assert found["value"].to_list() == [f"v{i}" for i in range(10)]
    assert found["fresh"].to_list() == [True] * 5 + [False] * 4 + [None]
    assert found["refusal"].to_list() == [None] * 9 + ["link"]
    assert lookup(db, pl.Series([], dtype=pl.String), "k1").height == 0


def _jinja(frame: pl.DataFrame, source: str) -> list[str | None]:
    """The prompts as Jinja2 renders them row by row over the row's text values (the reference)."""
    template = BoundedEnvironment(undefined=StrictUndefined, autoescape=False).from_string(source)
    out: list[str | None] = []
    for row in frame.iter_rows(named=True):
        try:
            prompt = template.render({k: v for k, v in row.items() if isinstance(v, str)})
        except Exception:
            prompt = None
        out.append(prompt if prompt is not None and len(prompt) <= MAX_PROMPT_CHARS else None)
    return out


@pytest.mark.parametrize("source", [
    "One line for {{ first_name }} in {{ city }}.\n",
    "{{ first_name | upper }} / {{ city | lower | capitalize }} / {{ tier | default('basic') }}",
    "{{ first_name | trim | replace('a', 'ä') }} {{ note }}",
    "No variables at all",
    "{{ age }} years",  # a number column: not a text value, so never defined
    "{% if tier %}{{ tier }}{% else %}none{% endif %} for {{ first_name }}",  # control flow: Jinja2 row by row
])
def test_prompts_are_the_bytes_jinja2_renders(source: str):
    frame = pl.DataFrame({
        "row_number": [2, 3, 4, 5, 6, 7],
        "first_name": ["Ana", " straße ", "ǅemal", None, "", "ΐ"],
        "city": ["Lisboa", "KÖLN", "σίσυφος", "Oslo", "ﬁrenze", "İzmir"],
        "tier": ["gold", None, "", "silver", None, "x"],
        "note": ["ok", "y" * MAX_PROMPT_CHARS, "ok", "ok", "ok", "ok"],
        "age": [30, 41, 25, 33, 19, 50],
    }).with_columns(pl.col("city").cast(pl.Categorical))
    assert _prompts(frame, source).to_list() == _jinja(frame, source)


def test_the_workers_fill_the_concurrency_past_one_pool_and_keep_the_order():
    prompts = [f"prompt <{i}>" for i in range(80)]
    config = LlmSandboxConfig(latency_s=0.2, answers={f"<{i}>": f"answer {i}" for i in range(80)})
    with serve_in_thread(create_llm_app(config)) as url:
        answers = asyncio.run(complete_all(_endpoint(url, concurrency=40, max_per_second=10_000), prompts))
        assert _stats(url)["max_in_flight"] == 40  # ten clients of 4 connections
    assert [a.text for a in answers] == [f"answer {i}" for i in range(80)]


def test_the_control_character_class_is_exactly_unicodedatas_categories():
    # The checks search one character class instead of asking unicodedata about every character: the same set.
    pattern = control_characters()
    differ = [point for point in range(0x110000) if bool(pattern.fullmatch(chr(point))) != (
        point != 0x0A and unicodedata.category(chr(point)) in ("Cc", "Cf", "Co", "Cs"))]
    assert differ == []
    assert refusal("Hi\u200bthere", channel="sms", max_chars=None) == "control_character"  # a zero-width space
    assert refusal("Line one\nline two", channel="sms", max_chars=None) is None  # a newline is fine in an SMS
