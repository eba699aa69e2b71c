"""The takeover rounds of benchmarks/fleet.py, between Prefect workers: a campaign of 2 senders in 2 groups runs on
the process workers; once group 0's sender is sending, the process of group 0's flow run (the worker's child, found
by its flow run id in its environment) is SIGKILLed. Its worker reports the run Crashed, the campaign flow starts a
new run of the group (flows/fleet.py), a worker's new flow-run process takes the sender's lease (a dead process's
lease on this host is free at once), reconciles what the killed run left in flight and sends again.

The figure: seconds from the kill to that sender's first request the sandbox stamps after the new lease was taken
(the sandbox's clock: CLOCK_MONOTONIC, shared by every process here). The steps in between are timed too, from
Prefect's and the store's records: the killed run Crashed, the replacement created, taken by a worker (Pending), its
process Running, the lease taken; and which worker ran the killed run and which its replacement (by process tree).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from pipeline import store
from pipeline.dispatch.locks import sender_lease_name
from pipeline.dispatch.operations import resend_unknown
from pipeline.receipts.ingest import ingest_spool
from pipeline.spec import load_spec

RATE = 80.0
SECONDS = 4.0  # of messages per sender: the kill lands after the first second, the rest goes after the takeover
ROUND_S = 300.0  # one round, at most


def flow_run_env(pid: int) -> str | None:
    """The flow run id a worker gave this process (PREFECT__FLOW_RUN_ID in its environment), if any."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = next((e for e in env if e.startswith(b"PREFECT__FLOW_RUN_ID=")), None)
    return found.split(b"=", 1)[1].decode() if found else None


def run_process(workers: dict[str, subprocess.Popen[bytes]], run_id: str, descendants: Any) -> tuple[str, int] | None:
    """(worker name, pid) of the flow run's process: the topmost descendant of a worker with the run's id."""
    for name, proc in workers.items():
        for pid in descendants(proc.pid):  # parents before children
            if flow_run_env(pid) == run_id:
                return name, pid
    return None


def lease_row(db_url: str, campaign: str, sender: str) -> tuple[str | None, float | None]:
    """(flow run id, when taken as CLOCK_MONOTONIC) of the sender's lease, or (None, None)."""
    with store.connect(db_url) as db:
        rows = list(db.rows("SELECT flow_run_id, since FROM leases WHERE name = :name",
                            name=sender_lease_name(campaign, sender)))
    if not rows:
        return None, None
    run_id, since = rows[0]
    since = store.utc(since)
    return run_id, (since.timestamp() - (time.time() - time.monotonic())) if since else None


def prefect_mono(stamp: Any) -> float | None:
    """A Prefect timestamp (wall clock) as CLOCK_MONOTONIC."""
    return stamp.timestamp() - (time.time() - time.monotonic()) if stamp is not None else None


