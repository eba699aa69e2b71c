"""`make serve` / `make worker`: run the deployments of prefect.yaml against a Prefect server.

prefect.yaml stays the single source of deployments. `python -m flows.serve` reads it and calls `prefect.serve`
(one process serves every schedule); `python -m flows.serve --setup` only prepares the server for the work-pool
path (`prefect deploy --all` + `prefect worker start`): the process work pool and the zombie-run automation.

Zombie runs: a flow run whose process dies with its machine or worker (kill -9, OOM, lost container) cannot
report its own crash and would stay "Running" forever. Flow runs send a heartbeat event every
PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds; the automation below marks a run Crashed when, after a heartbeat,
neither another heartbeat nor a final state arrives within ZOMBIE_AFTER_S.
"""

from __future__ import annotations

import argparse
import importlib
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.schedules import Cron, Interval

ROOT = Path(__file__).resolve().parents[1]
WORK_POOL = "local-process"
ZOMBIE_AUTOMATION = "crash-zombie-flow-runs"
ZOMBIE_AFTER_S = 90  # three heartbeats of 30 s
# The environment of every flow-run process `serve` starts (it passes its own environment on); prefect.yaml
# sets the same for the work-pool way.
RUN_ENV = {
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",  # the minimum Prefect accepts
    "PREFECT_LOGGING_EXTRA_LOGGERS": "pipeline",  # the library's (masked) log lines show in the run's logs
}
# After a heartbeat, any of these is a sign of life; a suspended run stops its process on purpose.
ALIVE_EVENTS = ("heartbeat", "Completed", "Failed", "Cancelled", "Crashed", "Suspended")


def deployment_entries(path: Path = ROOT / "prefect.yaml") -> list[dict[str, Any]]:
    return list(yaml.safe_load(path.read_text())["deployments"])


def load_flow(entrypoint: str) -> Any:
    module_path, flow_name = entrypoint.split(":")
    module = importlib.import_module(module_path.removesuffix(".py").replace("/", "."))
    return getattr(module, flow_name)


def schedules_of(entry: dict[str, Any]) -> list[Cron | Interval]:
    return [
        Cron(s["cron"], timezone=s.get("timezone")) if "cron" in s else Interval(s["interval"])
        for s in entry.get("schedules") or []
        if s.get("active", True)
    ]


def deployments_from_yaml(path: Path = ROOT / "prefect.yaml", only: list[str] | None = None) -> list[Any]:
    """Runner deployments for `prefect.serve`, one per prefect.yaml entry (or the ones named in `only`)."""
    result = []
    for entry in deployment_entries(path):
        if only and entry["name"] not in only:
            continue
        result.append(load_flow(entry["entrypoint"]).to_deployment(
            name=entry["name"], description=entry.get("description"), tags=entry.get("tags"),
            parameters=entry.get("parameters") or {}, schedules=schedules_of(entry),
        ))
    return result


def ensure_zombie_automation(within_s: float = ZOMBIE_AFTER_S) -> Any:
    """Creates (or updates) the automation that marks flow runs Crashed once their heartbeats stop."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    automation = Automation(
        name=ZOMBIE_AUTOMATION,
        description="Marks a flow run Crashed when its heartbeats stop (its process died without reporting).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={f"prefect.flow-run.{s}" for s in ALIVE_EVENTS},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_s),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"No heartbeat for {within_s:.0f} s: the run's process died without reporting "
                    "(machine, worker or container lost). Re-run the deployment; the campaign ledger resumes it.",
        )],
    )
    try:
        existing = Automation.read(name=ZOMBIE_AUTOMATION)
    except ValueError:
        existing = None
    if existing is None:
        return automation.create()
    automation.id = existing.id
    automation.update()
    return automation


def deploy_to_pool(names: list[str], pool: str = WORK_POOL, path: Path = ROOT / "prefect.yaml") -> list[Any]:
    """Registers the named deployments of prefect.yaml on the process work pool, their code read from this checkout
    (every worker machine has the project at the same path): what `prefect deploy --name NAME` does, from Python."""
    from prefect import Flow

    ids = []
    for entry in deployment_entries(path):
        if entry["name"] not in names:
            continue
        job_env = ((entry.get("work_pool") or {}).get("job_variables") or {}).get("env") or RUN_ENV
        flow_ = Flow.from_source(source=str(path.parent), entrypoint=entry["entrypoint"])
        ids.append(flow_.deploy(
            name=entry["name"], work_pool_name=pool, description=entry.get("description"), tags=entry.get("tags"),
            parameters=entry.get("parameters") or {}, schedules=schedules_of(entry), job_variables={"env": job_env},
            print_next_steps=False, ignore_warnings=True,
        ))
    missing = set(names) - {e["name"] for e in deployment_entries(path)}
    if missing:
        raise SystemExit(f"not in {path.name}: {', '.join(sorted(missing))}")
    return ids


def ensure_work_pool(name: str = WORK_POOL) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true",
                        help="only create the process work pool and the zombie automation (for `make worker`)")
    parser.add_argument("--deploy", action="append", metavar="NAME",
                        help="with --setup: also register this deployment of prefect.yaml on the work pool "
                             "(repeatable; e.g. dispatch-senders for campaigns dispatched by several workers)")
    parser.add_argument("--only", action="append", help="serve only this deployment (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many flow runs at once")
    parser.add_argument("--zombie-after", type=float, default=ZOMBIE_AFTER_S, metavar="SECONDS",
                        help="mark a run Crashed after this long without a heartbeat (more than the heartbeat "
                             "interval, PREFECT_FLOWS_HEARTBEAT_FREQUENCY)")
    args = parser.parse_args(argv)
    ensure_zombie_automation(args.zombie_after)
    if args.setup:
        ensure_work_pool()
        print(f"work pool {WORK_POOL!r} and automation {ZOMBIE_AUTOMATION!r} are in place", flush=True)
        if args.deploy:
            deploy_to_pool(args.deploy)
            print(f"deployment(s) {', '.join(args.deploy)} registered on {WORK_POOL!r}", flush=True)
        return 0
    for name, value in RUN_ENV.items():
        os.environ.setdefault(name, value)
    serve(*deployments_from_yaml(only=args.only), limit=args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
