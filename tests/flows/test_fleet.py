"""A campaign dispatched by Prefect workers: the campaign flow splits its 4 senders into 2 groups and starts one
`dispatch-senders` run per group through the deployment on the process work pool (subflow runs of the campaign);
a real `prefect worker start` runs them, each claiming its group's messages from the shared PostgreSQL store under
its sender leases. The sandbox counts every message accepted once: 0 duplicates, 0 lost.

Real parts only: `prefect server start`, `python -m flows.serve --setup --deploy dispatch-senders`, a process worker,
the local PostgreSQL of the session, the WhatsApp sandbox and the webhook receiver on loopback."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pipeline import store
from pipeline.dispatch.locks import LockHolder, sender_holders
from pipeline.dispatch.operations import campaign_status, resend_unknown
from pipeline.receipts.ingest import ingest_spool
from pipeline.receipts.receiver import create_receiver_app, secrets_from_env
from pipeline.sandbox.whatsapp import SandboxConfig, create_app
from pipeline.servers import serve_in_thread
from pipeline.spec import load_spec
from tests.helpers import stores
from tests.helpers.fleet import fleet_spec
from tests.helpers.prefect import PREFECT, PrefectServer, prefect_server, run_setup_command
from tests.helpers.waiting import Deadline, wait_for

ROOT = Path(__file__).resolve().parents[2]
SETUP_S = 240  # server, work pool, deployment, at most
SENDERS = ["1065000001", "1065000002", "1065000003", "1065000004"]
ROWS = 240


@pytest.fixture(scope="module")
def pool_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A Prefect server with the process work pool and the dispatch-senders deployment on it, as `make worker`
    sets them up (bounded as a whole: a slow machine fails here, saying which step ran out)."""
    deadline = Deadline(SETUP_S, "the fleet test's set-up")
    with prefect_server(tmp_path_factory.mktemp("prefect"), deadline, api_only=True) as server:
        run_setup_command([sys.executable, "-m", "flows.serve", "--setup", "--deploy", "dispatch-senders"],
                          env=server.env, cwd=ROOT, deadline=deadline, step="work pool + dispatch-senders deployment")
        yield server


@pytest.fixture
def worker(pool_server: PrefectServer, tmp_path: Path) -> Iterator[None]:
    """`prefect worker start` on the pool, its runs' sender leases short (a dead run's senders free in seconds)."""
    env = {**pool_server.env, "CAMPAIGN_LEASE_TTL_S": "3", "CAMPAIGN_LEASE_RENEW_S": "0.5"}
    proc = pool_server.procs.start(f"worker-{tmp_path.name}", [
        PREFECT, "worker", "start", "--pool", "local-process", "--limit", "4"], env=env, cwd=tmp_path)
    yield
    pool_server.procs.stop(proc)


@contextmanager
def sandbox_and_receiver(spool: Path) -> Iterator[tuple[str, Any]]:
    """The WhatsApp sandbox on loopback, posting its receipts to the webhook receiver spooling to `spool`."""
    with serve_in_thread(create_receiver_app(spool, secrets_from_env())) as receiver:
        config = SandboxConfig(access_token="test-token", app_secret="test-app-secret", seed=11,
                               templates={"welcome_offer": "marketing"}, webhook_url=f"{receiver}/webhooks/whatsapp",
                               webhook_delay_s=(0.01, 0.05))
        app = create_app(config)
        with serve_in_thread(app) as url:
            yield url, app.state.sandbox


def run_campaign(server: PrefectServer, spec: Path, db_url: str, tmp: Path, url: str,
                 campaign_id: str | None = None) -> dict[str, Any]:
    """The campaign flow in this process, reporting to `server`, dispatching in 2 groups."""
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.campaign import campaign_flow

    with temporary_settings(updates={PREFECT_API_URL: server.api}):
        try:
            return campaign_flow(str(spec), campaign_id=campaign_id, database=db_url, spool_dir=str(tmp / "spool"),
                                 reports_dir=str(tmp / "reports"), provider_base_url=url, dispatch_groups=2)
        finally:
            APILogWorker.drain_all()


