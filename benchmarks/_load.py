"""A small, fast HTTP/1.1 load generator for loopback benchmarks (no third-party client).

Each worker process runs its own event loop with raw keep-alive connections (asyncio protocols,
one request in flight per connection, like a webhook sender): a response is parsed from bytes
and the next request is written from the same callback, so the client costs a few µs per request
and the server, not the client, is what gets measured. httpx would cap out far below the server
(MEASUREMENTS.md: ≈ 1,500 req/s) and aiohttp is not a dependency.

Unpaced, every connection sends its next request as soon as the last is answered; with `rate_per_s`,
request k of a worker leaves no earlier than k / (its share of the rate) after the start (a sender at
a fixed rate, as a provider delivering webhooks), and `behind_ms` says how late the latest one left.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# A request builder: (request number) -> (raw body, extra header lines). Module-level, so it pickles.
Builder = Callable[[int], tuple[bytes, list[tuple[str, str]]]]


@dataclass
class WorkerResult:
    worker: int
    ok_ids: list[int] = field(default_factory=list)  # request numbers answered 200
    latencies_ms: list[float] = field(default_factory=list)  # of every answered request
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # connections that failed or closed with a request in flight
    behind_ms: float = 0.0  # paced: how far behind its schedule the latest request left
    started: float = 0.0
    finished: float = 0.0


def http_request(host: str, port: int, path: str, body: bytes, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Conn(asyncio.Protocol):
    """One keep-alive connection: writes a request, parses its response, writes the next."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.current: int | None = None
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.run.ready(self)

    def send(self, number: int) -> None:
        self.current = number
        self.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.run.requests[number])

    def finish(self) -> None:
        self.current = None
        assert self.transport is not None
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17:stop if stop >= 0 else None])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            status = int(head[9:12])
            del self.buf[:total]
            self.run.answered(self.current, status, time.perf_counter() - self.sent_at)
            self.run.ready(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.current is not None:  # closed with a request in flight: not acknowledged
            self.run.result.errors += 1
        self.run.connection_closed()


class _Run:
    def __init__(self, requests: dict[int, bytes], deadline: float, result: WorkerResult,
                 progress: Any, worker: int, interval_s: float | None = None) -> None:
        self.requests = requests
        self.order = iter(sorted(requests))
        self.deadline = deadline
        self.interval_s = interval_s  # paced: seconds between this worker's requests
        self.started = time.monotonic()
        self.issued = 0
        self.idle: deque[_Conn] = deque()  # paced: connections waiting for their request's time
        self.timer: asyncio.TimerHandle | None = None
        self.result = result
        self.progress = progress
        self.worker = worker
        self.open = 0
        self.done = asyncio.get_running_loop().create_future()
        self.answered_count = 0
        self.last_report = time.monotonic()

    def take(self) -> int | None:
        if time.monotonic() >= self.deadline:
            return None
        number = next(self.order, None)
        self.issued += number is not None
        return number

    def ready(self, conn: _Conn) -> None:
        """`conn` can send: at once when unpaced, else when the next request is due."""
        if self.interval_s is None:
            number = self.take()
            conn.send(number) if number is not None else conn.finish()
            return
        self.idle.append(conn)
        self._release()

    def _tick(self) -> None:
        self.timer = None
        self._release()

    def _release(self) -> None:
        while self.idle:
            now = time.monotonic()
            due = self.started + self.issued * (self.interval_s or 0.0)
            if due > now and now < self.deadline:
                if self.timer is None:
                    loop = asyncio.get_running_loop()
                    self.timer = loop.call_at(loop.time() + (due - now), self._tick)
                return
            number = self.take()
            if number is None:
                while self.idle:
                    self.idle.popleft().finish()
                return
            self.result.behind_ms = (now - due) * 1000.0
            self.idle.popleft().send(number)

    def answered(self, number: int | None, status: int, seconds: float) -> None:
        r = self.result
        r.latencies_ms.append(seconds * 1000.0)
        r.statuses[status] = r.statuses.get(status, 0) + 1
        if status == 200 and number is not None:
            r.ok_ids.append(number)
        self.answered_count += 1
        now = time.monotonic()
        if now - self.last_report >= 0.5:
            self.last_report = now
            self.progress.put(("progress", self.worker, self.answered_count))

    def connection_closed(self) -> None:
        self.open -= 1
        if self.open <= 0 and not self.done.done():
            self.done.set_result(None)


async def _drive(host: str, port: int, requests: dict[int, bytes], connections: int, deadline: float,
                 result: WorkerResult, progress: Any, worker: int, interval_s: float | None) -> None:
    loop = asyncio.get_running_loop()
    run = _Run(requests, deadline, result, progress, worker, interval_s)
    run.open = connections
    for _ in range(connections):
        try:
            await loop.create_connection(lambda: _Conn(run), host, port)
        except OSError:
            result.errors += 1
            run.connection_closed()
    await run.done


def _worker(worker: int, workers: int, total: int, build: Builder, host: str, port: int, path: str,
            connections: int, duration_s: float, ready: Any, go: Any, progress: Any,
            interval_s: float | None = None) -> None:
    numbers = range(worker, total, workers)  # interleaved, so every worker gets the same mix
    requests = {}
    for n in numbers:
        body, headers = build(n)
        requests[n] = http_request(host, port, path, body, headers)
    ready.release()
    go.wait()
    result = WorkerResult(worker)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    with contextlib.suppress(ImportError):
        import uvloop  # a dependency of uvicorn[standard]; plain asyncio works too

        loop_factory = uvloop.new_event_loop
    loop = loop_factory()
    result.started = time.time()
    try:
        loop.run_until_complete(_drive(host, port, requests, connections, time.monotonic() + duration_s,
                                       result, progress, worker, interval_s))
    finally:
        loop.close()
    result.finished = time.time()
    progress.put(("result", worker, result))


def run_load(
    *, host: str, port: int, path: str, total: int, build: Builder, workers: int = 2,
    connections_per_worker: int = 32, duration_s: float = 20.0,
    on_progress: Callable[[float, int], None] | None = None, rate_per_s: float | None = None,
    on_start: Callable[[], None] | None = None,
) -> list[WorkerResult]:
    """Sends up to `total` POSTs (stopping after `duration_s`) from `workers` processes, at most
    `rate_per_s` a second in all when given.

    Requests are built (and signed) before the clock starts; `on_start()` is called when it starts,
    `on_progress(elapsed_s, answered)` about twice a second.
    """
    interval_s = workers / rate_per_s if rate_per_s else None
    ctx = mp.get_context("spawn")
    ready, go, progress = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(w, workers, total, build, host, port, path,
                                          connections_per_worker, duration_s, ready, go, progress, interval_s),
                    daemon=True)
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise RuntimeError("load workers did not get ready")
    started = time.monotonic()
    go.set()
    if on_start:
        on_start()
    answered = dict.fromkeys(range(workers), 0)
    results: list[WorkerResult] = []
    while len(results) < workers:
        try:
            kind, worker, payload = progress.get(timeout=duration_s + 30)
        except Exception as exc:  # queue.Empty: a worker died
            raise RuntimeError("a load worker stopped reporting") from exc
        if kind == "progress":
            answered[worker] = payload
            if on_progress:
                on_progress(time.monotonic() - started, sum(answered.values()))
        else:
            results.append(payload)
    for p in procs:
        p.join(timeout=10)
    return sorted(results, key=lambda r: r.worker)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]
