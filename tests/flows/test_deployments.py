"""The deployments of prefect.yaml against a real `prefect server start` (temp PREFECT_HOME, free loopback port):
`make serve` (python -m flows.serve) runs them and fires schedules; the work-pool way (`prefect deploy --all` +
a process worker) runs them; and a run whose worker is killed mid-run is marked Crashed, not left Running.

Every process is started in its own session and stopped, with its descendants, at the end of its fixture.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pipeline import store
from pipeline.dispatch.locks import current_holder
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from tests.helpers import background
from tests.helpers.prefect import (
    FINAL,
    PREFECT,
    SECRETS,
    SERVER_START_S,
    PrefectServer,
    deployment,
    final_state,
    flow_run,
    heartbeats,
    prefect_server,
    run_deployment,
    run_logs,
    run_setup_command,
    scratch,
)
from tests.helpers.waiting import Deadline

ROOT = Path(__file__).resolve().parents[2]
SETUP_S = 240  # TestWorkPool's set-up (server, work pool, automation, `prefect deploy --all`), at most


# --- a spool file with one genuine receipt, for the receipts flow to ingest -----------------------------------


def spool_one_receipt(spool: Path, db: Path) -> None:
    """A signed receipt for message m-1 in `spool`, and m-1 in the store `db` (a SQLite file; a receipt naming no
    message of the outbox would be kept apart, not counted in `events`)."""
    with store.connect(db) as shared:
        shared.execute("INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, payload_json,"
                       " state, queued_at) VALUES ('m-1', 'c1', 0, '+447700900123', 'whatsapp', 'S1', '{}', 'sent',"
                       " :at)", at=datetime.now(UTC))
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
        "field": "messages", "value": {"messaging_product": "whatsapp", "statuses": [{
            "id": "wamid.deployed", "status": "delivered", "timestamp": "1750030073",
            "recipient_id": "447700900123", "biz_opaque_callback_data": "m-1"}]}}]}]}).encode()
    signature = "sha256=" + hmac.new(SECRETS["WHATSAPP_APP_SECRET"].encode(), body, hashlib.sha256).hexdigest()
    secrets = secrets_from_env(SECRETS)
    with serve_in_thread(create_receiver_app(spool, secrets)) as receiver:
        answer = httpx.post(f"{receiver}/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": signature})
        assert answer.status_code == 200
    # Closing the receiver closes its spool file: the receipts flow only ingests closed files.


def events_in(db: Path) -> list[str]:
    with store.connect(db) as shared:
        return [r[0] for r in shared.rows("SELECT provider_message_id FROM events")]


# --- make serve -----------------------------------------------------------------------------------------------


def _pool_server(stack: ExitStack) -> PrefectServer:
    """A server with what `make worker` sets up before its worker: bounded as a whole by SETUP_S (the tests' own
    timeout counts their bodies only), so a slow machine fails here, saying which step ran out."""
    deadline = Deadline(SETUP_S, "TestWorkPool's set-up")
    server = stack.enter_context(prefect_server(scratch(stack, "prefect-pool"), deadline))
    env = {**server.env, "PWD": str(ROOT)}  # prefect.yaml's pull step: {{ $PWD }}
    # A short zombie window keeps the crash test short: just above the 30 s heartbeat (Prefect's minimum), which
    # only the killed run of this class outlives.
    run_setup_command([sys.executable, "-m", "flows.serve", "--setup", "--zombie-after", "32"], env=env,
                      cwd=ROOT, deadline=deadline, step="the work pool and the zombie automation")
    run_setup_command([PREFECT, "--no-prompt", "deploy", "--all"], env=env, cwd=ROOT, deadline=deadline,
                      step="prefect deploy --all")
    with server.client() as api:
        api.post("/work_pools/local-process/queues", json={"name": TEST_QUEUE}).raise_for_status()
    return server


# Both come up in the background while earlier tests run (tests/helpers/background.py); they are stopped
# with this module.
background.register("serve_server", lambda stack: stack.enter_context(prefect_server(scratch(stack, "prefect-serve"))))
background.register("pool_server", _pool_server)


@pytest.fixture(scope="module")
def serve_server() -> Iterator[PrefectServer]:
    yield background.result("serve_server", SERVER_START_S)
    background.close("serve_server")


@pytest.fixture(scope="module")
def pool_server() -> Iterator[PrefectServer]:
    yield background.result("pool_server", SETUP_S)
    background.close("pool_server")


class TestServe:
    @pytest.fixture(scope="class")
    def server(self, serve_server: PrefectServer) -> PrefectServer:
        return serve_server

    def test_make_serve_serves_prefect_yaml_and_runs_a_deployment(self, server: PrefectServer, tmp_path: Path):
        # What `make serve` runs; in a scratch folder, so a schedule firing meanwhile touches nothing of ours.
        serve = server.procs.start("flows-serve", [sys.executable, "-m", "flows.serve"], env=server.env,
                                   cwd=tmp_path)
        entries = {e["name"]: e for e in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
        with server.client() as api:
            found = server.wait_for(
                lambda: (got := {d["name"]: d for d in api.post("/deployments/filter", json={}).json()})
                and set(got) == set(entries) and got, timeout_s=60, what="every deployment of prefect.yaml")
            flows = {f["id"]: f["name"] for f in api.post("/flows/filter", json={}).json()}
            names = {name: f"{flows[d['flow_id']]}/{name}" for name, d in found.items()}
            # Each deployment carries the schedules prefect.yaml declares (cron with its time zone, interval).
            for name, entry in entries.items():
                want = [_schedule(s) for s in entry.get("schedules") or []]
                got = [_schedule(s["schedule"]) for s in found[name]["schedules"]]
                assert got == want, name
                assert found[name]["parameters"] == (entry.get("parameters") or {}), name
            assert {"cron": "0 9 * * 1", "timezone": "Europe/London"} in [
                _schedule(s["schedule"]) for s in found["welcome-weekly"]["schedules"]]

            spool, db = tmp_path / "spool", tmp_path / "campaigns.sqlite"
            spool_one_receipt(spool, db)
            run_id = run_deployment(api, names["collect-receipts"], {"database": str(db), "spool_dir": str(spool)})
            run = final_state(api, run_id, server)
            assert run["state_type"] == "COMPLETED", run["state"]
            assert serve.poll() is None
            # The served run did the job, with the parameters it was given.
            assert events_in(db) == ["wamid.deployed"]
            # Served runs send heartbeats (flows/serve.py sets their frequency), so a dead one is noticed.
            server.wait_for(lambda: heartbeats(api, run_id), timeout_s=30, what="a heartbeat of the run")
            # Its log lines reach the API (they are shipped in batches, hence the wait).
            server.wait_for(lambda: any("1 spool files: 1 events" in e["message"] for e in run_logs(api, run_id)),
                            timeout_s=20, what="the run's log line")

    def test_an_interval_schedule_fires_and_its_run_completes(self, server: PrefectServer, tmp_path: Path):
        spool, db = tmp_path / "spool", tmp_path / "campaigns.sqlite"
        spool_one_receipt(spool, db)
        # A test-only deployment of the same flow, as prefect.yaml's collect-receipts but every 5 s.
        script = (
            "from flows.serve import load_flow, serve\n"
            "flow = load_flow('flows/receipts.py:receipts_flow')\n"
            f"serve(flow.to_deployment(name='every-5s', interval=5, parameters={{'database': {str(db)!r}, "
            f"'spool_dir': {str(spool)!r}}}))\n"
        )
        serving = server.procs.start("serve-every-5s", [sys.executable, "-c", script], env=server.env, cwd=tmp_path)
        with server.client() as api:
            found = server.wait_for(lambda: deployment(api, "collect-receipts/every-5s"), timeout_s=60,
                                    what="the test deployment")

            def finished_runs() -> list[dict[str, Any]]:
                return [r for r in api.post("/flow_runs/filter", json={
                    "deployments": {"id": {"any_": [found["id"]]}},
                    "flow_runs": {"state": {"type": {"any_": sorted(FINAL)}}}}).json() if r["auto_scheduled"]]

            # One completed scheduled run is what this test is about (on a loaded machine runs can overlap: they
            # share the store, and a replayed spool file adds nothing).
            run = server.wait_for(lambda: next((r for r in finished_runs() if r["state_type"] == "COMPLETED"), None),
                                  timeout_s=75, what="a scheduled run to complete",
                                  details=lambda: f"finished: {[r['state'] for r in finished_runs()]}")
        # No run started every 5 s outlives the test's folder: stop serving first.
        server.procs.stop(serving)
        assert "auto-scheduled" in run["tags"]
        assert events_in(db) == ["wamid.deployed"]


def _schedule(s: dict[str, Any]) -> dict[str, Any]:
    if "cron" in s:
        return {"cron": s["cron"], "timezone": s.get("timezone") or "UTC"}
    return {"interval": float(s["interval"])}


# --- a process work pool: prefect deploy --all + prefect worker start ---------------------------------------

TEST_QUEUE = "tests"  # the worker polls only this queue: a schedule of prefect.yaml firing meanwhile waits


class TestWorkPool:
    @pytest.fixture(scope="class")
    def server(self, pool_server: PrefectServer) -> PrefectServer:
        return pool_server

    @pytest.fixture
    def worker(self, server: PrefectServer, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
        """What `make worker` ends with, polling only the test queue; stopped after each test."""
        proc = server.procs.start(f"worker-{tmp_path.name}", [
            PREFECT, "worker", "start", "--pool", "local-process", "--work-queue", TEST_QUEUE,
        ], env=server.env, cwd=tmp_path)
        yield proc
        server.procs.stop(proc)

    @pytest.mark.timeout(300, func_only=True)  # the class's set-up has its own deadline
    def test_deploy_all_registers_every_deployment_in_the_pool(self, server: PrefectServer):
        names = [e["name"] for e in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]]
        with server.client() as api:
            found = api.post("/deployments/filter", json={}).json()
            automation = api.post("/automations/filter", json={}).json()
        assert sorted(d["name"] for d in found) == sorted(names)
        for d in found:
            assert d["work_pool_name"] == "local-process", d["name"]
            assert d["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
        assert [a["name"] for a in automation] == ["crash-zombie-flow-runs"]

    @pytest.mark.timeout(300, func_only=True)  # the class's set-up has its own deadline
    def test_a_worker_runs_a_deployment_to_completion(self, server: PrefectServer, worker: Any, tmp_path: Path):
        spool, db = tmp_path / "spool", tmp_path / "campaigns.sqlite"
        spool_one_receipt(spool, db)
        with server.client() as api:
            run_id = run_deployment(api, "collect-receipts/collect-receipts",
                                    {"database": str(db), "spool_dir": str(spool)}, work_queue_name=TEST_QUEUE)
            run = final_state(api, run_id, server, timeout_s=75)
        assert run["state_type"] == "COMPLETED", run["state"]
        assert events_in(db) == ["wamid.deployed"]

    @pytest.mark.timeout(300, func_only=True)  # the class's set-up has its own deadline
    def test_a_run_whose_worker_is_killed_is_marked_crashed(self, server: PrefectServer, killed_worker: dict):
        """kill -9 of the worker and its flow-run process (a lost machine): nothing reports the end of the run;
        the zombie automation marks it Crashed once its heartbeats stop, and the campaign lock is free again.
        The run is started and killed in the background (`_killed_worker`), so the zombie window passes while
        other tests run; here, what the server and the ledger made of it."""
        run_id, sandbox, db = killed_worker["run_id"], killed_worker["sandbox"], killed_worker["db"]
        with server.client() as api:
            run = server.wait_for(lambda: (r := flow_run(api, run_id))["state_type"] != "RUNNING" and r,
                                  timeout_s=80, what="the zombie run to be marked", every_s=1)
        assert run["state_type"] == "CRASHED", run["state"]
        assert "No heartbeat" in run["state"]["message"]
        assert httpx.get(f"{sandbox}/_sandbox/stats?messages=0").json()["accepted"] == killed_worker["sent_at_kill"]
        with store.connect(db) as shared:  # the dead run's lease names a process that is gone: the campaign is free
            assert current_holder(shared, "zombie") is None


ZOMBIE_QUEUE = "zombie"  # the killed worker's own queue: the worker test's runs never go to it


def _killed_worker(stack: ExitStack) -> dict[str, Any]:
    """A worker runs the slow campaign against a sandbox and is killed (SIGKILL, with its flow-run process) once
    the run is sending and has sent a heartbeat, the lock naming the run; the run is Running, and nobody is left to
    say otherwise. What the crash test needs to check afterwards is returned; the sandbox stays up until then."""
    server: PrefectServer = background.result("pool_server", SETUP_S)
    tmp = scratch(stack, "zombie")
    with server.client() as api:
        api.post("/work_pools/local-process/queues", json={"name": ZOMBIE_QUEUE}).raise_for_status()
    worker = server.procs.start("worker-zombie", [
        PREFECT, "worker", "start", "--pool", "local-process", "--work-queue", ZOMBIE_QUEUE,
    ], env=server.env, cwd=tmp)
    stack.callback(server.procs.stop, worker)
    config = SandboxConfig(access_token=SECRETS["WHATSAPP_ACCESS_TOKEN"], app_secret="test-app-secret",
                           webhook_url=None, templates={"welcome_offer": "marketing"}, seed=3)
    sandbox = stack.enter_context(serve_in_thread(create_app(config)))
    spec, db = slow_campaign(tmp), tmp / "campaigns.sqlite"
    with server.client() as api:
        run_id = run_deployment(api, "campaign/inbox-campaign", {
            "spec_path": str(spec), "campaign_id": "zombie", "database": str(db), "spool_dir": str(tmp / "spool"),
            "reports_dir": str(tmp / "reports"), "provider_base_url": sandbox,
        }, work_queue_name=ZOMBIE_QUEUE)

        def sending() -> bool:
            assert flow_run(api, run_id)["state_type"] not in FINAL
            return httpx.get(f"{sandbox}/_sandbox/stats?messages=0").json()["accepted"] > 0

        server.wait_for(sending, timeout_s=60, what="the campaign to start sending")
        assert flow_run(api, run_id)["state_type"] == "RUNNING"
        server.wait_for(lambda: heartbeats(api, run_id), timeout_s=30, what="a heartbeat")
        with store.connect(db) as shared:
            holder = current_holder(shared, "zombie")
        assert holder is not None and holder.flow_run_id == run_id  # the lock names the running run

        server.procs.kill(worker)  # SIGKILL: worker, flow-run process, everything under them
        worker.wait(timeout=10)
        sent_at_kill = httpx.get(f"{sandbox}/_sandbox/stats?messages=0").json()["accepted"]
        assert flow_run(api, run_id)["state_type"] == "RUNNING"  # nobody left to say otherwise
    return {"run_id": run_id, "sandbox": sandbox, "db": db, "sent_at_kill": sent_at_kill}


background.register("killed_worker", _killed_worker)


@pytest.fixture(scope="module")
def killed_worker(pool_server: PrefectServer) -> Iterator[dict[str, Any]]:
    yield background.result("killed_worker", 180)
    background.close("killed_worker")


def slow_campaign(tmp_path: Path) -> Path:
    """The welcome campaign over 200 rows at 2 messages/s: it is still sending when the worker is killed."""
    audience = tmp_path / "audience.csv"
    lines = (ROOT / "audiences/sample.csv").read_text().splitlines()
    audience.write_text("\n".join(lines[:201]) + "\n")
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(audience=str(audience), receipts_wait_s=1, rate_limit={"max_per_second": 2, "concurrency": 1})
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
