"""Prefect for tests: the in-process harness every flow test shares (`prefect_test_harness`, one per session,
see tests/conftest.py), and real `prefect server start` processes for the tests of deployments, workers and the UI
(temp PREFECT_HOME, free loopback port), with the REST calls those tests make."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.processes import Processes, free_port
from tests.helpers.waiting import Deadline, wait_for

PREFECT = str(Path(sys.executable).parent / "prefect")
SECRETS = {"WHATSAPP_ACCESS_TOKEN": "test-token", "WHATSAPP_APP_SECRET": "test-app-secret",
           "WHATSAPP_VERIFY_TOKEN": "test-verify-token"}
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
SERVER_START_S = 120  # `prefect server start` to a healthy API, at most (about 10 s when the machine is idle)


@dataclass
class PrefectServer:
    url: str
    env: dict[str, str]
    procs: Processes

    @property
    def api(self) -> str:
        return f"{self.url}/api"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=30, transport=_RetryOn503())

    def wait_for(self, check: Any, *, timeout_s: float, what: str, every_s: float = 0.5,
                 details: Callable[[], str] | None = None) -> Any:
        """`wait_for` that shows `details` and the logs of every process started against this server when it
        gives up."""
        def shown() -> str:
            return (details() + "\n" if details else "") + self.procs.tails()

        return wait_for(check, timeout_s=timeout_s, what=what, every_s=every_s, details=shown)


class _RetryOn503(httpx.HTTPTransport):
    """The server answers 503 while its SQLite file is locked by its own services; a client retries."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(20):
            response = super().handle_request(request)
            if response.status_code != 503:
                return response
            response.close()
            time.sleep(0.5)
        return response


def server_env(home: Path) -> dict[str, str]:
    """The environment of every Prefect process of a test: nothing inherited from a developer's Prefect set-up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(SECRETS)
    env.update(
        PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # Quick polling so a test waits seconds, not minutes, for a schedule or a worker.
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2", PREFECT_RUNNER_POLL_FREQUENCY="2",
        PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_CLI_COLORS="false", PYTHONUNBUFFERED="1",
    )
    return env


@contextmanager
def prefect_server(tmp: Path, deadline: Deadline | None = None, *, api_only: bool = False) -> Iterator[PrefectServer]:
    """`prefect server start` on a free loopback port with its own PREFECT_HOME; stopped with everything the
    test started against it. Its start counts against `deadline` when one is given. `api_only`: no UI and no
    scheduler (nothing here runs on a schedule); the services that record what flows report stay."""
    procs = Processes(tmp / "logs")
    port = free_port()
    env = server_env(tmp / "prefect-home")
    # The UI's pages call the API at this address (by default they would call 127.0.0.1:4200).
    env["PREFECT_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    url = f"http://127.0.0.1:{port}"
    server = PrefectServer(url, {**env, "PREFECT_API_URL": f"{url}/api"}, procs)
    only = ["--no-ui", "--no-scheduler", "--no-late-runs"] if api_only else []
    proc = procs.start("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), *only],
                       env=env, cwd=tmp)

    def healthy() -> bool:
        assert proc.poll() is None, procs.log("server")
        try:
            return httpx.get(f"{url}/api/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        start_s = deadline.left("the Prefect server's start", SERVER_START_S) if deadline else SERVER_START_S
        server.wait_for(healthy, timeout_s=start_s, what="the Prefect server to answer", every_s=0.2)
        yield server
    finally:
        procs.stop_all()


def run_setup_command(args: list[str], *, env: dict[str, str], cwd: Path, deadline: Deadline, step: str) -> None:
    """A set-up command (`prefect deploy --all` ...) within what is left of the set-up's deadline."""
    try:
        done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=deadline.left(step))
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{deadline.what}: {step} did not finish within the set-up deadline "
                             f"({deadline.seconds:g} s)\n{exc.stdout or ''}{exc.stderr or ''}") from None
    assert done.returncode == 0, f"{deadline.what}: {step} failed\n{done.stdout}{done.stderr}"


# --- the REST calls the tests make ---------------------------------------------------------------------------


def deployment(api: httpx.Client, name: str) -> dict[str, Any] | None:
    answer = api.get(f"/deployments/name/{name}")
    return answer.json() if answer.status_code == 200 else None


def run_deployment(api: httpx.Client, name: str, parameters: dict[str, Any], **extra: Any) -> str:
    found = deployment(api, name)
    assert found, name
    answer = api.post(f"/deployments/{found['id']}/create_flow_run", json={"parameters": parameters, **extra})
    answer.raise_for_status()
    return answer.json()["id"]


def flow_run(api: httpx.Client, run_id: str) -> dict[str, Any]:
    return api.get(f"/flow_runs/{run_id}").json()


def final_state(api: httpx.Client, run_id: str, server: PrefectServer, timeout_s: float = 60) -> dict[str, Any]:
    return server.wait_for(lambda: (r := flow_run(api, run_id))["state_type"] in FINAL and r, timeout_s=timeout_s,
                           what=f"flow run {run_id} to finish")


def heartbeats(api: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """The run's heartbeat events (what the zombie automation watches)."""
    answer = api.post("/events/filter", json={"filter": {
        "event": {"name": ["prefect.flow-run.heartbeat"]}, "resource": {"id": [f"prefect.flow-run.{run_id}"]}},
        "limit": 50})
    answer.raise_for_status()
    return answer.json()["events"]


def run_logs(api: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    """The run's log entries, oldest first."""
    answer = api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    return answer.json()


def scratch(stack: ExitStack, prefix: str) -> Path:
    """A temporary folder removed when `stack` closes (for set-ups that run before any test's tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    stack.callback(shutil.rmtree, path, ignore_errors=True)
    return path
