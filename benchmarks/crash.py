"""Crash safety: a --messages campaign (default 20,000) SIGKILLed at --kills random moments (default
20) and re-run each time until done; duplicates and losses are counted by the sandbox, not by us.

Each run is a separate process (benchmarks/_crash_worker.py) sending to the sandbox (its own
process) whose signed receipts reach the webhook receiver (its own process) and its spool. After
the last kill the campaign runs to the end; what no receipt could reconcile ends `unknown` and is
re-sent on the operator's word (`campaign resend-unknown`), as the issue asks.

The workers share one store, named by its URL: a SQLite file, or a database on a local PostgreSQL
started for the benchmark. A message in flight at a kill gets the full reconcile grace (3 s here) from
the next run's start to be matched by a receipt; the kills come faster than that, so leftovers pile up
until the last runs settle them (`sent` by a receipt, else `unknown` and re-sent by the operator).

    .venv/bin/python benchmarks/crash.py [--messages 20000] [--kills 20] [--seed 7] [--backend sqlite,postgresql]

One JSON line per backend, the last line the last backend's.
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
from pipeline import store  # noqa: E402
from pipeline.receipts.ingest import ingest_spool  # noqa: E402
from pipeline.sandbox.process import sandbox_process  # noqa: E402
from pipeline.sandbox.whatsapp import SandboxConfig  # noqa: E402

WORKER = Path(__file__).with_name("_crash_worker.py")


def run_worker(url: str, spool: Path, sandbox_url: str, *, kill_after_s: float | None = None,
               resend: bool = False) -> bool:
    """Runs one dispatch; SIGKILLs it `kill_after_s` after it started dispatching. True if killed."""
    command = [sys.executable, str(WORKER), url, str(spool), sandbox_url] + (["--resend-unknown"] if resend else [])
    proc = subprocess.Popen(command, env={**os.environ, **ENV}, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    killed = False
    try:
        first = proc.stdout.readline()  # "started": imports done, store open
        if kill_after_s is not None and first.strip() == "started":
            try:
                proc.wait(timeout=kill_after_s)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                killed = True
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:  # the harness itself failed or was interrupted: never leave a dispatcher behind
            proc.kill()
            proc.wait()
        out = proc.stdout.read()
        if out.strip():
            print("  " + out.strip(), flush=True)
    return killed


def open_states(url: str) -> dict[str, int]:
    with store.connect(url) as db:
        return dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY 1"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--backend", type=backends_arg, default=["sqlite", "postgresql"])
    args = parser.parse_args()
    os.environ.update(ENV)
    with tempfile.TemporaryDirectory() as tmp, stores(args.backend, Path(tmp)) as new_store:
        for backend in args.backend:
            measure(backend, new_store(backend, "crash"), Path(tmp) / f"spool-{backend}", args)


def measure(backend: str, url: str, spool: Path, args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    spool.mkdir()
    queue_campaign(url, args.messages)
    print(f"{backend}: {args.messages} messages queued, {args.kills} kills", flush=True)
    # A sandbox and a receiver per backend: the sandbox's counts are this backend's alone.
    with receiver_process(spool) as receiver_url:
        config = SandboxConfig(access_token=TOKEN, app_secret=SECRET, throughput_per_s=5000,
                               webhook_url=f"{receiver_url}/webhooks/whatsapp", webhook_delay_s=(0.01, 0.1))
        with sandbox_process(config) as sandbox_url:
            kills = 0
            for _ in range(args.kills):
                # Random moments: early in start-up, mid-send, during reconciliation. Within the
                # run's first second: at ~1,000 messages/s a later moment would often come after
                # the campaign had finished, and that kill would not land.
                kills += run_worker(url, spool, sandbox_url, kill_after_s=rng.uniform(0.0, 1.0))
                print(f"{backend} kill {kills}: {open_states(url)}", flush=True)
            # Then run until nothing is queued or in flight.
            for _ in range(10):
                states = open_states(url)
                if not states.get("queued") and not states.get("sending"):
                    break
                run_worker(url, spool, sandbox_url)
            if open_states(url).get("unknown"):
                run_worker(url, spool, sandbox_url, resend=True)
            httpx.post(f"{sandbox_url}/_sandbox/drain", params={"timeout": 60}, timeout=70)
            stats = httpx.get(f"{sandbox_url}/_sandbox/stats", params={"messages": 1}, timeout=60).json()
    time.sleep(0.1)
    with store.connect(url) as db:
        ingest_spool(db, spool)
        ours = {r[0] for r in db.rows("SELECT message_id FROM outbox")}
        final = dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY 1"))
    accepted = {m["biz_opaque_callback_data"] for m in stats["messages"]}
    lost = len(ours - accepted)
    print(f"{backend} final ledger: {final}; sandbox accepted {stats['accepted']} requests, {len(accepted)} distinct",
          flush=True)
    emit({"name": "crash", "backend": backend, "kills": kills, "messages": args.messages,
          "duplicates": stats["duplicate_callback_data"], "lost": lost, "sandbox_accepted": stats["accepted"]})


if __name__ == "__main__":
    main()
