"""Soak: the webhook receiver under a steady flood of signed events for minutes while a campaign
dispatches and receipts are ingested, then `campaign prepare`'s peak memory as files grow.

Every part is its own process on loopback: the receiver (`python -m pipeline.receipts.receiver`, whose
resident memory is sampled each second), the load generator (benchmarks/_load.py, `--rate` signed
WhatsApp status POSTs a second, paced), the WhatsApp sandbox (its status webhooks for the dispatched
messages go to the same receiver), the dispatcher (benchmarks/_dispatcher.py over a queued campaign at
`--dispatch-rate`) and the collector (ingesting closed spool files in a loop). The dispatcher and the
collector share one store, a SQLite file (WAL) in the temporary folder. Afterwards: `lost` counts POSTs
answered 200 that are missing from the spool or from the store (the load's receipts name no message of
the campaign, so they are kept apart in `unmatched_events`; the dispatched messages' receipts are counted
in `events`); `rss_start_mb` is the receiver's memory 10 s in, `rss_end_mb` at the end of the load.

Then `campaign prepare` (one subprocess at a time, peak RSS from wait4) over seeded audiences of
`--rows` rows (benchmarks/prepare.py's generator; the smaller files are the first rows of the largest).
Data lives in a temporary folder, deleted at the end.

    .venv/bin/python benchmarks/soak.py [--seconds 120] [--rate 3000] [--rows 1000000,5000000,10000000]
                                        [--dispatch-rate 200] [--batch-mb N] [--skip-prepare] [--skip-soak]
The last line printed is one JSON object; the exit code is 1 when a goal is missed (0 lost, receiver
RSS growth ≤ 10 %, prepare peak ≤ 1.5 GB), and `goals_met` says which.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing as mp
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _load  # noqa: E402
import _payloads  # noqa: E402
import httpx  # noqa: E402
import yaml  # noqa: E402
from prepare import make_corpus  # noqa: E402
from receiver import PATH, SECRET, spooled_ids  # noqa: E402

from benchmarks._dispatch_kit import ENV, TOKEN, queue_campaign, receiver_popen, stop_group  # noqa: E402
from pipeline import store  # noqa: E402
from pipeline.sandbox.process import sandbox_process  # noqa: E402
from pipeline.sandbox.whatsapp import SandboxConfig  # noqa: E402

# Bounds: the load's requests are built (about 1.1 KB each) before its clock starts.
MAX_SECONDS, MAX_RATE, MAX_EVENTS, MAX_ROWS = 3600, 20_000, 2_000_000, 20_000_000
RSS_START_AT_S = 10.0  # the receiver's memory after warming up is the baseline
RSS_GROWTH_GOAL, PREPARE_PEAK_GOAL_MB = 0.10, 1536
PREPARE_MAX_S = 1800.0  # per prepare run


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class RssSampler(threading.Thread):
    """(seconds since start, MB) of one process, once a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.pid, self.samples, self.stopped = pid, [], threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            mb = rss_mb(self.pid)
            if mb is not None:
                self.samples.append((time.monotonic() - self.started_at, mb))

    def at(self, seconds: float) -> float | None:
        return next((mb for t, mb in self.samples if t >= seconds), None)


BENCH_ID = re.compile(r"^wamid\.bench(\d+)\.")


def collector(database: str, spool_dir: str, stop: Any, results: Any, poll_s: float) -> None:
    """The receipts side, in its own process: ingests closed spool files into the store every `poll_s` until
    `stop`, once more after it, then reports which bench POSTs the store holds (counted or kept apart: they name
    no message of the campaign) and how many other receipts it counts (the dispatched messages')."""
    from pipeline.receipts.ingest import ingest_spool

    db = store.connect(database)
    cycles, slowest_s, added = 0, 0.0, 0
    try:
        while True:
            final = stop.wait(poll_s)
            started = time.perf_counter()
            result = ingest_spool(db, Path(spool_dir))
            added += result.events_added + result.unmatched
            slowest_s, cycles = max(slowest_s, time.perf_counter() - started), cycles + 1
            if final:
                break
        bench = {int(match.group(1)) for table in ("events", "unmatched_events")
                 for (pid,) in db.rows(f"SELECT provider_message_id FROM {table}"
                                       " WHERE provider_message_id LIKE 'wamid.bench%'")
                 if (match := BENCH_ID.match(pid))}
        other = db.scalar("SELECT count(*) FROM events WHERE provider_message_id NOT LIKE 'wamid.bench%'")
    finally:
        db.close()
    results.put({"bench_ids": sorted(bench), "other_events": other, "events_added": added,
                 "cycles": cycles, "slowest_s": round(slowest_s, 3)})


