"""Posts status webhooks the way Meta does: batched in the `whatsapp_business_account` envelope,
signed with `X-Hub-Signature-256`, and retried with backoff until the receiver acknowledges (the
sandboxes' one poster, pipeline/sandbox/kit.py, with Meta's envelope).

Plain `http://` receivers (the loopback case) are posted to by a small keep-alive HTTP/1.1 client
built on asyncio streams: httpx costs ≈ 1 ms of CPU per POST, which at a few thousand messages a
second made webhooks cost the sandbox as much as the sends themselves. Other URLs go through httpx.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pipeline.sandbox.kit import CallbackPoster
from pipeline.sandbox.kit import PosterSettings as KitSettings

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


@dataclass(frozen=True, kw_only=True)
class PosterSettings(KitSettings):
    """Where the statuses go and how they are signed, besides how the poster posts (batch, retries, ...)."""

    url: str
    app_secret: str
    waba_id: str
    display_phone_number: str


class WebhookPoster(CallbackPoster):
    """The sandbox's poster (pipeline/sandbox/kit.py) posting Meta's way: the statuses of one phone number share
    a POST in the `whatsapp_business_account` envelope, signed with the app secret.

    Meta retries failed deliveries for up to 7 days; here a status is retried (exponential backoff,
    capped) for as long as the server runs, and whatever is still unacknowledged at shutdown is
    logged and stays visible as `pending`.
    """

    def __init__(self, settings: PosterSettings) -> None:
        super().__init__(self._render, settings)
        self.webhook = settings

    def schedule(self, delay_s: float, phone_number_id: str, status: dict[str, Any],  # type: ignore[override]
                 start: float | None = None) -> None:
        """Queue one status to be posted `delay_s` after `start` (now if not given; call from the server's event
        loop)."""
        super().schedule(delay_s, self.webhook.url, (phone_number_id, status), status["status"], phone_number_id,
                         start)

    def _render(self, url: str, items: list[tuple[str, dict[str, Any]]]) -> tuple[bytes, dict[str, str]]:
        s = self.webhook
        payload = envelope(s.waba_id, s.display_phone_number, items[0][0], [status for _, status in items])
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        return body, {"Content-Type": "application/json", "User-Agent": "facebookexternalua",
                      "X-Hub-Signature-256": sign(s.app_secret, body)}

    def _open_client(self) -> Any:
        s = self.webhook
        return _Http11Pool(s.url, s.concurrency, s.timeout_s) if urlsplit(s.url).scheme == "http" else (
            super()._open_client())

    async def _exchange(self, url: str, body: bytes, headers: dict[str, str]) -> bool:
        if not isinstance(self._client, _Http11Pool):
            return await super()._exchange(url, body, headers)
        status = await self._client.post(body, headers)
        if status is None:
            return False
        if 200 <= status < 300:
            return True
        log.info("webhook POST to %s answered %d; will retry", url, status)
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