def group_runs(server: PrefectServer) -> list[dict[str, Any]]:
    with server.client() as api:
        found = api.get("/deployments/name/dispatch-senders/dispatch-senders").json()
        return api.post("/flow_runs/filter", json={"deployments": {"id": {"any_": [found["id"]]}},
                                                   "sort": "EXPECTED_START_TIME_ASC"}).json()


@pytest.mark.timeout(420)
def test_a_campaign_of_4_senders_in_2_groups_runs_on_a_worker_with_nothing_lost_or_twice(
    tmp_path: Path, request: pytest.FixtureRequest, pool_server: PrefectServer, worker: None
) -> None:
    db_url = stores.new_store_url("postgresql", tmp_path, request)
    seen: list[dict[str, Any]] = []  # `campaign status` while the groups send, as an operator would see it
    stop = threading.Event()

    def watch_status() -> None:
        with store.connect(db_url) as db:
            while not stop.wait(0.2):
                last = campaign_status(db, "fleet")["last_run"]
                if last and last.get("groups"):
                    seen.append(last)

    with sandbox_and_receiver(tmp_path / "spool") as (url, sandbox):
        # 5/s a sender: 12 s a group, progress reported every 3 s while it sends
        spec = fleet_spec(tmp_path, SENDERS, ROWS, rate=5, concurrency=4, receipts_wait_s=15)
        watcher = threading.Thread(target=watch_status, daemon=True)
        watcher.start()
        try:
            summary = run_campaign(pool_server, spec, db_url, tmp_path, url)
        finally:
            stop.set()
            watcher.join(timeout=10)
        # The sandbox's own counts: every message accepted once, none twice, spread over the four numbers.
        assert sandbox.accepted == ROWS and sandbox.duplicate_callback_data == 0
        assert len(sandbox.accepted_callback_data()) == ROWS
        assert {s: len(t) for s, t in sandbox.accepted_at.items()} == dict.fromkeys(SENDERS, ROWS // 4)
    with store.connect(db_url) as db:
        assert dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY state")) == {"sent": ROWS}
        assert db.scalar("SELECT count(*) FROM leases WHERE name LIKE 'sender:%'") == 0  # all released
    # The campaign's result adds up its groups' results.
    assert summary["dispatch"]["sent"] == ROWS and summary["dispatch"]["total"] == ROWS
    assert summary["dispatch"]["states"] == {"sent": ROWS} and summary["dispatch"]["groups"] == 2
    # Live progress in the store while both groups sent: their sum, with a rate and an ETA, then the final figures.
    live = [s for s in seen if len(s["groups"]) == 2 and not s["final"] and 0 < s["sent"] < ROWS]
    assert live and all(s["eta_s"] for s in live) and all(s["total"] == ROWS for s in live), seen[-3:]
    assert all(s["sent"] == sum(g["sent"] for g in s["groups"].values()) for s in live)
    assert seen[-1]["final"] and seen[-1]["sent"] == ROWS and seen[-1]["group_count"] == 2

    # Two runs of the deployment, subflow runs of the campaign's run, each with its own group, both completed on
    # the worker.
    runs = group_runs(pool_server)
    assert len(runs) == 2, [r["name"] for r in runs]
    assert all(r["state_type"] == "COMPLETED" for r in runs), [r["state"] for r in runs]
    assert all(r["parent_task_run_id"] for r in runs)  # linked to the campaign's run (subflow runs)
    groups = [set(r["parameters"]["senders"]) for r in runs]
    assert not groups[0] & groups[1] and groups[0] | groups[1] == set(SENDERS)
    assert all(r["work_pool_name"] == "local-process" for r in runs)


@pytest.mark.timeout(420)
def test_a_group_run_killed_mid_run_is_replaced_and_the_campaign_completes_sending_nothing_twice(
    tmp_path: Path, request: pytest.FixtureRequest, pool_server: PrefectServer, worker: None
) -> None:
    rows = 400  # 100 per sender at 10/s: the kill lands mid-run
    db_url = stores.new_store_url("postgresql", tmp_path, request)
    spec = fleet_spec(tmp_path, SENDERS, rows, rate=10, concurrency=4, receipts_wait_s=15)
    killed: list[Any] = []

    def kill_a_group_mid_run(db: store.Store, sandbox: Any) -> None:
        try:
            def victim() -> Any:
                for sender, holder in sender_holders(db, "fleet").items():
                    if len(sandbox.accepted_at.get(sender, [])) >= 15:
                        return holder
                return None

            holder = wait_for(victim, timeout_s=180, what="a group run sending", every_s=0.05)
            os.kill(holder.pid, signal.SIGKILL)  # the group's flow-run process, as a lost machine would
            killed.append(holder)
        except BaseException as exc:  # noqa: BLE001 - shown by the test's assertion
            killed.append(exc)

    with sandbox_and_receiver(tmp_path / "spool") as (url, sandbox), store.connect(db_url) as db:
        killer = threading.Thread(target=kill_a_group_mid_run, args=(db, sandbox), daemon=True)
        killer.start()
        summary = run_campaign(pool_server, spec, db_url, tmp_path, url)
        killer.join(timeout=10)
        assert killed and isinstance(killed[0], LockHolder), killed
        # Nothing went twice; what the killed run had claimed without sending is `unknown` (no receipt names it).
        states = dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY state"))
        assert sandbox.duplicate_callback_data == 0 and len(sandbox.accepted_callback_data()) == sandbox.accepted
        assert set(states) <= {"sent", "unknown"} and states["sent"] == sandbox.accepted
        assert summary["dispatch"]["states"] == states
        # The operator's `campaign resend-unknown`: the spool's receipts settle what they name (the run's own ingest,
        # flows/campaign.py), the rest goes out, still once each.
        resend_unknown(db, "fleet", ingest=lambda: ingest_spool(db, tmp_path / "spool"),
                       grace_s=load_spec(spec).retry.reconcile_grace_s)
        run_campaign(pool_server, spec, db_url, tmp_path, url)
        assert sandbox.accepted == rows and sandbox.duplicate_callback_data == 0
        assert len(sandbox.accepted_callback_data()) == rows
        assert dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY state")) == {"sent": rows}

    # The killed run is Crashed (its worker saw its process die); a new run of the same group finished its senders.
    runs = group_runs(pool_server)
    dead = next(r for r in runs if r["id"] == killed[0].flow_run_id)
    assert dead["state_type"] == "CRASHED", dead["state"]
    [replacement] = [r for r in runs if r["name"] == dead["name"] + "-replacement-1"]
    assert replacement["state_type"] == "COMPLETED" and replacement["parameters"] == dead["parameters"]
    assert replacement["parent_task_run_id"]  # a subflow run of the campaign too


@pytest.mark.timeout(300)
def test_group_runs_no_worker_starts_are_cancelled_and_the_campaign_fails_naming_group_and_pool(
    tmp_path: Path, request: pytest.FixtureRequest, pool_server: PrefectServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No worker serves the pool: without a bound, the campaign flow would wait for its group runs forever."""
    from flows.fleet import GroupsNotStarted

    monkeypatch.setenv("CAMPAIGN_GROUP_START_TIMEOUT_S", "4")
    db_url = stores.new_store_url("postgresql", tmp_path, request)
    with sandbox_and_receiver(tmp_path / "spool") as (url, sandbox):
        spec = fleet_spec(tmp_path, SENDERS, 40, rate=20, concurrency=4, receipts_wait_s=1)
        with pytest.raises(GroupsNotStarted) as failed:
            run_campaign(pool_server, spec, db_url, tmp_path, url, campaign_id="nobody")
        assert sandbox.accepted == 0
    message = str(failed.value)
    assert "dispatch group 0" in message and "dispatch group 1" in message
    assert "work pool 'local-process'" in message and "CAMPAIGN_GROUP_START_TIMEOUT_S" in message
    with store.connect(db_url) as db:  # nothing sent, everything queued for a resume
        assert dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY state")) == {"queued": 40}
    runs = [r for r in group_runs(pool_server) if r["name"].startswith("nobody-group-")]
    assert sorted(r["name"] for r in runs) == ["nobody-group-0", "nobody-group-1"]
    assert all(r["state_type"] == "CANCELLED" for r in runs), [r["state"] for r in runs]