def collected_result(ingest: Any, results: Any, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = results.get(timeout=1.0)
        except queue.Empty:
            if not ingest.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the collector stopped without reporting") from None
            continue
        ingest.join(30)
        return found


def soak(seconds: float, rate: float, dispatch_rate: float, work: Path, poll_s: float) -> dict[str, Any]:
    spool, database = work / "spool", str(work / "campaigns.sqlite")
    os.environ.update(ENV)
    queue_campaign(database, int(dispatch_rate * seconds))
    with store.connect(database) as db:  # the stored spec is what the dispatcher reads
        spec = json.loads(db.scalar("SELECT spec_json FROM campaigns WHERE campaign_id = 'bench'"))
        spec["rate_limit"] = {**(spec.get("rate_limit") or {}), "max_per_second": dispatch_rate, "concurrency": 16}
        db.execute("UPDATE campaigns SET spec_json = :spec WHERE campaign_id = 'bench'", spec=json.dumps(spec))
    ctx = mp.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    with contextlib.ExitStack() as stack:
        log = stack.enter_context((work / "processes.log").open("wb"))
        dispatch_out = stack.enter_context((work / "dispatch.out").open("wb"))
        receiver_url, receiver = stack.enter_context(receiver_popen(spool, log=log, stop_timeout_s=30))
        sandbox_url = stack.enter_context(sandbox_process(SandboxConfig(
            access_token=TOKEN, app_secret=SECRET, webhook_url=receiver_url + PATH,
            throughput_per_s=max(1000.0, 2 * dispatch_rate))))
        ingest = ctx.Process(target=collector, args=(database, str(spool), stop, results, poll_s), daemon=True)
        ingest.start()
        stack.callback(lambda: ingest.is_alive() and (ingest.terminate(), ingest.join(10)))
        sampler = RssSampler(receiver.pid)
        dispatcher: list[subprocess.Popen[bytes]] = []

        def start() -> None:  # when the load's clock starts
            sampler.start()
            dispatcher.append(subprocess.Popen(
                [sys.executable, str(ROOT / "benchmarks" / "_dispatcher.py"), database, "bench",
                 "--provider-base-url", sandbox_url], stdout=dispatch_out, stderr=log,
                start_new_session=True))
            stack.callback(stop_group, dispatcher[0], 10)

        def progress(elapsed: float, answered: int) -> None:
            if elapsed >= 1 and int(elapsed) % 10 == 0 and int(elapsed) != getattr(progress, "last", -1):
                progress.last = int(elapsed)  # type: ignore[attr-defined]
                print(f"  {elapsed:5.0f} s  {answered:8d} answered ({answered / max(elapsed, 1e-9):6.0f}/s), "
                      f"receiver RSS {rss_mb(receiver.pid) or 0:.0f} MB", flush=True)

        print(f"building {int(rate * seconds)} signed requests; receiver pid {receiver.pid}", flush=True)
        load = _load.run_load(
            host="127.0.0.1", port=int(receiver_url.rsplit(":", 1)[1]), path=PATH, total=int(rate * seconds),
            build=functools.partial(_payloads.signed_receiver_request, SECRET), workers=2, connections_per_worker=32,
            duration_s=seconds, on_progress=progress, rate_per_s=rate, on_start=start)
        rss_end = rss_mb(receiver.pid)
        sampler.stopped.set()
        try:  # the campaign was sized to end with the load; give it a little longer, then stop it
            dispatcher[0].wait(max(30.0, seconds / 4))
        except subprocess.TimeoutExpired:
            print("dispatch did not finish in time: stopped", flush=True)
        stop_group(dispatcher[0], 10)
        drained = httpx.post(f"{sandbox_url}/_sandbox/drain", params={"timeout": 60}, timeout=90).json()
        stop_group(receiver, 30)  # closes its last spool file, so the collector's last pass sees everything
        stop.set()
        collected = collected_result(ingest, results, timeout_s=300)
    found, _lines, still_open = spooled_ids(spool)
    dispatched = json.loads(((work / "dispatch.out").read_text().strip().splitlines() or ["{}"])[-1])
    ok = {n for r in load for n in r.ok_ids}
    latencies = [ms for r in load for ms in r.latencies_ms]
    ingested = set(collected["bench_ids"])
    took = max(r.finished for r in load) - min(r.started for r in load)
    rss_start = sampler.at(RSS_START_AT_S)
    return {
        "lost": len(ok - (found & ingested)), "events": len(ok), "lost_spool": len(ok - found),
        "lost_ingest": len(ok - ingested), "non_200": len(latencies) - len(ok),
        "connection_errors": sum(r.errors for r in load), "seconds": round(took, 1), "rate": rate,
        "per_s": round(len(ok) / took, 1) if took > 0 else 0.0,
        "behind_ms": round(max(r.behind_ms for r in load), 1),
        "p50_ms": round(_load.percentile(latencies, 50), 2), "p99_ms": round(_load.percentile(latencies, 99), 2),
        "rss_start_mb": None if rss_start is None else round(rss_start, 1),
        "rss_end_mb": None if rss_end is None else round(rss_end, 1),
        "rss_max_mb": round(max((mb for _, mb in sampler.samples), default=0.0), 1),
        "rss_growth": None if not (rss_start and rss_end) else round(rss_end / rss_start - 1, 4),
        "spool_files_left_open": still_open,
        "dispatch_sent": dispatched.get("sent"), "dispatch_failed": dispatched.get("failed"),
        "dispatch_per_s": round(dispatched["sent"] / dispatched["seconds"], 1) if dispatched.get("seconds") else None,
        "dispatch_receipts": drained.get("webhooks_acknowledged"), "dispatch_receipts_drained": drained.get("drained"),
        "dispatch_receipts_lost": max(0, drained.get("webhooks_acknowledged", 0) - collected["other_events"]),
        "ingest_cycles": collected["cycles"], "ingest_slowest_s": collected["slowest_s"],
    }


def campaign_command() -> list[str]:
    script = Path(sys.executable).with_name("campaign")
    return [str(script)] if script.exists() else [sys.executable, "-c", "import sys; from pipeline.cli import main; "
                                                  "sys.exit(main())"]


def prepare_peak(spec: Path, out_dir: Path, log: Path, batch_mb: int | None) -> tuple[float, float, dict]:
    """(peak RSS in MB, seconds, its JSON line) of one `campaign prepare SPEC --json` in a subprocess."""
    started = time.monotonic()
    batch = ["--batch-mb", str(batch_mb)] if batch_mb else []  # else the command's own default
    with log.open("wb") as out:
        proc = subprocess.Popen([*campaign_command(), "prepare", str(spec), "--out", str(out_dir), "--json", *batch],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    try:
        while True:  # wait4: this child's own rusage, with a deadline
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - started > PREPARE_MAX_S:
                raise RuntimeError(f"campaign prepare did not finish within {PREPARE_MAX_S:g} s")
            time.sleep(0.1)
    finally:
        stop_group(proc, 10)
    lines = log.read_text(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        raise RuntimeError(f"campaign prepare exited with {proc.returncode}: {lines[-1] if lines else ''}")
    return usage.ru_maxrss / 1024, time.monotonic() - started, json.loads(lines[-1])


def prepare_peaks(sizes: list[int], seed: int, work: Path, batch_mb: int | None) -> dict[str, dict[str, float]]:
    corpus = work / f"audience-{max(sizes)}.csv"
    print(f"generating {max(sizes):,} rows (seed {seed})", flush=True)
    make_corpus(corpus, max(sizes), seed)
    spec = yaml.safe_load((ROOT / "campaigns" / "welcome.yaml").read_text())
    out: dict[str, dict[str, float]] = {}
    for rows in sorted(sizes):
        path = corpus if rows == max(sizes) else work / f"audience-{rows}.csv"
        if path != corpus:
            with corpus.open("rb") as src, path.open("wb") as dst:
                for _ in range(rows + 1):  # the header, then the first `rows` rows (no field spans lines)
                    dst.write(src.readline())
        spec_path = work / f"spec-{rows}.yaml"
        spec_path.write_text(yaml.safe_dump({**spec, "audience": str(path)}))
        peak, seconds, result = prepare_peak(spec_path, work / f"prepared-{rows}", work / f"prepare-{rows}.log",
                                             batch_mb)
        print(f"  prepare {rows:,} rows ({path.stat().st_size / 1e6:.0f} MB): peak {peak:.0f} MB, {seconds:.1f} s, "
              f"{result['accepted']:,} accepted", flush=True)
        out[str(rows)] = {"peak_rss_mb": round(peak), "seconds": round(seconds, 1)}
        shutil.rmtree(work / f"prepared-{rows}", ignore_errors=True)
        path.unlink()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--rate", type=float, default=3000.0, help="signed events (POSTs) a second")
    parser.add_argument("--dispatch-rate", type=float, default=200.0, help="messages a second the campaign sends")
    parser.add_argument("--rows", default="1000000,5000000,10000000", help="audience sizes for campaign prepare")
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--batch-mb", type=int, help="campaign prepare --batch-mb (default: the command's own)")
    parser.add_argument("--poll-s", type=float, default=2.0, help="the collector's pause between ingests")
    parser.add_argument("--skip-prepare", action="store_true")
    parser.add_argument("--skip-soak", action="store_true")
    args = parser.parse_args()
    sizes = [int(r) for r in args.rows.split(",") if r.strip()]
    if not 0 < args.seconds <= MAX_SECONDS or not 0 < args.rate <= MAX_RATE or args.rate * args.seconds > MAX_EVENTS:
        parser.error(f"--seconds ≤ {MAX_SECONDS}, --rate ≤ {MAX_RATE} and their product ≤ {MAX_EVENTS:,}")
    if not 0 < args.dispatch_rate <= 1000:
        parser.error("--dispatch-rate must be in (0, 1000], the WhatsApp sender's limit")
    if args.batch_mb is not None and not 0 < args.batch_mb <= 1024:
        parser.error("--batch-mb must be in 1..1024")
    if not sizes or any(not 0 < n <= MAX_ROWS for n in sizes):
        parser.error(f"--rows: comma-separated row counts, each in 1..{MAX_ROWS:,}")
    result: dict[str, Any] = {"name": "soak"}
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        if not args.skip_soak:
            result.update(soak(args.seconds, args.rate, args.dispatch_rate, Path(tmp), args.poll_s))
        if not args.skip_prepare:
            peaks = prepare_peaks(sizes, args.seed, Path(tmp), args.batch_mb)
            result["prepare_peak_rss_mb"] = {rows: p["peak_rss_mb"] for rows, p in peaks.items()}
            result["prepare_seconds"] = {rows: p["seconds"] for rows, p in peaks.items()}
    goals = {}
    if not args.skip_soak:
        goals["lost"] = result["lost"] == 0 and result["dispatch_receipts_lost"] == 0
        goals["rss_growth"] = result["rss_growth"] is not None and result["rss_growth"] <= RSS_GROWTH_GOAL
    if not args.skip_prepare:
        goals["prepare_peak"] = max(result["prepare_peak_rss_mb"].values()) <= PREPARE_PEAK_GOAL_MB
    result["goals_met"] = goals
    for goal, met in goals.items():
        if not met:
            print(f"goal missed: {goal}", flush=True)
    print(json.dumps(result), flush=True)
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
