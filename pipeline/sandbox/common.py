"""What the Messenger/Instagram, Viber and ChatApp sandboxes add on top of `kit.py` (throttle, seeded
draws, the retrying callback poster, the stats tally): a delivery fate per recipient, callback
timing, one `Ledger` that owns tally + poster + the `/_sandbox/stats|drain` routes, and a
recording webhook receiver for tests and demos."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline.sandbox.kit import CallbackPoster, PosterSettings, Render, Tally, draws

Final = Literal["read", "delivered", "failed"]


@dataclass(frozen=True)
class Fate:
    final: Final
    pick: float  # a further uniform draw, e.g. to choose among failure codes


def fate_for(seed: int, key: str, *, fail_rate: float, read_rate: float) -> Fate:
    """A pure function of (seed, recipient), so tests can predict it."""
    u = draws(seed, key, 3)
    if u[0] < fail_rate:
        return Fate("failed", u[1])
    return Fate("read" if u[2] < read_rate else "delivered", u[1])


def delays(steps: int, spread_s: tuple[float, float], rng: Any) -> list[float]:
    """Cumulative offsets (seconds after acceptance) for consecutive callbacks of one message."""
    elapsed, out = 0.0, []
    for _ in range(steps):
        elapsed += rng.uniform(*spread_s)
        out.append(elapsed)
    return out


class Ledger:
    """What a sandbox accepted and refused, and its callback poster; stats in the WhatsApp sandbox's shape
    plus `calls` (accepted API calls: a ChatApp mass send is one call for many messages)."""

    def __init__(self, throttle_code: str, webhook_url: str | None, render: Render,
                 settings: PosterSettings | None = None) -> None:
        self.tally = Tally(throttle_code=throttle_code)
        self.calls = 0
        self.webhook_url = webhook_url
        self.poster = CallbackPoster(render, settings) if webhook_url else None

    @property
    def rejected(self) -> Any:
        return self.tally.rejected

    @property
    def accepted(self) -> int:
        return self.tally.accepted

    def accept(self, provider_id: str, to: str, correlation_id: str | None, outcome: str,
               error_code: str | None = None, dedupe_key: str | None = None, new_call: bool = True) -> None:
        """Records one accepted message; `dedupe_key` (default: the correlation id) finds double sends."""
        self.tally.accepted += 1
        self.calls += new_call
        self.tally.correlation(dedupe_key or correlation_id)
        self.tally.messages.append({"id": provider_id, "to": to, "correlation_id": correlation_id,
                                    "outcome": outcome, "error_code": error_code})

    def schedule(self, delay_s: float, item: Any, label: str) -> None:
        if self.poster and self.webhook_url:
            self.poster.schedule(delay_s, self.webhook_url, item, label)

    def snapshot(self, with_messages: bool = True) -> dict[str, Any]:
        return {**self.tally.snapshot(self.poster, with_messages), "calls": self.calls}

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with self.poster.running() if self.poster else contextlib.nullcontext():
            yield

    def routes(self) -> list[Route]:
        async def stats(request: Request) -> JSONResponse:
            flag = request.query_params.get("messages", "1").lower()
            return JSONResponse(self.snapshot(flag not in ("0", "false", "no")))

        async def drain(request: Request) -> JSONResponse:
            """Waits (up to `?timeout=` seconds, default 30, at most 120) until every callback is acknowledged."""
            try:
                timeout = min(float(request.query_params.get("timeout", "30")), 120.0)
            except ValueError:
                return JSONResponse({"error": "timeout must be a number"}, status_code=400)
            drained = await self.poster.drain(timeout) if self.poster else True
            return JSONResponse({"drained": drained, **self.snapshot(with_messages=False)})

        return [Route("/_sandbox/stats", stats, methods=["GET"]), Route("/_sandbox/drain", drain, methods=["POST"])]


class RecordingReceiver:
    """A webhook endpoint (any path) that keeps raw bodies and headers and answers 200: for tests and demos."""

    def __init__(self) -> None:
        self.posts: list[tuple[bytes, dict[str, str]]] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self.posts.append((body, dict(request.headers)))
        return Response("ok")

    def snapshot(self) -> list[tuple[bytes, dict[str, str]]]:
        with self._lock:
            return list(self.posts)
