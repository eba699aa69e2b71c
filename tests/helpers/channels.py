"""The channel tests' stack: a sandbox app on loopback (optionally posting its receipts to a recording receiver),
a campaign queued in the ledger, the real dispatcher run over it, and the sandbox drained of its callbacks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import httpx
import polars as pl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pipeline.channels.base import Channel
from pipeline.dispatch.engine import dispatch_campaign
from pipeline.dispatch.outbox import enqueue_messages, register_campaign
from pipeline.dispatch.policy import DispatchResult
from pipeline.servers import serve_in_thread
from pipeline.spec import CampaignSpec, RateSpec, RetrySpec
from pipeline.store import Store

CAMPAIGN = "t"
FAST_RETRY = RetrySpec(max_attempts=20, base_delay_s=0.02, max_delay_s=0.3, deadline_s=30)


@dataclass(frozen=True)
class Post:
    url: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook endpoint (any path) that records every POST: `posts` those it acknowledged, `attempts` all of them.
    `answers` scripts the status of the first POSTs (a refused one the sender must post again), `ack` is the
    body of a 200."""

    def __init__(self, answers: list[int] | None = None, ack: bytes = b"ok") -> None:
        self.answers, self.ack = list(answers or []), ack
        self._attempts: list[tuple[Post, int]] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            status = self.answers.pop(0) if self.answers else 200
            self._attempts.append((Post(str(request.url), dict(request.headers), body), status))
        return Response(self.ack if status == 200 else b"{}", status_code=status, media_type="application/json")

    @property
    def posts(self) -> list[Post]:
        with self._lock:
            return [post for post, status in self._attempts if status == 200]

    @property
    def attempts(self) -> list[Post]:
        with self._lock:
            return [post for post, _ in self._attempts]


@contextmanager
def serving(create_app: Callable[[Any], Starlette], config: Any, receiver: Receiver | None = None,
            webhook_path: str = "") -> Iterator[tuple[str, Any]]:
    """(base URL, `app.state.sandbox`) of the sandbox built from `config`; with a `receiver`, the config's
    `webhook_url` is the receiver's `webhook_path`."""
    with serve_in_thread(receiver.app) if receiver else nullcontext() as hook:
        if hook is not None:
            config = config.model_copy(update={"webhook_url": f"{hook}{webhook_path}"})
        app = create_app(config)
        with serve_in_thread(app) as url:
            yield url, app.state.sandbox


def queue(db: Store, spec: CampaignSpec, channel: Channel, recipients: list[str], *,
          texts: list[str] | None = None, params: list[str] | None = None, region: str | None = None,
          regions: list[str | None] | None = None, number_type: str | None = "mobile") -> list[str]:
    """Queues one message per recipient (the key column is `phone_e164` whatever the channel addresses by)
    as campaign `t`; returns the recipients."""
    n = len(recipients)
    frame = pl.DataFrame({
        "row_number": list(range(2, n + 2)), "phone_e164": recipients,
        "region": regions if regions is not None else [region] * n, "number_type": [number_type] * n,
        "text": texts if texts is not None else [f"Hi n{i}" for i in range(n)],
        "params_json": params if params is not None else ["{}"] * n,
    }, schema_overrides={"region": pl.String, "number_type": pl.String})
    register_campaign(db, spec, CAMPAIGN)
    enqueue_messages(db, spec, CAMPAIGN, channel, frame)
    return recipients


def dispatch(db: Store, channel: Channel, *, rate: float = 1000, concurrency: int = 4,
             retry: RetrySpec = FAST_RETRY, **options: Any) -> DispatchResult:
    """The real dispatcher over campaign `t` (`options`: timeout_s, transport, reconcile, ...)."""
    return asyncio.run(dispatch_campaign(db, CAMPAIGN, channel, rate=RateSpec(max_per_second=rate,
                                                                              concurrency=concurrency),
                                         retry=retry, **options))


def drain(url: str) -> dict[str, Any]:
    """Waits until the sandbox has had every callback acknowledged; its stats."""
    with httpx.Client(trust_env=False) as client:
        result = client.post(f"{url}/_sandbox/drain", params={"timeout": 10}, timeout=15).json()
    assert result["drained"], result
    return result


def states(db: Store) -> dict[str, int]:
    return {state: n for state, n in db.rows("SELECT state, count(*) FROM outbox GROUP BY state")}
