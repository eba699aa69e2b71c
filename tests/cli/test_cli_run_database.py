"""`campaign run --db URL` keeps the store's password out of Prefect's stored flow-run parameters: a URL carrying one
reaches the flow through this process's CAMPAIGN_DATABASE_URL (`database=None`), anything else as it is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from pipeline import store
from pipeline.cli import main
from pipeline.cli.common import flow_database
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from tests.helpers import stores

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-param-pw"  # trust authentication ignores it; it must never be stored


def test_only_a_url_with_a_password_goes_through_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(store.URL_ENV, raising=False)
    secret = f"postgresql://campaign:{PASSWORD}@db.example:5432/campaigns"
    with flow_database(secret) as database:
        assert database is None
        assert store.database_url(None) == store.database_url(secret)  # what the flow resolves
    assert store.URL_ENV not in os.environ  # put back
    for plain in ("postgresql://campaign@db.example/campaigns", str(tmp_path / "c.sqlite"), None):
        with flow_database(plain) as database:
            assert database == plain and store.URL_ENV not in os.environ
    monkeypatch.setenv(store.URL_ENV, "sqlite:///elsewhere.sqlite")
    with flow_database(secret) as database:
        assert database is None and os.environ[store.URL_ENV] == store.database_url(secret)
    assert os.environ[store.URL_ENV] == "sqlite:///elsewhere.sqlite"


@pytest.mark.timeout(300)
def test_run_on_postgresql_keeps_the_password_out_of_the_flow_runs_parameters(tmp_path, request, prefect_harness,
                                                                             monkeypatch):
    monkeypatch.delenv(store.URL_ENV, raising=False)
    url = stores.new_store_url("postgresql", tmp_path, request).replace("campaign@", f"campaign:{PASSWORD}@")
    assert PASSWORD in url
    audience = tmp_path / "audience.csv"
    audience.write_text("\n".join((ROOT / "audiences/sample.csv").read_text().splitlines()[:21]) + "\n")
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(audience=str(audience), receipts_wait_s=0)
    spec = tmp_path / "welcome.yaml"
    spec.write_text(yaml.safe_dump(data))
    spool = tmp_path / "spool"
    with serve_in_thread(create_receiver_app(spool, secrets_from_env())) as receiver, \
            serve_in_thread(create_app(SandboxConfig(
                access_token="test-token", app_secret="test-app-secret", templates={"welcome_offer": "marketing"},
                webhook_url=f"{receiver}/webhooks/whatsapp"))) as sandbox:
        assert main(["run", str(spec), "--db", url, "--spool-dir", str(spool), "--reports-dir",
                     str(tmp_path / "reports"), "--provider-base-url", sandbox]) == 0
    assert store.URL_ENV not in os.environ

    with prefect_harness.client() as api:
        answer = api.post("/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_DESC", "limit": 200})
        answer.raise_for_status()
    runs = [r for r in answer.json() if r["parameters"].get("spec_path") == str(spec)]
    assert len(runs) == 1, [r["parameters"] for r in answer.json()][:5]
    assert runs[0]["parameters"].get("database") is None
    assert PASSWORD not in json.dumps(runs[0])
    with store.connect(url) as db:  # the run used the store it was given, through the environment
        assert db.scalar("SELECT count(*) FROM outbox WHERE state = 'sent'") > 0
