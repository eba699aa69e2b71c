"""A fake channel for dispatcher tests: batches, failure and transient rates, latency — no HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from typing import Any

from pipeline.channels.base import Outgoing, SendOutcome


class FakeChannel:
    name = "fake"

    def __init__(
        self, *, max_batch: int = 1, fail_rate: float = 0.0, transient_rate: float = 0.0, latency_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.max_batch = max_batch
        self.fail_rate, self.transient_rate, self.latency_s = fail_rate, transient_rate, latency_s
        self.rng = random.Random(seed)
        self.calls: list[list[str]] = []  # message ids per provider call
        self.accepted: list[str] = []

    def build_payload(self, message: Outgoing) -> dict[str, Any]:
        return {"to": message.to, "id": message.message_id, "text": message.text}

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[None]:
        yield None

    def open_session(self, timeout_s: float, transport: Any = None) -> Any:
        return self._session()

    async def send(self, session: Any, payloads: list[str]) -> list[SendOutcome]:
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        ids = [json.loads(p)["id"] for p in payloads]
        self.calls.append(ids)
        outcomes = []
        for message_id in ids:
            draw = self.rng.random()
            if draw < self.fail_rate:
                outcomes.append(SendOutcome(kind="permanent", error_code="fake_permanent"))
            elif draw < self.fail_rate + self.transient_rate:
                outcomes.append(SendOutcome(kind="retry", error_code="fake_transient"))
            else:
                self.accepted.append(message_id)
                outcomes.append(SendOutcome(kind="sent", provider_message_id=f"fake.{message_id}"))
        return outcomes
