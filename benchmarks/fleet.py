"""The fleet: a campaign of --senders numbers (default 8) at --rate msg/s each (default 80) dispatched by the campaign
flow in 2 groups over 2 Prefect process workers from one PostgreSQL store, against the WhatsApp sandbox answering
after a provider's latency (100 ms + up to 100 ms of jitter: a 150 ms median). Then --takeovers rounds (default 5)
on 3 process workers (benchmarks/_fleet_takeover.py): a campaign of 2 senders in 2 groups, the process of group 0's
flow run SIGKILLed mid-send; the seconds from the kill until a replacement run of the group (started by the
campaign flow once the worker reported the run Crashed) has taken the sender's lease and sends again.

Everything is counted by the sandbox: the aggregate rate (the senders' rates added up), the worst 1-s window of any
sender against its rate, duplicates and lost messages (after the operator's resend-unknown for what a kill left
unknown). The worst 1-s window is also counted where the sends leave (each dispatcher's own count, in the campaign's
result): the sandbox stamps a request when its event loop gets to it, late on a loaded machine, and the two figures
tell the dispatcher's bursts from the sandbox's. CPU per message of the dispatchers (the workers' flow-run
processes, sampled from /proc) and of the sandbox is printed for the README's per-core arithmetic. Bounded: every
wait has a deadline, and the whole run --budget-s.

    .venv/bin/python benchmarks/fleet.py [--senders 8] [--rate 80] [--seconds 20] [--takeovers 5]

The last line is one JSON object (with the load average over the run: the figures depend on what else runs).
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import yaml  # noqa: E402

from benchmarks._dispatch_kit import (  # noqa: E402
    ENV,
    SECRET,
    TOKEN,
    emit,
    free_port,
    receiver_process,
    stores,
)
from benchmarks._fleet_takeover import takeover_round  # noqa: E402
from pipeline import store  # noqa: E402
from pipeline.sandbox.process import sandbox_process, started_pids  # noqa: E402
from pipeline.sandbox.whatsapp import SandboxConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LEASE_TTL_S, LEASE_RENEW_S = 3.0, 0.5  # the takeover rounds' workers' lease settings (CAMPAIGN_LEASE_*)
TICK = os.sysconf("SC_CLK_TCK")


def max_window(stamps: list[float], width: float = 1.0) -> int:
    best = 0
    for i, start in enumerate(stamps):
        best = max(best, bisect.bisect_left(stamps, start + width, lo=i) - i)
    return best


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def descendants(pid: int) -> list[int]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                tree.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Procs:
    """Processes of the benchmark, each in its own session with a log file; all stopped on exit."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.started = logs, []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        family = [proc.pid, *descendants(proc.pid)]
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)


