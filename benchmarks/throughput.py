"""Unthrottled dispatch, end to end with the ledger on, against the sandbox (its own process) on
loopback — compared in the same run with (a) the bare ceiling: one httpx.AsyncClient (a
one-connection pool) per worker posting the same requests at the same concurrency with no ledger,
limiter or retries, and (b) the straightforward way: one POST awaited after another with a store
insert (its own transaction) per message. Also reported: the same bare loop through our own session (httpx's transport
driven directly, as the dispatcher sends), which shows what the ledger and bookkeeping cost.

    .venv/bin/python benchmarks/throughput.py [--messages 20000] [--concurrency 32] [--rounds 3]
        [--backend sqlite,postgresql]

One JSON line per backend; the last line is the last backend's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
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
    stores,
    whatsapp,
)
from pipeline import store  # noqa: E402
from pipeline.channels.base import http_session  # noqa: E402
from pipeline.dispatch.engine import dispatch_campaign  # noqa: E402
from pipeline.sandbox.process import sandbox_process  # noqa: E402
from pipeline.sandbox.whatsapp import SandboxConfig  # noqa: E402
from pipeline.spec import RateSpec, RetrySpec  # noqa: E402


def payloads(url: str, n: int) -> list[bytes]:
    with store.connect(url) as db:
        rows = db.rows("SELECT payload_json FROM outbox ORDER BY seq LIMIT :n", n=n)
    return [r[0].encode() for r in rows]


async def ceiling(base_url: str, bodies: list[bytes], concurrency: int) -> float:
    channel = whatsapp(base_url)
    request = channel.request_for("{}")
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def worker() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            while not queue.empty():
                body = queue.get_nowait()
                response = await client.post(request.url, content=body, headers=request.headers)
                assert response.status_code == 200, response.text

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(bodies) / (time.perf_counter() - started)


async def transport_ceiling(base_url: str, bodies: list[bytes], concurrency: int) -> float:
    """The same bare loop through the session our dispatcher uses (httpx's transport driven directly):
    what is left between this and ours is the ledger, the limiter and the bookkeeping."""
    channel = whatsapp(base_url)
    request = channel.request_for("{}")
    queue = list(reversed(bodies))

    async def worker() -> None:
        async with http_session(30) as session:
            while queue:
                response = await session.post(request.url, content=queue.pop(), headers=request.headers)
                assert response.status_code == 200, response.text

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(bodies) / (time.perf_counter() - started)


async def straightforward(base_url: str, bodies: list[bytes], url: str) -> float:
    channel = whatsapp(base_url)
    request = channel.request_for("{}")
    db = store.connect(url)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=30) as client:
        for i, body in enumerate(bodies):
            response = await client.post(request.url, content=body, headers=request.headers)
            db.execute("INSERT INTO quarantine (spool_file, line_number, reason, raw) VALUES ('sent', :i, :s, :b)",
                       i=i, s=str(response.status_code), b=response.text)
    seconds = time.perf_counter() - started
    db.close()
    return len(bodies) / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--baseline-messages", type=int, default=2_000)
    # On a shared 2-core machine one run's ratio swings by +-10 %: alternate ceiling and ours and
    # report medians (the ratio is each round's, ours against the ceiling just before it).
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", type=backends_arg, default=["sqlite", "postgresql"])
    args = parser.parse_args()
    os.environ.update(ENV)
    config = SandboxConfig(access_token=TOKEN, app_secret=SECRET, throughput_per_s=1_000_000)
    with tempfile.TemporaryDirectory() as tmp, sandbox_process(config) as base_url, \
            stores(args.backend, Path(tmp)) as new_store:
        for backend in args.backend:
            measure(backend, new_store, base_url, args)


def measure(backend: str, new_store: Any, base_url: str, args: argparse.Namespace) -> None:
    ceilings, ours, ratios, seconds, transports = [], [], [], [], []
    for round_no in range(args.rounds):
        url = new_store(backend, f"ours_{round_no}")
        queue_campaign(url, args.messages)
        bodies = payloads(url, args.messages)
        ceilings.append(asyncio.run(ceiling(base_url, bodies, args.concurrency)))
        seconds.append(run_ours(url, base_url, args.messages, args.concurrency))
        transports.append(asyncio.run(transport_ceiling(base_url, bodies, args.concurrency)))
        ours.append(args.messages / seconds[-1])
        ratios.append(ours[-1] / ceilings[-1])
        print(f"{backend} round {round_no + 1}: bare ceiling {ceilings[-1]:,.0f}/s, ours (store on) {ours[-1]:,.0f}/s "
              f"({ratios[-1]:.1%}), bare loop through our session {transports[-1]:,.0f}/s", flush=True)
    baseline_per_s = asyncio.run(straightforward(base_url, bodies[: args.baseline_messages],
                                                 new_store(backend, "baseline")))
    print(f"{backend} straightforward: {baseline_per_s:,.0f}/s", flush=True)
    per_s = statistics.median(ours)
    emit({"name": "throughput", "backend": backend, "messages": args.messages,
          "seconds": round(statistics.median(seconds), 3),
          "per_s": round(per_s, 1), "ceiling_per_s": round(statistics.median(ceilings), 1),
          "ratio_to_ceiling": round(statistics.median(ratios), 3), "baseline_per_s": round(baseline_per_s, 1),
          "ratio": round(per_s / baseline_per_s, 2), "concurrency": args.concurrency,
          "rounds_ratio_to_ceiling": [round(r, 3) for r in ratios],
          "transport_ceiling_per_s": round(statistics.median(transports), 1),
          "ratio_to_transport_ceiling": round(per_s / statistics.median(transports), 3)})


def run_ours(url: str, base_url: str, messages: int, concurrency: int) -> float:
    """Seconds for our dispatch of the queued campaign, every message ending sent."""
    with store.connect(url) as db:
        started = time.perf_counter()
        result = asyncio.run(dispatch_campaign(
            db, "bench", whatsapp(base_url),
            # Unthrottled: the spec caps a WhatsApp number at 1,000/s, this measures the engine.
            rate=RateSpec.model_construct(max_per_second=1e9, concurrency=concurrency),
            retry=RetrySpec(max_attempts=3), progress_every_s=60))
        seconds = time.perf_counter() - started
        states = dict(db.rows("SELECT state, count(*) FROM outbox GROUP BY state"))
    assert result.sent == messages and states == {"sent": messages}, states
    return seconds

if __name__ == "__main__":
    main()
