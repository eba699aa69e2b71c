"""Crash safety: a --messages campaign (default 20,000) SIGKILLed at --kills random moments (default
20) and re-run each time until done; duplicates and losses are counted by the sandbox, not by us.

Each run is a separate process (benchmarks/_crash_worker.py) sending to the sandbox (its own
process) whose signed receipts reach the webhook receiver (its own process) and its spool. After
the last kill the campaign runs to the end; what no receipt could reconcile ends `unknown` and is
re-sent on the operator's word (`campaign resend-unknown`), as the issue asks.

    .venv/bin/python benchmarks/crash.py [--messages 20000] [--kills 20] [--seed 7]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from benchmarks._dispatch_kit import ENV, SECRET, TOKEN, emit, queue_campaign, receiver_process  # noqa: E402
from pipeline import store  # noqa: E402
from pipeline.receipts.ingest import ingest_spool  # noqa: E402
from pipeline.sandbox.process import sandbox_process  # noqa: E402
from pipeline.sandbox.whatsapp import SandboxConfig  # noqa: E402

WORKER = Path(__file__).with_name("_crash_worker.py")


def run_worker(db: Path, spool: Path, url: str, *, kill_after_s: float | None = None, resend: bool = False) -> bool:
    """Runs one dispatch; SIGKILLs it `kill_after_s` after it started dispatching. True if killed."""
    command = [sys.executable, str(WORKER), str(db), str(spool), url] + (["--resend-unknown"] if resend else [])
    proc = subprocess.Popen(command, env={**os.environ, **ENV}, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    killed = False
    try:
        first = proc.stdout.readline()  # "started": imports done, ledger open
        if kill_after_s is not None and first.strip() == "started":
            try:
                proc.wait(timeout=kill_after_s)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                killed = True
        proc.wait(timeout=600)
    finally:
        out = proc.stdout.read()
        if out.strip():
            print("  " + out.strip(), flush=True)
    return killed


def open_states(db: Path) -> dict[str, int]:
    with store.connect(db) as con:
        return dict(con.execute("SELECT state, count(*) FROM outbox GROUP BY 1").fetchall())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    os.environ.update(ENV)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db, spool = work / "crash.duckdb", work / "spool"
        spool.mkdir()
        queue_campaign(db, args.messages)
        with receiver_process(spool) as receiver_url:
            config = SandboxConfig(access_token=TOKEN, app_secret=SECRET, throughput_per_s=5000,
                                   webhook_url=f"{receiver_url}/webhooks/whatsapp", webhook_delay_s=(0.01, 0.1))
            with sandbox_process(config) as sandbox_url:
                kills = 0
                for _ in range(args.kills):
                    # Random moments: early in start-up, mid-send, during reconciliation. Within the
                    # run's first second: at ~2,000 messages/s a later moment would often come after
                    # the campaign had finished, and that kill would not land.
                    kills += run_worker(db, spool, sandbox_url, kill_after_s=rng.uniform(0.0, 1.0))
                    print(f"kill {kills}: {open_states(db)}", flush=True)
                # Then run until nothing is queued or in flight.
                for _ in range(10):
                    states = open_states(db)
                    if not states.get("queued") and not states.get("sending"):
                        break
                    run_worker(db, spool, sandbox_url)
                if open_states(db).get("unknown"):
                    run_worker(db, spool, sandbox_url, resend=True)
                httpx.post(f"{sandbox_url}/_sandbox/drain", params={"timeout": 60}, timeout=70)
                stats = httpx.get(f"{sandbox_url}/_sandbox/stats", params={"messages": 1}, timeout=60).json()
        time.sleep(0.1)
        with store.connect(db) as con:
            ingest_spool(con, spool)
            ours = {r[0] for r in con.execute("SELECT message_id FROM outbox").fetchall()}
            final = dict(con.execute("SELECT state, count(*) FROM outbox GROUP BY 1").fetchall())
    accepted = {m["biz_opaque_callback_data"] for m in stats["messages"]}
    lost = len(ours - accepted)
    print(f"final ledger: {final}; sandbox accepted {stats['accepted']} requests, {len(accepted)} distinct", flush=True)
    emit({"name": "crash", "kills": kills, "messages": args.messages, "duplicates": stats["duplicate_callback_data"],
          "lost": lost, "sandbox_accepted": stats["accepted"]})


if __name__ == "__main__":
    main()