def wait_until(check: Any, timeout_s: float, what: str, every_s: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"fleet benchmark: gave up after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


@contextlib.contextmanager
def prefect_fleet(work: Path, procs: Procs) -> Iterator[dict[str, str]]:
    """`prefect server start` (API only) and the work pool with the dispatch-senders deployment; yields the
    environment that points at it (workers: start_workers)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(ENV, PREFECT_HOME=str(work / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_API_URL=f"http://127.0.0.1:{port}/api", PREFECT_WORKER_QUERY_SECONDS="1",
               PREFECT_RUNNER_POLL_FREQUENCY="1", PYTHONUNBUFFERED="1", PREFECT_LOGGING_LEVEL="WARNING")
    procs.start("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                                   str(port), "--no-ui", "--no-scheduler", "--no-late-runs"], env)

    def healthy() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200
        return False

    wait_until(healthy, 180, "the Prefect server")
    subprocess.run([sys.executable, "-m", "flows.serve", "--setup", "--deploy", "dispatch-senders"], env=env, cwd=ROOT,
                   check=True, timeout=180, stdout=subprocess.DEVNULL)
    yield env


def start_workers(procs: Procs, env: dict[str, str], names: list[str]) -> dict[str, subprocess.Popen[bytes]]:
    """Process workers on the pool, taking one flow run each."""
    return {name: procs.start(name, [str(BIN / "prefect"), "worker", "start", "--pool", "local-process", "--name",
                                     name, "--limit", "1"], env) for name in names}


def fleet_spec(work: Path, senders: list[str], rate: float, per_sender: int, *, first: int = 0) -> Path:
    n = per_sender * len(senders)
    audience = work / "audience.csv"
    audience.write_text("phone,country,first_name,city,coupon,opt_in\n" + "".join(
        f"+44740{i:07d},GB,Ann{i},Leeds,W-{i},yes\n" for i in range(first, first + n)))  # UK mobiles
    data = yaml.safe_load((ROOT / "campaigns/welcome.yaml").read_text())
    data.update(name="fleet", audience=str(audience), sender=senders[0], senders=senders, receipts_wait_s=5,
                rate_limit={"max_per_second": rate, "concurrency": 24}, retry={"reconcile_grace_s": 5})
    path = work / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sandbox_times(url: str) -> dict[str, list[float]]:
    return httpx.get(f"{url}/_sandbox/stats", params={"messages": 0, "times": 1}, timeout=60).json()["accepted_at"]


def sandbox_stats(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/_sandbox/stats", params={"messages": 1}, timeout=60).json()


def rate_round(args: argparse.Namespace, work: Path, db_url: str, sandbox_url: str, spool: Path,
               workers: list[subprocess.Popen[bytes]]) -> dict[str, Any]:
    senders = [f"10650000{i:02d}" for i in range(args.senders)]
    per_sender = int(args.rate * args.seconds)
    spec = fleet_spec(work, senders, args.rate, per_sender)
    from flows.campaign import campaign_flow

    samples: list[tuple[float, float, int]] = []  # (time, dispatcher CPU s, accepted)
    cpu_seen: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            for w in workers:
                for pid in descendants(w.pid):
                    cpu_seen[pid] = max(cpu_seen.get(pid, 0.0), cpu_s(pid))
            accepted = httpx.get(f"{sandbox_url}/_sandbox/stats", params={"messages": 0}, timeout=30).json()
            samples.append((time.monotonic(), sum(cpu_seen.values()), accepted["accepted"]))

    sampler = threading.Thread(target=sample, daemon=True)
    sandbox_pid = started_pids()[-1]
    sandbox_cpu0 = cpu_s(sandbox_pid)
    sampler.start()
    try:
        summary = campaign_flow(str(spec), database=db_url, spool_dir=str(spool), reports_dir=str(work / "reports"),
                                provider_base_url=sandbox_url, dispatch_groups=2)
    finally:
        done.set()
        sampler.join(timeout=30)
    sandbox_cpu = cpu_s(sandbox_pid) - sandbox_cpu0
    times = sandbox_times(sandbox_url)
    if args.stamps:  # each sender's acceptance times, for looking at where a window fills
        args.stamps.write_text(json.dumps(times))
    total = per_sender * len(senders)
    if summary["dispatch"]["sent"] != total or set(times) != set(senders):
        raise SystemExit(f"fleet benchmark: the campaign sent {summary['dispatch']} of {total}")
    rates, windows = [], []
    for sender in senders:
        stamps = sorted(times.get(sender, []))
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        windows.append(max_window(stamps) / args.rate)
    # CPU per message while sending (from 10 % to 90 % of the messages: no process start-up in it).
    lo = next(s for s in samples if s[2] >= total * 0.1)
    hi = next((s for s in samples if s[2] >= total * 0.9), samples[-1])
    per_msg_us = (hi[1] - lo[1]) / max(1, hi[2] - lo[2]) * 1e6
    flat = sorted(t for sender in senders for t in times.get(sender, []))
    return {"senders": len(senders), "target_per_s": args.rate * len(senders),
            "achieved_per_s": round(sum(rates), 2), "wall_per_s": round((len(flat) - 1) / (flat[-1] - flat[0]), 2),
            "max_window": round(max(windows), 4),
            # The same, counted by the dispatchers as their requests left (flows/fleet.py: each group's busiest second).
            "max_window_dispatch": round(max(summary["dispatch"]["busiest_second"].values()) / args.rate, 4),
            "dispatch_cpu_us_per_msg": round(per_msg_us),
            "sandbox_cpu_us_per_msg": round(sandbox_cpu / total * 1e6), "messages": total,
            "dispatch_states": summary["dispatch"]["states"], "campaign_id": "fleet"}


def over_budget(*_: Any) -> None:
    raise SystemExit("fleet benchmark: over its budget (--budget-s)")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--rate", type=float, default=80.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--takeovers", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=1500.0, help="the whole benchmark, at most")
    parser.add_argument("--stamps", type=Path, help="write the sandbox's acceptance times per sender (JSON) here")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this folder (default: removed)")
    args = parser.parse_args()
    os.environ.update(ENV)
    signal.signal(signal.SIGALRM, over_budget)
    signal.alarm(int(args.budget_s))
    loads = [load_average()]
    with tempfile.TemporaryDirectory() as tmp, stores(["postgresql"], Path(tmp)) as new_store:
        work, spool = Path(tmp), Path(tmp) / "spool"
        spool.mkdir()
        db_url = new_store("postgresql", "fleet")
        store.connect(db_url).close()
        procs = Procs(args.logs or work / "logs")
        try:
            with receiver_process(spool) as receiver_url:
                config = SandboxConfig(access_token=TOKEN, app_secret=SECRET, throughput_per_s=5000,
                                       webhook_url=f"{receiver_url}/webhooks/whatsapp", webhook_delay_s=(0.01, 0.1),
                                       latency_s=0.1, latency_jitter_s=0.1)
                with sandbox_process(config) as sandbox_url, prefect_fleet(work, procs) as env:
                    os.environ.update({k: v for k, v in env.items() if k.startswith("PREFECT_")})
                    workers = start_workers(procs, env, ["worker-0", "worker-1"])
                    figures = rate_round(args, work, db_url, sandbox_url, spool, list(workers.values()))
                    loads.append(load_average())
                    print(f"rate: {figures}; load average {loads[-1]}", flush=True)
                    for proc in workers.values():
                        procs.stop(proc)
                    # Three workers with short leases: two run the groups, and a replacement run finds one free.
                    short = {**env, "CAMPAIGN_LEASE_TTL_S": str(LEASE_TTL_S),
                             "CAMPAIGN_LEASE_RENEW_S": str(LEASE_RENEW_S)}
                    workers = start_workers(procs, short, ["takeover-a", "takeover-b", "takeover-c"])
                    tools = sys.modules[__name__]

                    rounds = []
                    for i in range(args.takeovers):
                        rounds.append(takeover_round(i, db_url=db_url, sandbox_url=sandbox_url, spool=spool,
                                                     work=work, workers=workers, tools=tools))
                        print(f"takeover {i}: {rounds[-1]}; load average {load_average()}", flush=True)
                    loads.append(load_average())
                    httpx.post(f"{sandbox_url}/_sandbox/drain", params={"timeout": 60}, timeout=70)
                    stats = sandbox_stats(sandbox_url)
        finally:
            procs.stop_all()
            signal.alarm(0)
        with store.connect(db_url) as db:
            ours = {r[0] for r in db.rows("SELECT message_id FROM outbox")}
            states = dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY 1"))
    accepted = {m["biz_opaque_callback_data"] for m in stats["messages"]}
    print(f"ledger: {states}; sandbox accepted {stats['accepted']} requests, {len(accepted)} distinct", flush=True)
    takeovers = [r["takeover_s"] for r in rounds]
    emit({"name": "fleet", "workers": 2, "senders": figures["senders"], "target_per_s": figures["target_per_s"],
          "achieved_per_s": figures["achieved_per_s"], "wall_per_s": figures["wall_per_s"],
          "max_window": figures["max_window"], "max_window_dispatch": figures["max_window_dispatch"],
          "takeover_s": round(statistics.median(takeovers), 2) if takeovers else None,
          "takeovers": [round(t, 2) for t in takeovers],
          "takeover_steps_s": [r["steps_s"] for r in rounds],
          "takeover_workers": [f"{r['worker']}->{r['new_worker']}" for r in rounds],
          "takeover_workers_total": 3, "lease_ttl_s": LEASE_TTL_S, "lease_renew_s": LEASE_RENEW_S,
          "duplicates": stats["duplicate_callback_data"], "lost": len(ours - accepted),
          "dispatch_cpu_us_per_msg": figures["dispatch_cpu_us_per_msg"],
          "sandbox_cpu_us_per_msg": figures["sandbox_cpu_us_per_msg"], "latency_ms": "100 + 0..100 (median 150)",
          "load_average": loads})


if __name__ == "__main__":
    main()
