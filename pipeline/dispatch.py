"""Sends a campaign's queued messages: rate limit, concurrency cap, retries, batched ledger.

The engine owns policy (rate, retries, backoff, when to stop); channels only build requests and
classify answers. Every outcome is written to the outbox ledger in batches.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import httpx

from pipeline.channels.base import Channel, SendOutcome
from pipeline.ledger import Ledger, Pending
from pipeline.ratelimit import SlotLimiter
from pipeline.spec import RateSpec, RetrySpec

log = logging.getLogger("pipeline.dispatch")

FLUSH_EVERY_S = 0.2
FLUSH_AT = 1000


@dataclass
class DispatchResult:
    sent: int = 0
    failed: int = 0
    retries: int = 0
    throttled: int = 0
    reconciled_sent: int = 0
    unknown: int = 0
    released: int = 0
    stopped_reason: str | None = None
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def backoff_delay(attempt: int, retry: RetrySpec, outcome: SendOutcome, rng: random.Random) -> float:
    """Exponential backoff with full jitter; the provider's Retry-After wins when longer."""
    exp = min(retry.max_delay_s, retry.base_delay_s * 2 ** (attempt - 1))
    delay = rng.uniform(exp / 2, exp)
    return max(delay, outcome.retry_after_s or 0.0)


class _Dispatch:
    def __init__(
        self, con: duckdb.DuckDBPyConnection, campaign_id: str, channel: Channel, rate: RateSpec,
        retry: RetrySpec, on_progress: Callable[[dict[str, Any]], None] | None, progress_every_s: float,
        transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 10.0,
    ) -> None:
        self.transport = transport
        self.timeout_s = timeout_s
        self.ledger = Ledger(con, campaign_id)
        self.channel = channel
        self.rate = rate
        self.retry = retry
        self.limiter = SlotLimiter(rate.max_per_second)
        self.on_progress = on_progress
        self.progress_every_s = progress_every_s
        self.result = DispatchResult()
        self.queue: asyncio.Queue[Pending | None] = asyncio.Queue(maxsize=rate.concurrency * 2)
        self.outcomes: list[tuple] = []
        self.stop = asyncio.Event()
        self.rng = random.Random()
        # One thread owns the DuckDB connection, so ledger writes never block the event loop.
        self.db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self.started = time.monotonic()
        self.deadline = self.started + retry.deadline_s
        self.total = 0

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.db, fn, *args)

    async def run(self) -> DispatchResult:
        try:
            sent, unknown = await self._db(self.ledger.reconcile_in_flight)
            self.result.reconciled_sent, self.result.unknown = sent, unknown
            if unknown:
                log.warning("%d messages were in flight at a crash and have no receipt: state 'unknown', "
                            "not resent automatically", unknown)
            counts = await self._db(self.ledger.counts)
            self.total = counts.get("queued", 0)
            workers = [asyncio.create_task(self._worker(i)) for i in range(self.rate.concurrency)]
            flusher = asyncio.create_task(self._flusher())
            await self._feed()
            for _ in workers:
                await self.queue.put(None)
            await asyncio.gather(*workers)
            flusher.cancel()
            await self._flush()
            self.result.seconds = time.monotonic() - self.started
            self._progress(final=True)
            return self.result
        finally:
            self.db.shutdown(wait=True)

    async def _feed(self) -> None:
        last_seq = -1
        while not self.stop.is_set():
            page = await self._db(self.ledger.pending, last_seq, 10_000)
            if not page:
                return
            last_seq = page[-1].seq
            step = self.rate.concurrency
            for start in range(0, len(page), step):
                if self.stop.is_set():
                    return
                chunk = page[start : start + step]
                # Committed before any of these requests leaves: the crash-safety contract.
                await self._db(self.ledger.claim, chunk[0].seq, chunk[-1].seq)
                for item in chunk:
                    if self.stop.is_set():
                        await self._release([item])
                        continue
                    await self.queue.put(item)

    async def _release(self, items: list[Pending]) -> None:
        await self._db(self.ledger.release, [i.seq for i in items])
        self.result.released += len(items)

    async def _worker(self, index: int) -> None:
        async with self.channel.open_session(self.timeout_s, self.transport) as session:
            while True:
                item = await self.queue.get()
                if item is None:
                    return
                if self.stop.is_set():
                    await self._release([item])
                    continue
                await self._send(session, item)

    async def _send(self, session: Any, item: Pending) -> None:
        attempts = item.attempts + 1
        while True:
            await self.limiter.acquire()
            outcome = (await self.channel.send(session, [item.payload_json]))[0]
            if outcome.throttled:
                self.result.throttled += 1
                self.limiter.throttled(outcome.retry_after_s)
            elif outcome.kind == "sent":
                self.limiter.recover()
            if outcome.kind == "retry" and not self.stop.is_set():
                delay = backoff_delay(attempts, self.retry, outcome, self.rng)
                if attempts < self.retry.max_attempts and time.monotonic() + delay < self.deadline:
                    self.result.retries += 1
                    await asyncio.sleep(delay)
                    attempts += 1
                    continue
            break
        self._record(item, outcome, attempts)

    def _record(self, item: Pending, outcome: SendOutcome, attempts: int) -> None:
        if outcome.kind == "sent":
            state, sent_at = "sent", datetime.now(UTC)
            self.result.sent += 1
        elif outcome.kind == "stop":
            state, sent_at = "queued", None  # not sent; stays queued for when the cause is fixed
            attempts -= 1
            if not self.stop.is_set():
                self.result.stopped_reason = f"{outcome.error_code}: {outcome.error_detail}"
                log.error("channel %s stopped: %s; everything unsent stays queued",
                          self.channel.name, self.result.stopped_reason)
                self.stop.set()
        else:
            # Retries exhausted are failures too; the code says which kind.
            state, sent_at = "failed", None
            self.result.failed += 1
            self.result.errors[outcome.error_code or "?"] = self.result.errors.get(outcome.error_code or "?", 0) + 1
        self.outcomes.append(
            (item.seq, state, outcome.provider_message_id, outcome.error_code, outcome.error_detail, sent_at, attempts)
        )

    async def _flush(self) -> None:
        batch, self.outcomes = self.outcomes, []
        if batch:
            await self._db(self.ledger.record, batch)

    async def _flusher(self) -> None:
        last_progress = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            await self._flush()
            if time.monotonic() - last_progress >= self.progress_every_s:
                last_progress = time.monotonic()
                self._progress()

    def _progress(self, final: bool = False) -> None:
        done = self.result.sent + self.result.failed
        elapsed = time.monotonic() - self.started
        info = {
            "sent": self.result.sent, "failed": self.result.failed, "total": self.total,
            "throttled": self.result.throttled, "per_s": round(done / elapsed, 1) if elapsed else 0.0,
            "fraction": (done / self.total) if self.total else 1.0, "final": final,
        }
        log.info("dispatch: %(sent)d sent, %(failed)d failed of %(total)d (%(per_s).0f/s)", info)
        if self.on_progress:
            self.on_progress(info)


async def dispatch_campaign(
    con: duckdb.DuckDBPyConnection, campaign_id: str, channel: Channel, *, rate: RateSpec | None = None,
    retry: RetrySpec | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None,
    progress_every_s: float = 3.0, transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 10.0,
) -> DispatchResult:
    """Sends every queued message of the campaign; returns counts. Safe to call again after a crash.

    `transport` replaces the network (an `httpx.MockTransport` in tests).
    """
    run = _Dispatch(
        con, campaign_id, channel, rate or RateSpec(), retry or RetrySpec(), on_progress, progress_every_s,
        transport, timeout_s,
    )
    return await run.run()
