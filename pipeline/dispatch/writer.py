"""The dispatch's group commits: workers wait for their claims, outcomes ride along, all through the one thread
that talks to the store for a dispatch (pipeline/dispatch/engine.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from pipeline.dispatch.ledger import Claim, Ledger, Outcome

FLUSH_EVERY_S = 0.2
# Group commits at most this often: each is a write transaction (and an fsync) however few rows it
# holds, and back-to-back commits at 1,000+ sends/s take CPU the event loop and the provider need. The
# wait hides in the pipeline: slots are reserved longer ahead than a claim takes (see pipeline_depth).
COMMIT_GAP_S = 0.1


class GroupWriter:
    """Group commits on the one thread that talks to the store for this dispatch."""

    def __init__(self, ledger: Ledger, run_db: Callable[..., Any]) -> None:
        self.ledger = ledger
        self.run_db = run_db
        self.claims: list[tuple[Claim, asyncio.Future[set[int]]]] = []
        self.outcomes: list[Outcome] = []
        self.wake = asyncio.Event()
        self.closed = False
        self.inflight: asyncio.Future[set[int]] | None = None

    async def claim(self, seqs: list[int], pids: list[str | None] | None = None, *, resend: bool = False) -> set[int]:
        """Waits for the next group commit; returns the seqs it claimed (a message another dispatcher
        holds, or one no longer queued, is left out and must not be sent)."""
        future: asyncio.Future[set[int]] = asyncio.get_running_loop().create_future()
        self.claims.append((Claim(seqs, pids, resend), future))
        self.wake.set()
        return await future

    def record(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    async def flush(self) -> None:
        if self.inflight is not None and not self.inflight.done():
            await asyncio.wait([self.inflight])
            self.inflight.result()  # a failed commit fails the run, as it would have in the writer
        claims, self.claims = self.claims, []
        outcomes, self.outcomes = self.outcomes, []
        if not claims and not outcomes:
            return
        # Shielded: cancelling the writer (the run ending) must not cancel a commit that has taken
        # its outcomes off the list (a commit cancelled before the ledger thread starts it never
        # runs); the final flush waits for it first.
        self.inflight = asyncio.ensure_future(self.run_db(self.ledger.commit, [c for c, _ in claims], outcomes))
        try:
            claimed = await asyncio.shield(self.inflight)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            for _, future in claims:
                future.set_exception(exc)
            raise
        for claim, future in claims:
            future.set_result(claimed.intersection(claim.seqs))

    async def run(self) -> None:
        # Claims are committed as soon as possible (a worker waits on them); outcomes ride along
        # or go every FLUSH_EVERY_S. While one commit runs, the next batch gathers.
        last = 0.0
        while not self.closed:
            try:
                await asyncio.wait_for(self.wake.wait(), FLUSH_EVERY_S)
            except TimeoutError:
                pass
            gap = last + COMMIT_GAP_S - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            self.wake.clear()
            last = time.monotonic()
            await self.flush()
