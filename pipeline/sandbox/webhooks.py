"""Posts status webhooks the way Meta does: batched in the `whatsapp_business_account` envelope,
signed with `X-Hub-Signature-256`, and retried with backoff until the receiver acknowledges.

Plain `http://` receivers (the loopback case) are posted to by a small keep-alive HTTP/1.1 client
built on asyncio streams: httpx costs ≈ 1 ms of CPU per POST, which at a few thousand messages a
second made webhooks cost the sandbox as much as the sends themselves. Other URLs go through httpx.
"""

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
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

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


class _Due:
    """One status waiting to be posted; the heap holds `(at, seq, _Due)`, so ordering is done by
    tuple comparison in C (`at` is the time.monotonic() when it may be posted)."""

    __slots__ = ("phone_number_id", "status", "attempts")

    def __init__(self, phone_number_id: str, status: dict[str, Any]) -> None:
        self.phone_number_id = phone_number_id
        self.status = status
        self.attempts = 0


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
        self._heap: list[tuple[float, int, _Due]] = []
        self._seq = itertools.count()
        self._client: _Http11Pool | httpx.AsyncClient | None = None
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
        heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._seq), _Due(phone_number_id, status)))

    async def start(self) -> None:
        s = self.settings
        if urlsplit(s.url).scheme == "http":
            self._client = _Http11Pool(s.url, s.concurrency, s.timeout_s)
        else:
            limits = httpx.Limits(max_connections=s.concurrency)
            # trust_env=False: a proxy from the environment must not intercept loopback webhooks.
            self._client = httpx.AsyncClient(timeout=s.timeout_s, limits=limits, trust_env=False)
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
        heap = self._heap
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[2])
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
            heapq.heappush(self._heap, (now + backoff, next(self._seq), item))

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
        client = self._client
        assert client is not None, "start() was not called"
        if isinstance(client, _Http11Pool):
            status = await client.post(body, headers)
            if status is None:
                return False
        else:
            try:
                status = (await client.post(s.url, content=body, headers=headers)).status_code
            except httpx.HTTPError as exc:
                log.info("webhook POST to %s failed: %r; will retry", s.url, exc)
                return False
        if 200 <= status < 300:
            return True
        log.info("webhook POST to %s answered %d; will retry", s.url, status)
        return False


class _Http11Pool:
    """Keep-alive HTTP/1.1 POSTs to one `http://` URL over at most `size` connections.

    Understands what a receiver may answer: Content-Length, chunked or close-delimited bodies,
    `Connection: close`, interim 1xx answers. A POST on a reused connection that the server closed
    meanwhile is retried once on a fresh connection (it was never answered, so never processed).
    """

    def __init__(self, url: str, size: int, timeout_s: float) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.authority = parts.netloc.rpartition("@")[2]
        self.timeout_s = timeout_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._size = size

    async def post(self, body: bytes, headers: dict[str, str]) -> int | None:
        """The answer's status, or None when no answer came (connection error or timeout)."""
        head = [f"POST {self.target} HTTP/1.1", f"Host: {self.authority}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        for attempt in range(2):
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else None
            try:
                async with asyncio.timeout(self.timeout_s):
                    if conn is None:
                        conn = await asyncio.open_connection(self.host, self.port)
                    status, keep = await self._exchange(conn, request)
            except (OSError, EOFError, ValueError, asyncio.IncompleteReadError, TimeoutError) as exc:
                if conn is not None:
                    conn[1].close()
                if reused and attempt == 0 and not isinstance(exc, TimeoutError):
                    continue  # a stale keep-alive connection: try once more on a new one
                log.info("webhook POST to http://%s%s failed: %r; will retry", self.authority, self.target, exc)
                return None
            if keep and len(self._idle) < self._size:
                self._idle.append(conn)
            else:
                conn[1].close()
            return status
        return None

    @staticmethod
    async def _exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes) -> tuple[int, bool]:
        reader, writer = conn
        if reader.at_eof():
            raise EOFError("connection closed by the server")
        writer.write(request)
        await writer.drain()
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            status = int(rest[:3])
            fields: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    fields[name.strip().lower()] = value.strip()
            if 100 <= status < 200:
                continue  # interim answer; the final one follows
            keep = version == "HTTP/1.1" and fields.get("connection", "").lower() != "close"
            if "chunked" in fields.get("transfer-encoding", "").lower():
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                            pass
                        break
                    await reader.readexactly(size + 2)
            elif "content-length" in fields:
                await reader.readexactly(int(fields["content-length"]))
            elif status not in (204, 304):
                await reader.read()  # delimited by the server closing the connection
                keep = False
            return status, keep

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop()[1].close()