def takeover_round(i: int, *, db_url: str, sandbox_url: str, spool: Path, work: Path,
                   workers: dict[str, subprocess.Popen[bytes]], tools: Any) -> dict[str, Any]:
    """One round; `tools` is the benchmark's module (fleet_spec, sandbox_times, descendants, wait_until)."""
    from prefect.client.orchestration import get_client

    from flows.campaign import campaign_flow

    senders = [f"2065{i:02d}0001", f"2065{i:02d}0002"]  # group 0: the first (flows/fleet.py split_senders)
    victim_sender, campaign = senders[0], f"takeover-{i}"
    folder = work / campaign
    folder.mkdir()
    spec = tools.fleet_spec(folder, senders, RATE, int(RATE * SECONDS), first=1_000_000 * (i + 1))
    seen: dict[str, Any] = {}
    finished = threading.Event()  # the campaign flow returned: nothing more to wait for

    def kill_group_0() -> None:
        try:
            def sending() -> bool:
                if finished.is_set():
                    raise SystemExit(f"round {i}: the campaign ended before group 0 sent {RATE:g} messages")
                return len(tools.sandbox_times(sandbox_url).get(victim_sender, [])) >= RATE

            tools.wait_until(sending, ROUND_S, f"round {i}: group 0 sending", every_s=0.2)
            run_id, _ = lease_row(db_url, campaign, victim_sender)
            found = run_process(workers, run_id, tools.descendants) if run_id else None
            if found is None:
                raise SystemExit(f"round {i}: no worker's process runs flow run {run_id}")
            seen.update(worker=found[0], run=run_id)
            for pid in [found[1], *tools.descendants(found[1])]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            seen["killed"] = time.monotonic()

            def new_holder() -> tuple[str, float] | None:
                if finished.is_set():
                    raise SystemExit(f"round {i}: the campaign ended with no new holder of {victim_sender}")
                run, since = lease_row(db_url, campaign, victim_sender)
                return (run, since) if run and run != run_id and since else None

            seen["new_run"], seen["lease"] = tools.wait_until(new_holder, ROUND_S, f"round {i}: a new holder",
                                                              every_s=0.05)
            # Which worker runs the replacement: its process, while it lives.
            by = tools.wait_until(lambda: run_process(workers, seen["new_run"], tools.descendants), 30,
                                  f"round {i}: the replacement's process", every_s=0.05)
            seen["new_worker"] = by[0]
        except BaseException as exc:  # noqa: BLE001 - reported by the round, after the campaign
            seen["error"] = exc

    killer = threading.Thread(target=kill_group_0, daemon=True)
    killer.start()
    try:
        summary = campaign_flow(str(spec), campaign_id=campaign, database=db_url, spool_dir=str(spool),
                                reports_dir=str(folder / "reports"), provider_base_url=sandbox_url, dispatch_groups=2)
    finally:
        finished.set()
        killer.join(timeout=60)
    if "error" in seen or "lease" not in seen:
        raise SystemExit(f"round {i}: {seen.get('error', 'the kill never happened')}")
    with store.connect(db_url) as db:
        # What the kill left unknown: the operator's resend-unknown, which settles by the spool's receipts first (as the
        # command's run does, flows/campaign.py) and queues only the rest again.
        settled, resent = resend_unknown(db, campaign, ingest=lambda: ingest_spool(db, spool),
                                         grace_s=load_spec(spec).retry.reconcile_grace_s)
    if resent:
        campaign_flow(str(spec), campaign_id=campaign, database=db_url, spool_dir=str(spool),
                      reports_dir=str(folder / "reports"), provider_base_url=sandbox_url)
    after = [t for t in tools.sandbox_times(sandbox_url)[victim_sender] if t >= seen["lease"]]
    if not after:
        raise SystemExit(f"round {i}: the replacement never sent for {victim_sender}")
    with get_client(sync_client=True) as client:
        dead, new = client.read_flow_run(seen["run"]), client.read_flow_run(seen["new_run"])
        pending = next((s.timestamp for s in client.read_flow_run_states(seen["new_run"]) if s.type.value == "PENDING"),
                       None)
    killed = seen["killed"]
    # Where the time goes: the worker reports the run Crashed; the campaign flow's next poll creates the replacement;
    # a worker's next poll takes it (Pending) and starts a process; that process is up (Running), takes the lease,
    # reconciles and sends.
    steps = {"crashed": prefect_mono(dead.state.timestamp if dead.state else None),
             "replaced": prefect_mono(new.created), "pending": prefect_mono(pending),
             "running": prefect_mono(new.start_time), "lease": seen["lease"], "sent": min(after)}
    return {"takeover_s": min(after) - killed, "dead_state": dead.state.name if dead.state else None,
            "worker": seen["worker"], "new_worker": seen["new_worker"], "settled_unknown": settled,
            "resent_unknown": resent,
            "sent": summary["dispatch"]["sent"],
            "steps_s": {k: round(v - killed, 2) if v is not None else None for k, v in steps.items()}}
