"""Benchmark: signed WhatsApp status webhooks POSTed to the real receiver on loopback.

The receiver runs as its own process (`python -m pipeline.receipts.receiver`, uvicorn + httptools) with a
temporary spool directory; load comes from separate processes (benchmarks/_load.py), so client
and server never share a GIL. Bounded: at most --requests POSTs or --seconds of load.

Reports requests/s answered 200 (each one fsynced before its answer), p50/p99 latency, and
`lost`: POSTs acknowledged with 200 whose body is not in the spool once the receiver has shut
down (every acknowledged body is looked up by its unique wamid).

    .venv/bin/python benchmarks/receiver.py [--requests 50000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _load
import _payloads

ROOT = Path(__file__).resolve().parent.parent
PATH = "/webhooks/whatsapp"
SECRET = "bench-app-secret"
_BENCH_ID = re.compile(rb"wamid\.bench(\d+)\.0\.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def start_receiver(spool_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "WHATSAPP_APP_SECRET": SECRET, "WHATSAPP_VERIFY_TOKEN": "bench-verify"}
    cmd = [sys.executable, "-m", "pipeline.receipts.receiver", "--port", str(port), "--spool-dir", str(spool_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}")
        try:
            get_json(port, "/healthz")
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("receiver did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) from /proc; 0.0 where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spooled_ids(spool_dir: Path) -> tuple[set[int], int, int]:
    """Bench ids found in closed spool files, spool lines, and files still open."""
    found: set[int] = set()
    lines = 0
    for path in spool_dir.rglob("spool-*.jsonl"):
        data = path.read_bytes()
        lines += data.count(b"\n")
        found.update(int(m) for m in _BENCH_ID.findall(data))
    return found, lines, len(list(spool_dir.rglob("*.open")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=20.0, help="stop sending after this long")
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections per client")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-receiver-") as tmp:
        spool_dir = Path(tmp) / "spool"
        port = free_port()
        server = start_receiver(spool_dir, port)
        print(f"receiver pid {server.pid} on 127.0.0.1:{port}, spool {spool_dir}", flush=True)
        try:
            last = [0.0]

            def progress(elapsed: float, answered: int) -> None:
                if elapsed - last[0] < 1.0:
                    return
                last[0] = elapsed
                print(f"  {elapsed:5.1f} s  {answered:7d} answered  {answered / max(elapsed, 1e-9):8.0f}/s",
                      flush=True)

            cpu_before = cpu_seconds(server.pid)
            print(f"building {args.requests} signed requests in {args.clients} client processes", flush=True)
            results = _load.run_load(
                host="127.0.0.1", port=port, path=PATH, total=args.requests,
                build=functools.partial(_payloads.signed_receiver_request, SECRET),
                workers=args.clients, connections_per_worker=args.connections,
                duration_s=args.seconds, on_progress=progress,
            )
            server_cpu = cpu_seconds(server.pid) - cpu_before
            stats = get_json(port, "/healthz").get("spool", {})
        finally:
            server.send_signal(signal.SIGTERM)  # graceful: lifespan closes the open spool file
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                raise
        found, lines, still_open = spooled_ids(spool_dir)

    ok = [n for r in results for n in r.ok_ids]
    latencies = [ms for r in results for ms in r.latencies_ms]
    statuses: dict[int, int] = {}
    for r in results:
        for code, count in r.statuses.items():
            statuses[code] = statuses.get(code, 0) + count
    seconds = max(r.finished for r in results) - min(r.started for r in results)
    lost = len(set(ok) - found)
    batch = stats.get("appends", 0) / max(stats.get("writes", 0), 1)
    print(f"answered {len(latencies)} ({statuses}), connection errors {sum(r.errors for r in results)}, "
          f"spool: {lines} lines, {still_open} file(s) left open, stats {stats}, "
          f"mean fsync batch {batch:.1f}, server CPU {server_cpu:.2f} s "
          f"({server_cpu / max(len(latencies), 1) * 1e6:.0f} µs per request)", flush=True)
    print(json.dumps({
        "name": "receiver_whatsapp_status_posts",
        "requests": len(ok),
        "seconds": round(seconds, 3),
        "per_s": round(len(ok) / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(_load.percentile(latencies, 50), 2),
        "p99_ms": round(_load.percentile(latencies, 99), 2),
        "lost": lost,
        "non_200": len(latencies) - len(ok),
        "spool_lines": lines,
        "mean_fsync_batch": round(batch, 1),
        "server_cpu_us_per_request": round(server_cpu / max(len(latencies), 1) * 1e6, 1),
        "clients": args.clients,
        "connections": args.clients * args.connections,
    }))
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
