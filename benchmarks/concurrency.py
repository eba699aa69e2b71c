"""Two campaigns at once on one store, beside the receipts ingest and a report: campaign A at 500 msg/s on
sender s1 and campaign B at 500 msg/s on sender s2, each dispatched by its own process, against one sandbox
(its own process, throughput limit high) whose webhooks reach the receiver (its own process) and its spool;
beside them an ingest loop (ingest_spool every second) and a report loop (campaign A's cost report every
~2 s), each its own process too. On SQLite (WAL, one writer at a time) and PostgreSQL, one after the other.
The report is `pipeline.costs.costing.cost_report(db, campaign_id)` once pipeline/costs takes a Store; until
then a stand-in that reads what a report reads (benchmarks/_concurrency_worker.py: STAND_IN_REPORT), and the
JSON line says which (`report_kind`).

Figures per backend: each campaign's achieved rate (goal: within ±2 % of its target) and its worst 1-s
window (goal: ≤ 1.05x the target; the method of benchmarks/rate.py), the report's p95 latency, lock errors
(every exception any of these processes met in a store call, "database is locked" included, and any of
them that died; goal 0) and duplicates (the sandbox's duplicate_callback_data; goal 0, and it accepted
exactly the campaigns' messages).

    .venv/bin/python benchmarks/concurrency.py [--seconds 30] [--rate 500] [--backend sqlite,postgresql]
        [--concurrency 25] [--ingest-every 1] [--report-every 2] [--keep DIR]

Each process's write transactions are timed (how long each waited to begin, how long it held the store) and
printed with its CPU time: on SQLite the wait is the wait for the one write lock. Each dispatcher also says how
long its workers waited for a claim and how long a request took: with --concurrency requests in flight per
sender a lane cannot send faster than concurrency / request time, whatever the store. --keep copies every
process's figures (send times, calls, errors, write times) and stderr to DIR/<backend>/.

The campaigns hold rate x seconds messages each. Everything runs on loopback, its data in a temporary
folder; every process it starts is stopped at the end, also on failure. One JSON line per backend, the
last line the last backend's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from benchmarks._dispatch_kit import (  # noqa: E402
    ENV,
    SECRET,
    TOKEN,
    backends_arg,
    emit,
    queue_campaign,
    receiver_process,
    stores,
)
from benchmarks.rate import max_window  # noqa: E402
from pipeline.sandbox.process import sandbox_process  # noqa: E402
from pipeline.sandbox.whatsapp import SandboxConfig  # noqa: E402

WORKER = Path(__file__).with_name("_concurrency_worker.py")
CAMPAIGNS = (("A", "s1"), ("B", "s2"))
LOCK_WORDS = ("database is locked", "StoreError", "Traceback")


class Processes:
    """The benchmark's own processes, each leading its own process group: stopped together at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[str]:
        log = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen([sys.executable, str(WORKER), *args], env={**os.environ, **ENV}, text=True,
                                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def wait_started(self, timeout_s: float = 60) -> None:
        """Each prints "started" once its imports are done and the store is open."""
        for name, proc in self.procs.items():
            assert proc.stdout is not None
            line = _readline(proc, timeout_s)
            if line.strip() != "started":
                raise RuntimeError(f"{name} did not start (exit {proc.poll()}): {self.tail(name)}")

    def tail(self, name: str, lines: int = 15) -> str:
        return "\n".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])

    def stop_all(self, timeout_s: float = 10) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def _readline(proc: subprocess.Popen[str], timeout_s: float) -> str:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return ""
    return proc.stdout.readline()


@contextlib.contextmanager
def processes(logs: Path) -> Iterator[Processes]:
    group = Processes(logs)
    try:
        yield group
    finally:
        group.stop_all()


