"""Dispatch across processes: two processes with two senders against one process with the same two
senders (two lanes), unthrottled, against the sandbox (its own process) on loopback, ledger on.

Also reported, because the sandbox shares the machine's cores with the dispatchers (a real provider
runs on its own machines): the CPU each message cost the dispatchers and the sandbox, and from them
`bound_ratio`, the most two processes could reach over one on this many cores (cores / (the
cores one process and its sandbox already use)).

    .venv/bin/python benchmarks/scale.py [--messages 20000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._dispatch_kit import ENV, SECRET, TOKEN, emit, queue_campaign  # noqa: E402
from pipeline import store
from pipeline.dispatch import shards  # noqa: E402
from pipeline.sandbox.process import sandbox_process, started_pids  # noqa: E402
from pipeline.sandbox.whatsapp import SandboxConfig  # noqa: E402

SENDERS = ["1065", "2077"]


def unthrottled(db: Path) -> None:
    # The spec caps a WhatsApp number at 1,000/s; this measures the engine, so lift the cap in the
    # stored spec the shard workers read.
    with store.connect(db) as con:
        con.execute("""UPDATE campaigns SET spec_json = json_merge_patch(spec_json,
                       '{"rate_limit": {"max_per_second": 1000, "concurrency": 32}}')""")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def timed(db: Path, processes: int, base_url: str, work: Path, sandbox_pid: int) -> tuple[float, dict[str, float]]:
    with store.connect(db) as con:
        paths = shards.split(con, "bench", work / f"shards{processes}", shards.plan_shards(SENDERS, processes))
    sandbox_cpu = cpu_seconds(sandbox_pid)
    results = shards.run_shards(paths, "bench", spool_dir=None, base_url=base_url)
    sandbox_cpu = cpu_seconds(sandbox_pid) - sandbox_cpu
    assert all(r["exit_code"] == 0 for r in results), results
    # From the shards' own dispatch clocks (they run at the same time): process start-up and
    # imports are the same in both set-ups and are not dispatch.
    seconds = max(r["seconds"] for r in results)
    with store.connect(db) as con:
        shards.merge(con, "bench", paths)
        sent = con.execute("SELECT count(*) FROM outbox WHERE state = 'sent'").fetchall()[0][0]
    cpu = {"client_us": 1e6 * sum(r["cpu_seconds"] for r in results) / sent, "sandbox_us": 1e6 * sandbox_cpu / sent}
    return sent / seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    os.environ.update(ENV)
    config = SandboxConfig(access_token=TOKEN, app_secret=SECRET, throughput_per_s=1_000_000)
    with tempfile.TemporaryDirectory() as tmp, sandbox_process(config) as base_url:
        work = Path(tmp)
        sandbox_pid = started_pids()[-1]
        rates, cpu = {}, {}
        for processes in (1, 2):
            db = work / f"scale{processes}.duckdb"
            queue_campaign(db, args.messages, senders=SENDERS)
            unthrottled(db)
            rates[processes], cpu[processes] = timed(db, processes, base_url, work, sandbox_pid)
            used = cpu[processes]
            print(f"{processes} process(es), {len(SENDERS)} senders: {rates[processes]:,.0f} messages/s; CPU per "
                  f"message: dispatch {used['client_us']:.0f} us, sandbox {used['sandbox_us']:.0f} us", flush=True)
    cores = os.cpu_count() or 1
    # One process and its share of the sandbox keep this many cores busy; two can at most fill them all.
    single_cores = rates[1] * (cpu[1]["client_us"] + cpu[1]["sandbox_us"]) / 1e6
    emit({"name": "scale", "processes": 2, "senders": len(SENDERS), "messages": args.messages,
          "per_s": round(rates[2], 1), "single_per_s": round(rates[1], 1), "ratio": round(rates[2] / rates[1], 3),
          "cores": cores, "single_cores_busy": round(single_cores, 2), "bound_ratio": round(cores / single_cores, 3),
          "dispatch_cpu_us": [round(cpu[p]["client_us"]) for p in (1, 2)],
          "sandbox_cpu_us": [round(cpu[p]["sandbox_us"]) for p in (1, 2)]})


if __name__ == "__main__":
    main()
