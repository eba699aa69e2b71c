"""Model-written personalisation against the sandbox's OpenAI-compatible endpoint on loopback: a re-run calls
nothing (the store's cache), hostile answers are refused and fall back, timeouts / 429 / 500 are retried then fall
back, concurrency and rate hold, and the prepared messages are rendered again with the values."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipeline.render.generated_checks import refusal
from pipeline.render.personalise import endpoint_for, gen_column, generate_values, personalise
from pipeline.sandbox.llm import LlmSandboxConfig, create_llm_app
from pipeline.servers import serve_in_thread
from pipeline.spec import parse_spec
from pipeline.store import Store
from tests.helpers.llm import GENERATE
from tests.helpers.llm import endpoint as _endpoint
from tests.helpers.llm import prepared as _prepared
from tests.helpers.llm import spec as _spec
from tests.helpers.llm import stats as _stats


def test_values_are_written_checked_rendered_and_a_rerun_calls_nothing(sqlite_db: Store, tmp_path: Path):
    spec = _spec(tmp_path)
    prepared = _prepared(spec, tmp_path)
    assert prepared.accepted["text"][0] == "We have something for you, Name0!"
    with serve_in_thread(create_llm_app(LlmSandboxConfig(latency_s=0.01))) as url:
        done, report = personalise(sqlite_db, spec, prepared, endpoint=_endpoint(url))
        assert report.calls == 6 and report.generated == 6 and not report.fallbacks and _stats(url)["200"] == 6
        assert report.prompt_tokens > 0 and report.cost_usd > 0
        for text, params, value in done.accepted.select("text", "params_json", gen_column("opener")).iter_rows():
            assert text == f"{value}, {json.loads(params)['body'][1]}!" and value != "We have something for you"
        again, second = personalise(sqlite_db, spec, prepared, endpoint=_endpoint(url))
        assert second.calls == 0 and second.cache_hits == 6 and _stats(url)["requests"] == 6  # nothing called
        assert again.accepted["text"].to_list() == done.accepted["text"].to_list()


@pytest.mark.parametrize(("channel", "answer", "reason"), [
    ("whatsapp", "Visit https://acme.example/deal today", "link"),
    ("whatsapp", "See acme.com for more", "link"),
    ("whatsapp", "Hello {{ secret }}", "template_syntax"),
    ("whatsapp", "{% for x in y %}", "template_syntax"),
    ("whatsapp", "x" * 5000, "too_long"),
    ("whatsapp", "Call us on +44 20 7946 0958", "phone_number"),
    ("whatsapp", "Line one\nline two", "control_character"),
    ("sms", "A treat for you \U0001F389", "charset"),
    ("whatsapp", "   ", "empty"),
])
def test_a_hostile_answer_is_refused_and_falls_back(sqlite_db: Store, tmp_path: Path, channel, answer, reason):
    spec = _spec(tmp_path, channel=channel, rows=2)
    prepared = _prepared(spec, tmp_path)
    config = LlmSandboxConfig(answers={"Name1": answer})  # the second row's prompt gets the hostile answer
    with serve_in_thread(create_llm_app(config)) as url:
        done, report = personalise(sqlite_db, spec, prepared, endpoint=_endpoint(url))
    assert dict(report.fallbacks) == {reason: 1} and report.generated == 1
    values = done.accepted[gen_column("opener")].to_list()
    assert values[1] == "We have something for you" and values[0] != values[1]
    assert done.accepted["text"][1] == "We have something for you, Name1!"


def test_the_emoji_that_sms_refuses_passes_on_whatsapp():
    assert refusal("A treat for you \U0001F389", channel="sms", max_chars=None) == "charset"
    assert refusal("A treat for you \U0001F389", channel="whatsapp", max_chars=None) is None
    assert refusal("x" * 61, channel="whatsapp", max_chars=60) == "too_long"
    assert refusal("Order 12345 is ready", channel="whatsapp", max_chars=None) is None  # five digits: no number


@pytest.mark.parametrize("fault", [429, 500, "hang"])
def test_a_failing_endpoint_is_retried_then_answers(sqlite_db: Store, tmp_path: Path, fault):
    spec = _spec(tmp_path, rows=1)
    config = LlmSandboxConfig(script=[fault, fault], hang_s=1.0)
    with serve_in_thread(create_llm_app(config)) as url:
        done, report = personalise(sqlite_db, spec, _prepared(spec, tmp_path),
                                   endpoint=_endpoint(url, timeout_s=0.3))
        assert _stats(url)["requests"] == 3
    assert report.calls == 3 and report.generated == 1 and not report.fallbacks


@pytest.mark.parametrize("fault", [429, 500, "hang"])
def test_an_endpoint_failing_every_attempt_falls_back_and_is_asked_again_next_run(sqlite_db: Store, tmp_path: Path,
                                                                                  fault):
    spec = _spec(tmp_path, rows=1)
    config = LlmSandboxConfig(script=[fault] * 3, hang_s=1.0)
    with serve_in_thread(create_llm_app(config)) as url:
        done, report = personalise(sqlite_db, spec, _prepared(spec, tmp_path),
                                   endpoint=_endpoint(url, timeout_s=0.3))
        assert dict(report.fallbacks) == {"no_answer": 1} and report.calls == 3
        assert done.accepted["text"][0] == "We have something for you, Name0!"
        # A failure is not cached: the next run asks again, and now gets an answer.
        _, again = personalise(sqlite_db, spec, _prepared(spec, tmp_path), endpoint=_endpoint(url))
    assert again.calls == 1 and again.generated == 1


def test_concurrency_and_rate_are_bounded(sqlite_db: Store, tmp_path: Path):
    spec = _spec(tmp_path, rows=40)
    prepared = _prepared(spec, tmp_path)
    with serve_in_thread(create_llm_app(LlmSandboxConfig(latency_s=0.05))) as url:
        generate_values(sqlite_db, spec, prepared.accepted, endpoint=_endpoint(url, concurrency=3))
        assert _stats(url)["max_in_flight"] == 3
    with serve_in_thread(create_llm_app(LlmSandboxConfig())) as url:
        spec2 = parse_spec({**spec.model_dump(mode="json"), "name": "gen2", "generate": {
            **GENERATE, "variables": {"opener": {**GENERATE["variables"]["opener"], "prompt": "Other {{ city }} "
                                                 "{{ first_name }}"}}}})
        started = time.monotonic()
        generate_values(sqlite_db, spec2, prepared.accepted, endpoint=_endpoint(url, max_per_second=100))
        assert time.monotonic() - started >= 39 / 100  # 40 starts, 10 ms apart


def test_the_key_comes_from_the_environment(tmp_path: Path, monkeypatch):
    spec = _spec(tmp_path)
    monkeypatch.delenv("TEST_LLM_KEY", raising=False)
    with pytest.raises(ValueError, match="TEST_LLM_KEY is not set"):
        endpoint_for(spec.generate)
    monkeypatch.setenv("TEST_LLM_KEY", "k")
    monkeypatch.setenv("CAMPAIGN_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    endpoint = endpoint_for(spec.generate)
    assert (endpoint.base_url, endpoint.model, endpoint.api_key) == ("http://127.0.0.1:9/v1", "qwen-plus", "k")