def p95(values: list[float]) -> float | None:
    if not values:
        return None
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def measure(backend: str, url: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    n = int(args.rate * args.seconds)
    spool, logs, stop_file = work / "spool", work / "logs", work / "stop"
    spool.mkdir()
    logs.mkdir()
    for campaign_id, sender in CAMPAIGNS:
        queue_campaign(url, n, campaign_id=campaign_id, senders=[sender])
    print(f"{backend}: campaigns A and B queued, {n} messages each at {args.rate}/s", flush=True)
    with receiver_process(spool) as receiver_url:
        config = SandboxConfig(access_token=TOKEN, app_secret=SECRET, throughput_per_s=100_000,
                               webhook_url=f"{receiver_url}/webhooks/whatsapp", webhook_delay_s=(0.01, 0.1))
        with sandbox_process(config) as sandbox_url, processes(logs) as group:
            group.start("ingest", "ingest", url, str(work / "ingest.json"), str(spool), str(stop_file),
                        str(args.ingest_every))
            group.start("report", "report", url, str(work / "report.json"), "A", str(stop_file),
                        str(args.report_every))
            group.wait_started()
            dispatchers = {campaign_id: group.start(f"dispatch_{campaign_id}", "dispatch", url,
                                                    str(work / f"dispatch_{campaign_id}.json"), campaign_id, sender,
                                                    sandbox_url, str(spool), str(args.rate), str(args.concurrency))
                           for campaign_id, sender in CAMPAIGNS}
            deadline = time.monotonic() + args.seconds * 4 + 120
            for campaign_id, proc in dispatchers.items():
                try:
                    proc.wait(max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(f"{backend}: dispatcher {campaign_id} still running at the deadline: stopped", flush=True)
            stop_file.touch()  # the loops make one last call and write their figures
            for name in ("ingest", "report"):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    group.procs[name].wait(120)
            httpx.post(f"{sandbox_url}/_sandbox/drain", params={"timeout": 60}, timeout=70)
            stats = httpx.get(f"{sandbox_url}/_sandbox/stats", params={"messages": 0}, timeout=60).json()
            exits = {name: proc.poll() for name, proc in group.procs.items()}
    return summarise(backend, work, logs, args, n, stats, exits)


def summarise(backend: str, work: Path, logs: Path, args: argparse.Namespace, n: int, stats: dict[str, Any],
              exits: dict[str, int | None]) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    for name in exits:
        path = work / f"{name}.json"
        results[name] = json.loads(path.read_text()) if path.exists() else {}
    errors = [dict(e, process=name) for name, r in results.items() for e in r.get("errors", [])]
    died = [name for name, code in exits.items() if code != 0 or not results[name]]
    locked_lines = {name: sum(1 for line in (logs / f"{name}.log").read_text(errors="replace").splitlines()
                              if any(word in line for word in LOCK_WORDS)) for name in exits}
    achieved, windows, sent = [], [], []
    for campaign_id, _ in CAMPAIGNS:
        result = results[f"dispatch_{campaign_id}"]
        stamps = result.get("stamps", [])
        sent.append(len(stamps))
        if len(stamps) > 1:
            achieved.append(round((len(stamps) - 1) / (stamps[-1] - stamps[0]), 2))
            windows.append(round(max_window(stamps) / args.rate, 4))
        else:
            achieved.append(None)
            windows.append(None)
        print(f"{backend} campaign {campaign_id}: {len(stamps)} sends, achieved {achieved[-1]}/s, worst 1-s window "
              f"{windows[-1]}x target; runs {result.get('runs')}, final states {result.get('states')}; "
              f"wait for a claim {result.get('claim_wait')}, request {result.get('send')}", flush=True)
    reports = results["report"].get("calls", [])
    ingests = results["ingest"].get("calls", [])
    latencies = [c["ms"] for c in reports]
    print(f"{backend} report ({reports[0]['kind'] if reports else '?'}): {len(reports)} calls, "
          f"p50 {statistics.median(latencies) if latencies else None} ms, max {max(latencies, default=None)} ms; "
          f"ingest: {len(ingests)} calls, {sum(c['events'] for c in ingests)} events, "
          f"max {max((c['ms'] for c in ingests), default=None)} ms", flush=True)
    for name, result in results.items():
        w = result.get("writes") or {}
        if w.get("count"):
            print(f"{backend} {name}: {result.get('cpu_s')} s CPU in {result.get('wall_s')} s; write transactions: "
                  f"{w['count']}, waited to begin p50/p99/max {w['wait_p50_ms']}/{w['wait_p99_ms']}/{w['wait_max_ms']} "
                  f"ms, held p50/p99/max {w['hold_p50_ms']}/{w['hold_p99_ms']}/{w['hold_max_ms']} ms", flush=True)
    for error in errors[:20]:
        print(f"{backend} error in {error['process']} ({error['where']}): {error['type']}: {error['message']}",
              flush=True)
    for name in died:
        print(f"{backend} {name} died (exit {exits[name]}):\n{_tail(logs / f'{name}.log')}", flush=True)
    if any(locked_lines.values()):
        print(f"{backend} lines naming a lock or an error in the processes' stderr: {locked_lines}", flush=True)
    accepted = stats["accepted"]
    print(f"{backend} sandbox: accepted {accepted} of {2 * n}, duplicates {stats['duplicate_callback_data']}",
          flush=True)
    report_p95 = p95(latencies)
    return {
        "name": "concurrency", "backend": backend, "targets": [args.rate] * len(CAMPAIGNS), "achieved": achieved,
        "max_window": windows, "lock_errors": len(errors) + len(died), "duplicates": stats["duplicate_callback_data"],
        "report_p95_ms": round(report_p95, 1) if report_p95 is not None else None, "seconds": args.seconds,
        "messages": 2 * n, "accepted": accepted, "sent": sent, "report_calls": len(reports),
        "report_kind": reports[0]["kind"] if reports else None, "concurrency": args.concurrency,
        "ingest_every_s": args.ingest_every,
        "ingest_calls": len(ingests),
        "ingest_max_ms": max((c["ms"] for c in ingests), default=None),
        "dispatch_write_wait_p99_ms": [(results[f"dispatch_{c}"].get("writes") or {}).get("wait_p99_ms")
                                       for c, _ in CAMPAIGNS],
        "dispatch_write_wait_max_ms": [(results[f"dispatch_{c}"].get("writes") or {}).get("wait_max_ms")
                                       for c, _ in CAMPAIGNS],
    }


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=500, help="each campaign's target, messages/s")
    parser.add_argument("--backend", type=backends_arg, default=["sqlite", "postgresql"])
    parser.add_argument("--concurrency", type=int, default=25,
                        help="requests in flight per sender (benchmarks/rate.py's choice for 500/s)")
    parser.add_argument("--ingest-every", type=float, default=1.0, help="seconds between ingest_spool calls")
    parser.add_argument("--report-every", type=float, default=2.0, help="seconds between reports")
    parser.add_argument("--keep", type=Path, help="copy each backend's figures and logs (not the store) here")
    args = parser.parse_args()
    os.environ.update(ENV)
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-concurrency-") as tmp, stores(args.backend, Path(tmp)) as new_store:
        for backend in args.backend:
            work = Path(tmp) / backend
            work.mkdir()
            try:
                figures = measure(backend, new_store(backend, "concurrency"), work, args)
            finally:
                if args.keep:
                    shutil.copytree(work, args.keep / backend, ignore=shutil.ignore_patterns("spool", "*.sqlite*"),
                                    dirs_exist_ok=True)
            emit(figures)
            ok &= (all(a is not None and abs(a / args.rate - 1) <= 0.02 for a in figures["achieved"])
                   and all(w is not None and w <= 1.05 for w in figures["max_window"])
                   and figures["lock_errors"] == 0 and figures["duplicates"] == 0
                   and figures["accepted"] == figures["messages"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
