"""Variants and a holdout end to end: the real Prefect flow, the dispatcher and the WhatsApp sandbox on loopback.
The holdout is never sent to (counted by the sandbox), each arm's recipients get its template, and running the
campaign again (a resume) sends nothing twice and moves nobody to another arm."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from pipeline import store
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox(tmp_path, prefect_harness):
    spool = tmp_path / "spool"
    spool.mkdir()
    with serve_in_thread(create_receiver_app(spool, secrets_from_env())) as receiver_url:
        # Only the two variants' templates exist: any other name is refused (132001).
        config = SandboxConfig(
            access_token="test-token", app_secret="test-app-secret", webhook_url=f"{receiver_url}/webhooks/whatsapp",
            templates={"welcome_offer": "marketing", "welcome_b": "marketing"}, seed=5, webhook_delay_s=(0.01, 0.03),
        )
        with serve_in_thread(create_app(config)) as url:
            yield {"spool": spool, "url": url}


def _spec(tmp_path: Path, rows: int) -> Path:
    audience = tmp_path / "audience.csv"
    lines = (ROOT / "audiences/sample.csv").read_text().splitlines()
    audience.write_text("\n".join(lines[: rows + 1]) + "\n")
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    variant_b = {**data["template"], "name": "welcome_b", "text": data["template"]["text"].replace("10%", "15%")}
    data.update(audience=str(audience), receipts_wait_s=20, rate_limit={"max_per_second": 500, "concurrency": 8},
                experiment={"holdout": 0.2, "variants": [{"name": "a", "template": data["template"], "weight": 1},
                                                         {"name": "b", "template": variant_b, "weight": 1}]})
    path = tmp_path / "welcome.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_holdout_is_never_sent_to_and_arms_hold_across_a_resume(tmp_path, sandbox):
    from flows.campaign import campaign_flow

    db = str(tmp_path / "exp.sqlite")
    run = dict(database=db, spool_dir=str(sandbox["spool"]), reports_dir=str(tmp_path / "reports"),
               provider_base_url=sandbox["url"])
    summary = campaign_flow(str(_spec(tmp_path, 300)), **run)
    stats = httpx.get(f"{sandbox['url']}/_sandbox/stats").json()
    with store.connect(db) as shared:
        arms = dict(shared.rows("SELECT recipient_key, arm FROM experiment_arms WHERE campaign_id = 'welcome'"))
        payloads = dict(shared.rows("SELECT recipient_key, payload_json FROM outbox"))
    holdout = {k for k, arm in arms.items() if arm == "holdout"}
    sent_to = {"+" + m["to"] for m in stats["messages"]}
    assert holdout and len(arms) == summary["accepted"]
    assert not holdout & sent_to and not holdout & set(payloads)
    assert sent_to == set(arms) - holdout and stats["accepted"] == len(arms) - len(holdout)
    for key, payload in payloads.items():
        assert json.loads(payload)["template"]["name"] == {"a": "welcome_offer", "b": "welcome_b"}[arms[key]]

    # Run again over a longer audience: the first 300 rows keep their arms and get nothing twice; the holdout of
    # the new rows gets nothing either.
    campaign_flow(str(_spec(tmp_path, 400)), **run)
    again = httpx.get(f"{sandbox['url']}/_sandbox/stats").json()
    with store.connect(db) as shared:
        after = dict(shared.rows("SELECT recipient_key, arm FROM experiment_arms WHERE campaign_id = 'welcome'"))
    assert {k: after[k] for k in arms} == arms
    to = ["+" + m["to"] for m in again["messages"]]
    assert len(to) == len(set(to)) and set(to) == {k for k, a in after.items() if a != "holdout"}


def test_generated_values_reach_the_sandbox_and_a_rerun_calls_the_model_nothing(tmp_path, sandbox, monkeypatch):
    from flows.campaign import campaign_flow
    from pipeline.sandbox.llm import LlmSandboxConfig, create_llm_app

    monkeypatch.setenv("CAMPAIGN_LLM_API_KEY", "sandbox-llm-key")
    path = _spec(tmp_path, 40)
    data = yaml.safe_load(path.read_text())
    data.pop("experiment")
    data["template"]["body"][0] = "{{ opener }}"
    data["generate"] = {"variables": {"opener": {"prompt": "One warm line for {{ first_name }}",
                                                 "fallback": "Hello", "max_chars": 60}}}
    with serve_in_thread(create_llm_app(LlmSandboxConfig())) as llm:
        data["generate"]["base_url"] = f"{llm}/v1"
        path.write_text(yaml.safe_dump(data))
        run = dict(database=str(tmp_path / "gen.sqlite"), spool_dir=str(sandbox["spool"]),
                   reports_dir=str(tmp_path / "reports"), provider_base_url=sandbox["url"])
        summary = campaign_flow(str(path), **run)
        calls = httpx.get(f"{llm}/_sandbox/stats").json()["requests"]
        with store.connect(run["database"]) as shared:
            firsts = [json.loads(p)["template"]["components"][0]["parameters"][0]["text"]
                      for (p,) in shared.rows("SELECT payload_json FROM outbox")]
        # One call per distinct prompt (recipients of one first name share theirs).
        assert 0 < calls <= summary["accepted"] and len(firsts) == summary["accepted"]
        assert "Hello" not in firsts and all(f for f in firsts)  # the model's lines went out, not the fallback
        campaign_flow(str(path), **run)
        assert httpx.get(f"{llm}/_sandbox/stats").json()["requests"] == calls
