"""Posts status webhooks the way Meta does: batched in the `whatsapp_business_account` envelope,
signed with `X-Hub-Signature-256`, and retried with backoff until the receiver acknowledges."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)


def sign(app_secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` header value for a raw body."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def envelope(waba_id: str, display_phone_number: str, phone_number_id: str, statuses: list[dict]) -> dict:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": display_phone_number, "phone_number_id": phone_number_id},
        "statuses": statuses,
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba_id, "changes": [{"field": "messages", "value": value}]}],
    }


@dataclass(order=True)
class _Due:
    at: float  # time.monotonic() when the status may be posted
    seq: int
    phone_number_id: str = field(compare=False)
    status: dict[str, Any] = field(compare=False)
    attempts: int = field(default=0, compare=False)


@dataclass(frozen=True)
class PosterSettings:
    url: str
    app_secret: str
    waba_id: str
    display_phone_number: str
    batch: int = 50
    retry_base_s: float = 0.2
    retry_max_s: float = 10.0
    concurrency: int = 8
    timeout_s: float = 10.0
    tick_s: float = 0.02  # how long due statuses may wait to share a POST


class WebhookPoster:
    """Owns every scheduled status until its receiver answers 2xx; nothing is dropped silently.

    Meta retries failed deliveries for up to 7 days; here a status is retried (exponential backoff,
    capped) for as long as the server runs, and whatever is still unacknowledged at shutdown is
    logged and stays visible as `pending`.
    """

    def __init__(self, settings: PosterSettings) -> None:
        self.settings = settings
        self._heap: list[_Due] = []
        self._seq = itertools.count()
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.concurrency)
        self.scheduled = 0
        self.acknowledged = 0
        self.posts = 0
        self.failed_posts = 0
        self.acknowledged_by_status: Counter[str] = Counter()

    @property
    def pending(self) -> int:
        return self.scheduled - self.acknowledged

    def schedule(self, delay_s: float, phone_number_id: str, status: dict[str, Any]) -> None:
        """Queue one status to be posted `delay_s` from now (call from the server's event loop)."""
        self.scheduled += 1
        heapq.heappush(self._heap, _Due(time.monotonic() + delay_s, next(self._seq), phone_number_id, status))

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=self.settings.concurrency)
        # trust_env=False: a proxy from the environment must not intercept loopback webhooks.
        self._client = httpx.AsyncClient(timeout=self.settings.timeout_s, limits=limits, trust_env=False)
        self._task = asyncio.create_task(self._dispatch(), name="sandbox-webhooks")

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
            log.warning("sandbox stopping with %d status webhooks not acknowledged", self.pending)

    async def drain(self, timeout_s: float) -> bool:
        """Waits until every scheduled status is acknowledged; False if `timeout_s` passed first."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.pending == 0

    async def _dispatch(self) -> None:
        while True:
            due = self._pop_due(time.monotonic())
            for batch in self._batches(due):
                await self._slots.acquire()  # back-pressure: a slow receiver gets bigger batches
                task = asyncio.create_task(self._post(batch))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            await asyncio.sleep(self.settings.tick_s)

    def _pop_due(self, now: float) -> list[_Due]:
        due = []
        while self._heap and self._heap[0].at <= now:
            due.append(heapq.heappop(self._heap))
        return due

    def _batches(self, due: list[_Due]) -> list[list[_Due]]:
        by_number: dict[str, list[_Due]] = {}
        for item in due:  # already in due order, which is the order statuses appear in a POST
            by_number.setdefault(item.phone_number_id, []).append(item)
        size = self.settings.batch
        return [items[i : i + size] for items in by_number.values() for i in range(0, len(items), size)]

    async def _post(self, batch: list[_Due]) -> None:
        try:
            ok = await self._deliver(batch)
        except Exception:  # a bug here must not lose the batch: keep it and retry
            log.exception("webhook POST to %s raised; will retry", self.settings.url)
            ok = False
        finally:
            self._slots.release()
        if ok:
            self.acknowledged += len(batch)
            self.acknowledged_by_status.update(item.status["status"] for item in batch)
            return
        self.failed_posts += 1
        now = time.monotonic()
        for item in batch:
            item.attempts += 1
            backoff = min(self.settings.retry_max_s, self.settings.retry_base_s * 2 ** (item.attempts - 1))
            item.at = now + backoff
            heapq.heappush(self._heap, item)

    async def _deliver(self, batch: list[_Due]) -> bool:
        s = self.settings
        payload = envelope(s.waba_id, s.display_phone_number, batch[0].phone_number_id, [i.status for i in batch])
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "facebookexternalua",
            "X-Hub-Signature-256": sign(s.app_secret, body),
        }
        self.posts += 1
        assert self._client is not None, "start() was not called"
        try:
            response = await self._client.post(s.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.info("webhook POST to %s failed: %r; will retry", s.url, exc)
            return False
        if 200 <= response.status_code < 300:
            return True
        log.info("webhook POST to %s answered %d; will retry", s.url, response.status_code)
        return False
