"""Scaffolding of the model-written personalisation tests (tests/render/test_personalise*.py): a small audience and
spec with one generated variable, an endpoint on the sandbox's OpenAI-compatible server with fast retries, the
server's counters, and preparation as the flow does it (with the fallback text standing in)."""

from __future__ import annotations

from pathlib import Path

import httpx

from pipeline.render.llm_client import Endpoint
from pipeline.render.personalise import stand_in
from pipeline.render.prepare import prepare_audience
from pipeline.spec import CampaignSpec, parse_spec

KEY = "sandbox-llm-key"
GENERATE = {"variables": {"opener": {"prompt": "Write a one-line opener for {{ first_name }} from {{ city }}.",
                                     "fallback": "We have something for you", "max_chars": 60}},
            "api_key_env": "TEST_LLM_KEY"}


def spec(tmp_path: Path, channel: str = "whatsapp", rows: int = 6) -> CampaignSpec:
    audience = tmp_path / "audience.csv"
    audience.write_text("phone,first_name,city,opt_in\n" + "".join(
        f"+44 7911 1234{i:02d},Name{i},City{i % 3},yes\n" for i in range(rows)))
    return parse_spec({
        "name": "gen", "audience": str(audience), "channel": channel, "sender": "Acme",
        "template": {"name": "welcome_offer", "language": "en_US", "category": "marketing",
                     "text": "{{ opener }}, {{ first_name }}!", "body": ["{{ opener }}", "{{ first_name }}"]},
        "variables": {"first_name": "first_name"}, "generate": GENERATE,
    })


def endpoint(url: str, **overrides) -> Endpoint:
    values = dict(base_url=f"{url}/v1", model="qwen-plus", api_key=KEY, concurrency=4, max_per_second=500,
                  timeout_s=2.0, max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.05)
    return Endpoint(**(values | overrides))


def stats(url: str) -> dict[str, int]:
    return httpx.get(f"{url}/_sandbox/stats").json()


def prepared(spec: CampaignSpec, tmp_path: Path):
    # Preparation renders with the stand-in (the fallback text) as the flow does.
    stand = stand_in(spec)
    return prepare_audience(spec.audience, channel=spec.channel, category="marketing", template=stand.template,
                            variables=stand.variables, out_dir=tmp_path / "out")
