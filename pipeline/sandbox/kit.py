"""Shared pieces of the SMS and e-mail sandboxes: a token-bucket throughput limit, seeded per-recipient
draws, a poster that retries signed callbacks until the receiver acknowledges them, and the stats shape
every sandbox reports (the WhatsApp sandbox's `/_sandbox/stats`)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

# (url, items) -> (body, headers): how one POST of due items looks on the wire.
Render = Callable[[str, list[Any]], tuple[bytes, dict[str, str]]]


class Throttle:
    """Token bucket per key: `rate` per second, bursts up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)

    def allow(self, key: str = "") -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.rate, now))
        tokens = min(max(self.rate, 1.0), tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


def draws(seed: int, key: str, n: int = 4) -> list[float]:
    """`n` independent uniforms in [0, 1) that depend only on (seed, key): a recipient's fate is
    the same in every run, so tests can predict it."""
    digest = hashlib.sha256(f"{seed}|{key}".encode()).digest()
    return [int.from_bytes(digest[i : i + 6], "big") / 2**48 for i in range(0, 6 * n, 6)]


def pick(u: float, weighted: tuple[tuple[Any, float], ...]) -> Any:
    total = sum(weight for _, weight in weighted)
    acc = 0.0
    for value, weight in weighted:
        acc += weight / total
        if u < acc:
            return value
    return weighted[-1][0]


class _Due:
    """One callback waiting to be posted; the heap holds `(at, seq, _Due)`, so ordering is done by tuple
    comparison in C (`at` is the time.monotonic() when it may be posted)."""

    __slots__ = ("url", "item", "label", "group", "attempts")

    def __init__(self, url: str, item: Any, label: str, group: str) -> None:
        self.url, self.item, self.label, self.group = url, item, label, group
        self.attempts = 0


def accept_2xx(response: httpx.Response) -> bool:
    return 200 <= response.status_code < 300


@dataclass(frozen=True)
class PosterSettings:
    batch: int = 50  # items per POST (1 for providers that post one callback per request)
    retry_base_s: float = 0.2
    retry_max_s: float = 10.0
    concurrency: int = 8
    timeout_s: float = 10.0
    tick_s: float = 0.02  # how long due items may wait to share a POST


class CallbackPoster:
    """Owns every scheduled callback until its receiver acknowledges it; nothing is dropped silently. The one
    poster of every sandbox (the WhatsApp sandbox's, pipeline/sandbox/webhooks.py, adds Meta's envelope and a
    leaner HTTP client).

    Items due at the same URL (and `group`) share a POST (up to `batch`); a refused or failed POST is retried
    with capped exponential backoff for as long as the sandbox runs. Call `schedule` from the poster's loop.
    """

    def __init__(self, render: Render, settings: PosterSettings | None = None,
                 accept: Callable[[httpx.Response], bool] = accept_2xx) -> None:
        self.render = render
        self.settings = settings or PosterSettings()
        self.accept = accept
        self._heap: list[tuple[float, int, _Due]] = []
        self._seq = itertools.count()
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(self.settings.concurrency)
        self.scheduled = 0
        self.acknowledged = 0
        self.posts = 0
        self.failed_posts = 0
        self.acknowledged_by_status: Counter[str] = Counter()

    @property
    def pending(self) -> int:
        return self.scheduled - self.acknowledged

    def schedule(self, delay_s: float, url: str, item: Any, label: str = "", group: str = "",
                 start: float | None = None) -> None:
        """Queue `item` to be posted to `url` `delay_s` after `start` (a time.monotonic(); now if not given);
        `label` is what it counts as once acknowledged, and only items of the same `group` share a POST. A plan of
        several items passes one `start`, so their order holds however long the scheduling itself took."""
        self.scheduled += 1
        due = (time.monotonic() if start is None else start) + delay_s
        heapq.heappush(self._heap, (due, next(self._seq), _Due(url, item, label, group)))

    def _open_client(self) -> Any:
        limits = httpx.Limits(max_connections=self.settings.concurrency)
        # trust_env=False: a proxy from the environment must not intercept loopback callbacks.
        return httpx.AsyncClient(timeout=self.settings.timeout_s, limits=limits, trust_env=False)

    async def start(self) -> None:
        self._client = self._open_client()
        self._task = asyncio.create_task(self._dispatch(), name="sandbox-callbacks")

    async def stop(self, grace_s: float = 2.0) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=grace_s)
        if self._client:
            await self._client.aclose()
        if self.pending:
            log.warning("sandbox stopping with %d callbacks not acknowledged", self.pending)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Posts while the block runs (a sandbox app's lifespan)."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def drain(self, timeout_s: float) -> bool:
        """Waits until every scheduled callback is acknowledged; False if `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.pending == 0

    async def _dispatch(self) -> None:
        heap, size = self._heap, self.settings.batch
        while True:
            now, due = time.monotonic(), []
            while heap and heap[0][0] <= now:
                due.append(heapq.heappop(heap)[2])
            batches: dict[tuple[str, str], list[_Due]] = {}
            for item in due:  # already in due order, which is the order items appear in a POST
                batches.setdefault((item.url, item.group), []).append(item)
            for items in batches.values():
                for i in range(0, len(items), size):
                    await self._slots.acquire()  # back-pressure: a slow receiver gets bigger batches
                    task = asyncio.create_task(self._post(items[i : i + size]))
                    self._in_flight.add(task)
                    task.add_done_callback(self._in_flight.discard)
            await asyncio.sleep(self.settings.tick_s)

    async def _post(self, batch: list[_Due]) -> None:
        try:
            ok = await self._deliver(batch)
        except Exception:  # a bug here must not lose the batch: keep it and retry
            log.exception("callback POST to %s raised; will retry", batch[0].url)
            ok = False
        finally:
            self._slots.release()
        if ok:
            self.acknowledged += len(batch)
            self.acknowledged_by_status.update(item.label for item in batch if item.label)
            return
        self.failed_posts += 1
        now = time.monotonic()
        for item in batch:
            item.attempts += 1
            backoff = min(self.settings.retry_max_s, self.settings.retry_base_s * 2 ** (item.attempts - 1))
            heapq.heappush(self._heap, (now + backoff, next(self._seq), item))

    async def _deliver(self, batch: list[_Due]) -> bool:
        url = batch[0].url
        body, headers = self.render(url, [item.item for item in batch])
        self.posts += 1
        assert self._client is not None, "start() was not called"
        return await self._exchange(url, body, headers)

    async def _exchange(self, url: str, body: bytes, headers: dict[str, str]) -> bool:
        """POSTs one batch; True once the receiver acknowledged it."""
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.info("callback POST to %s failed: %r; will retry", url, exc)
            return False
        if self.accept(response):
            return True
        log.info("callback POST to %s answered %d; will retry", url, response.status_code)
        return False


@dataclass
class Tally:
    """The counters behind `/_sandbox/stats`, in the WhatsApp sandbox's shape."""

    throttle_code: str
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    messages: list[dict[str, Any]] = field(default_factory=list)
    duplicate_callback_data: int = 0
    _seen: set[str] = field(default_factory=set)

    def correlation(self, correlation_id: str | None) -> None:
        """Counts a correlation id the provider has already accepted once (a double send)."""
        if correlation_id is None:
            return
        if correlation_id in self._seen:
            self.duplicate_callback_data += 1
        self._seen.add(correlation_id)

    def snapshot(self, poster: CallbackPoster | None, with_messages: bool = True) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "accepted": self.accepted,
            "rejected": {code: n for code, n in sorted(self.rejected.items())},
            "throttled": self.rejected[self.throttle_code],
            "duplicate_callback_data": self.duplicate_callback_data,
            **poster_stats(poster),
        }
        if with_messages:
            stats["messages"] = list(self.messages)
        return stats


def poster_stats(poster: CallbackPoster | None) -> dict[str, Any]:
    """A poster's counters as `/_sandbox/stats` reports them (zeros for a sandbox that posts nothing)."""
    return {
        "webhooks_scheduled": poster.scheduled if poster else 0,
        "webhooks_pending": poster.pending if poster else 0,
        "webhooks_acknowledged": poster.acknowledged if poster else 0,
        "webhook_posts": poster.posts if poster else 0,
        "webhook_post_failures": poster.failed_posts if poster else 0,
        "statuses_acknowledged": dict(poster.acknowledged_by_status) if poster else {},
    }
