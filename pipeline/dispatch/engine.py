"""Sends a campaign's queued messages: per-sender lanes, rate limits, retries, group-committed ledger.

The engine owns policy (rate, retries, backoff, budget, limits, when to stop); channels only build
requests and classify answers. Each sender is a lane with its own limiter and workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from pipeline.channels.base import Channel, SendOutcome, tls_context
from pipeline.dispatch.lanes import Lane, planned_ids, sender_rate
from pipeline.dispatch.ledger import Ledger, Outcome, Pending
from pipeline.dispatch.locks import SenderLeases
from pipeline.dispatch.policy import DispatchResult, Guards, backoff_delay
from pipeline.dispatch.ratelimit import wait_for_slot
from pipeline.dispatch.writer import COMMIT_GAP_S, GroupWriter
from pipeline.runtime import steady_collector
from pipeline.spec import RateSpec, RetrySpec
from pipeline.store import Store

log = logging.getLogger("pipeline.dispatch.engine")

PAGE = 2_000


class _Dispatch:
    def __init__(
        self, db: Store, campaign_id: str, channels: dict[str, Channel] | Channel, *,
        rate: RateSpec, retry: RetrySpec, guards: Guards, reconcile: Callable[[], Any] | None,
        on_progress: Callable[[dict[str, Any]], None] | None, progress_every_s: float,
        transport: httpx.AsyncBaseTransport | None, timeout_s: float,
        on_status: Callable[[dict[str, Any]], None] | None, senders: list[str] | None, leases: SenderLeases,
    ) -> None:
        self.ledger = Ledger(db, campaign_id)
        self.group = sorted(set(senders)) if senders is not None else None  # None: every sender of the campaign
        self.leases = leases
        self.campaign_id = campaign_id
        self.channels = channels
        self.rate, self.retry, self.guards = rate, retry, guards
        self.reconcile_fn = reconcile
        self.on_progress, self.progress_every_s = on_progress, progress_every_s
        self.transport, self.timeout_s, self.on_status = transport, timeout_s, on_status
        self.result = DispatchResult()
        self.stop = asyncio.Event()
        self.rng = random.Random()
        # One thread talks to the store for this run: ledger work never blocks the event loop, and
        # the group commits of one run never race each other.
        self.db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self.writer = GroupWriter(self.ledger, self._db)
        self.lanes: list[Lane] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.waiting: set[str] = set()  # senders to dispatch whose lease another dispatcher holds (for now)
        self.uncertain: dict[str, tuple[Lane, Pending, int, float]] = {}  # timed out: maybe sent
        self.leftovers: dict[str, float] = {}  # in flight at an earlier crash
        # Timed out without a receipt and queued again: still `sending` in the ledger under this run's claim,
        # so a worker sends them without claiming them again (a claim takes only what is `queued`).
        self.resending: set[int] = set()
        self.started = time.monotonic()
        self.deadline = self.started + retry.deadline_s
        # More messages in the claim -> slot -> send pipeline than sessions: each waits up to one
        # commit gap plus a commit before it may leave, and that wait must not idle the connections
        # or make sends miss their slots. At most `concurrency` requests are ever in flight per sender.
        ahead = rate.concurrency + int(rate.max_per_second * (2 * COMMIT_GAP_S + 0.1))
        self.pipeline_depth = min(512, max(2 * rate.concurrency, ahead))

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.db, fn, *args)

    def _channel(self, sender: str) -> Channel:
        if isinstance(self.channels, dict):
            return self.channels[sender]
        return self.channels

    async def run(self) -> DispatchResult:
        tls_context()  # built now, not at the first send (pipeline/channels/base.py), and frozen with the rest
        try:
            # No collection pause bunches sends, and fewer collections (pipeline/runtime.py).
            with self.leases.renewing(), steady_collector():
                return await self._run()
        finally:
            self.db.shutdown(wait=True)

    async def _run(self) -> DispatchResult:
        if self.reconcile_fn:  # receipts first: whatever sender this run comes to hold
            await self._db(self.reconcile_fn)
        wanted = await self._db(lambda: self.ledger.senders(in_flight=True))
        if self.group is not None:
            wanted = [s for s in wanted if s in self.group]
        self.waiting = set(wanted)
        await self._db(self.guards.prepare, self.ledger, self._channel_name())
        # A campaign paused (or its template stopped) before this run, as `prepare` read it: stopped before any lane
        # starts, as a pause mid-run stops it (the ticker's first read comes after half a second of sending).
        if reason := self.guards.paused():
            self._stop(reason)
        self.tasks = [asyncio.create_task(self.writer.run()), asyncio.create_task(self._ticker())]
        if self.reconcile_fn:
            self.tasks.append(asyncio.create_task(self._reconciler()))
        sessions = contextlib.AsyncExitStack()
        try:
            if self.stop.is_set():
                self.waiting.clear()  # no sender taken, nothing claimed: everything unsent stays queued
            await self._take_senders(sessions)
            next_take = time.monotonic() + self.leases.renew_s
            # Done when every sender to dispatch was held and its lane has fed and settled everything (uncertain
            # sends count as outstanding until a receipt or the grace settles them) and crash leftovers are settled.
            while not (not self.waiting and all(lane.done for lane in self.lanes) and not self.leftovers):
                await asyncio.sleep(0.02)
                # A worker, feeder or the writer that died would leave this waiting forever: raise its error.
                failed = next((t for t in self.tasks if t.done() and not t.cancelled() and t.exception()), None)
                if failed is not None:
                    for task in self.tasks:
                        task.cancel()
                    await asyncio.gather(*self.tasks, return_exceptions=True)  # the others' errors are seen too
                    raise failed.exception()
                self._drop_lost_lanes()
                if self.stop.is_set():
                    self.waiting.clear()  # the channel stopped: what nobody sent stays queued
                elif self.waiting and time.monotonic() >= next_take:
                    # Held elsewhere: taken once its holder releases it, or stops renewing and it expires.
                    await self._take_senders(sessions)
                    next_take = time.monotonic() + self.leases.renew_s
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            await sessions.aclose()
        self._give_up_uncertain()
        await self.writer.flush()
        self.result.seconds = time.monotonic() - self.started
        self.result.busiest_second = {lane.sender: lane.busiest.most for lane in self.lanes}
        self.result.states = await self._db(lambda: self.ledger.counts(self.group))
        self.result.waiting = self.result.states.get("queued", 0)
        if self.result.waiting:
            self.result.continue_at = await self._db(self.guards.continue_at, self.ledger, self.result.stopped_reason)
        self._progress(final=True)
        return self.result

    async def _take_senders(self, sessions: contextlib.AsyncExitStack) -> None:
        """Takes the leases of the senders still waiting that are free; for each taken, reconciles what an
        earlier holder left in flight (from receipts), then starts its lane."""
        taken = await self._db(self.leases.take, sorted(self.waiting))
        if not taken:
            return
        if self.lanes:
            log.info("dispatch: took sender(s) %s, free again (released, or its holder stopped renewing)",
                     ", ".join(taken))
        self.waiting.difference_update(taken)
        await self._recover(taken)
        queued = (await self._db(lambda: self.ledger.counts(taken))).get("queued", 0)
        self.result.total += queued
        opened: dict[str, list[Any]] = {}
        for sender in taken:
            channel = self._channel(sender)
            opened[sender] = [await sessions.enter_async_context(channel.open_session(self.timeout_s, self.transport))
                              for _ in range(self.rate.concurrency)]
        rates = await asyncio.gather(*(sender_rate(self._channel(sender), sender, opened[sender][0], self.rate)
                                       for sender in taken))
        for sender, rate in zip(taken, rates, strict=True):
            lane = Lane(sender, self._channel(sender), self.guards.lane_rate(sender, rate))
            for session in opened[sender]:
                lane.sessions.put_nowait(session)
            self.lanes.append(lane)
            self.tasks.append(asyncio.create_task(self._feed(lane)))
            self.tasks += [asyncio.create_task(self._worker(lane)) for _ in range(self.pipeline_depth)]

    def _drop_lost_lanes(self) -> None:
        """A lane whose lease was lost (this process stopped renewing for longer than the lease) sends nothing
        more: the new holder reconciles what it left in flight."""
        for lane in self.lanes:
            if lane.sender in self.leases.lost and not lane.lost:
                lane.lost = True
                log.error("dispatch: lost the lease of sender %s to another dispatcher; its lane stops", lane.sender)

    def _channel_name(self) -> str:
        channel = next(iter(self.channels.values())) if isinstance(self.channels, dict) else self.channels
        return channel.name

    async def _recover(self, senders: list[str]) -> None:
        """Before sending for senders just taken: what an earlier holder (a crash, a dead machine) left in flight."""
        # Without a receipt source nothing more can be learnt: leftovers are `unknown` at once. With one,
        # a leftover's receipt may still be on its way (the provider's webhook queue, the spool, an outage
        # of the store between send and record): each gets the full grace from this recovery, however long
        # ago it was claimed, before it is called `unknown`.
        older_than = None if self.reconcile_fn else 0.0
        if self.reconcile_fn and self.lanes:  # receipts that arrived since the run's start
            await self._db(self.reconcile_fn)
        reconciled, unknown = await self._db(
            lambda: self.ledger.reconcile_in_flight(older_than_s=older_than, senders=senders))
        self.result.reconciled_sent += reconciled
        self.result.unknown += unknown
        if unknown:
            log.warning("%d messages were in flight at a crash and no receipt names them: state 'unknown', "
                        "resent only with `campaign resend-unknown`", unknown)
        ages = await self._db(lambda: self.ledger.in_flight_ages(senders))
        now = time.monotonic()
        self.leftovers.update(dict.fromkeys(ages, now))

    async def _feed(self, lane: Lane) -> None:
        last_seq = -1
        try:
            while not self.stop.is_set() and not lane.lost:
                page = await self._db(self.ledger.pending, lane.sender, last_seq, PAGE, datetime.now(UTC))
                if not page:
                    return
                last_seq = page[-1].seq
                for item in page:
                    if self.stop.is_set() or lane.lost or self._lane_paused(lane):
                        return
                    verdict = self.guards.admit(item)
                    if verdict == "wait":
                        continue  # outside its send window: stays queued for a later run
                    if verdict is not None:
                        # A guard (budget, messaging limit) stops the feeding only: what it already
                        # admitted fits and still goes out.
                        if not self.result.stopped_reason:
                            self.result.stopped_reason = verdict
                            log.warning("dispatch halted: %s", verdict)
                        return
                    lane.outstanding += 1
                    await lane.queue.put((item, item.attempts + 1))
        finally:
            lane.fed_all = True

    async def _worker(self, lane: Lane) -> None:
        while True:
            batch = [await lane.queue.get()]
            # Batch APIs (max_batch > 1) take what is already waiting, never wait to fill up.
            while len(batch) < lane.channel.max_batch and not lane.queue.empty():
                batch.append(lane.queue.get_nowait())
            if self.stop.is_set() or lane.lost or self._lane_paused(lane):
                for item, attempts in batch:
                    if item.seq in self.resending:  # held since a timeout: settled as the reconciler would
                        self.resending.discard(item.seq)
                        self._finish(lane, item, SendOutcome(kind="unknown", error_code="timeout",
                                                             error_detail="no answer and no receipt"), attempts - 1)
                    else:
                        lane.outstanding -= 1  # never claimed: still queued in the ledger
                continue
            # Claimed (committed) before the slot is taken: the claim's wait for the next group
            # commit then never makes a send miss its slot; enough claimed workers queue for slots
            # (pipeline_depth) that the rate does not wait for commits either.
            claimed = await self._claim(lane, batch)
            if len(claimed) < len(batch):  # taken by another dispatcher, or no longer queued: not ours to send
                lane.outstanding -= len(batch) - len(claimed)
                batch = [(item, n) for item, n in batch if item.seq in claimed]
                if not batch:
                    continue
            if lane.lost:  # claimed, never sent: left `sending` for the new holder to settle
                lane.outstanding -= len(batch)
                continue
            # The slot and the concurrency cap (one session per request in flight); late slots are given up, and no
            # second of the sender's goes above MAX_WINDOW x its rate (pipeline/dispatch/ratelimit.py).
            session = await wait_for_slot(lane.limiter, lane.sessions, len(batch))
            if not self.stop.is_set() and self.guards.send_window is not None:
                batch = self._closed_window_back(lane, batch)
                if not batch:
                    lane.sessions.put_nowait(session)
                    continue
            if self.stop.is_set() and not any(item.seq in self.resending for item, _ in batch):
                # Stopped while this claimed batch waited for its slot: back to queued, never sent.
                lane.sessions.put_nowait(session)
                for item, attempts in batch:
                    self._finish(lane, item, SendOutcome(kind="stop", error_detail="stopped before its slot"),
                                 attempts)
                continue
            try:
                await self._send(lane, session, batch)
            finally:
                lane.sessions.put_nowait(session)

    def _closed_window_back(self, lane: Lane, batch: list[tuple[Pending, int]]) -> list[tuple[Pending, int]]:
        """The batch without the messages whose send window closed while they waited for their slot: those go back
        to queued (the next opening's run sends them), so nothing leaves after the close."""
        keep = []
        for item, attempts in batch:
            if item.seq in self.resending or self.guards.still_open(item):
                keep.append((item, attempts))
            else:
                lane.outstanding -= 1
                self.writer.record(Outcome(item.seq, "queued", None, None, None, None, attempts - 1))
        return keep

    async def _claim(self, lane: Lane, batch: list[tuple[Pending, int]]) -> set[int]:
        """The batch's seqs this run may send: fresh ones it claimed now, and resends it still holds."""
        seqs = [item.seq for item, _ in batch]
        planned = planned_ids(lane.channel, batch)
        held = self.resending.intersection(seqs)
        if not held:
            return await self.writer.claim(seqs, planned)
        self.resending -= held
        fresh = [i for i, seq in enumerate(seqs) if seq not in held]
        ours = [i for i, seq in enumerate(seqs) if seq in held]
        claims = []
        if fresh:
            claims.append(self.writer.claim([seqs[i] for i in fresh], [planned[i] for i in fresh] if planned else None))
        if planned:  # a resend goes by new provider ids: on record before it leaves
            claims.append(self.writer.claim([seqs[i] for i in ours], [planned[i] for i in ours], resend=True))
        claimed = set(held)
        for taken in await asyncio.gather(*claims):
            claimed |= taken
        return claimed

    async def _send(self, lane: Lane, session: Any, batch: list[tuple[Pending, int]]) -> None:
        first = True
        while batch:
            if lane.lost:  # retries of a lane that lost its lease: left `sending` for the new holder to settle
                lane.outstanding -= len(batch)
                return
            if not first:  # the first attempt's slots were taken before the claim
                planned = planned_ids(lane.channel, batch)
                if planned:  # a smaller batch goes by new provider ids: on record before it leaves
                    await self.writer.claim([item.seq for item, _ in batch], planned, resend=True)
                await wait_for_slot(lane.limiter, None, len(batch))  # holding its session
            first = False
            lane.busiest.add(len(batch))
            outcomes = await lane.channel.send(session, [item.payload_json for item, _ in batch])
            again: list[tuple[Pending, int]] = []
            delay = 0.0
            for (item, attempts), outcome in zip(batch, outcomes, strict=True):
                if outcome.throttled:
                    self.result.throttled += 1
                    lane.limiter.throttled(outcome.retry_after_s)
                elif outcome.kind == "sent":
                    lane.limiter.recover()
                if outcome.kind == "retry" and not self.stop.is_set() and (outcome.retry_after_s or 0) < 3600:
                    wait = backoff_delay(attempts, self.retry, outcome, self.rng)
                    if attempts < self.retry.max_attempts and time.monotonic() + wait < self.deadline:
                        self.result.retries += 1
                        again.append((item, attempts + 1))
                        delay = max(delay, wait)
                        continue
                if outcome.kind == "unknown" and self.reconcile_fn and attempts < self.retry.max_attempts:
                    # It may have reached the provider: wait for a receipt before sending it again.
                    self.uncertain[item.message_id] = (lane, item, attempts, time.monotonic())
                    continue
                self._finish(lane, item, outcome, attempts)
            if again:
                await asyncio.sleep(delay)
            batch = again

    def _finish(self, lane: Lane, item: Pending, outcome: SendOutcome, attempts: int) -> None:
        lane.outstanding -= 1
        now = datetime.now(UTC)
        state, sent_at, not_before, retryable = "failed", None, None, None
        if outcome.kind == "sent":
            state, sent_at = "sent", now
            self.result.sent += 1
            self.guards.spent(item)
        elif outcome.kind == "stop":
            # Not sent: stays queued until the cause is fixed. Refused for a quota that frees at a known time
            # (Alibaba's daily and monthly limits), it is held back until then, and the campaign continues by
            # itself at that time (Guards.continue_at, flows/continuation.py).
            self._stop(f"{outcome.error_code}: {outcome.error_detail}", frees_at=outcome.not_before)
            state, attempts, not_before = "queued", attempts - 1, outcome.not_before
        elif outcome.kind == "unknown":
            state = "unknown"
            self.result.unknown += 1
        elif outcome.kind == "retry" and (outcome.retry_after_s or 0) >= 3600:
            # A per-user deferral (131049): scheduled, never retried at once.
            state, not_before, retryable = "deferred", now + timedelta(seconds=outcome.retry_after_s or 0), True
            self.result.deferred += 1
        else:
            retryable = outcome.kind == "retry"  # retries exhausted: `campaign retry-failed` may try again
            self.result.failed += 1
            key = outcome.error_code or "?"
            self.result.errors[key] = self.result.errors.get(key, 0) + 1
        self.writer.record(Outcome(item.seq, state, outcome.provider_message_id, outcome.error_code,
                                   outcome.error_detail, sent_at, attempts, not_before, retryable))

    def _lane_paused(self, lane: Lane) -> bool:
        """A lane whose number the provider rates RED / FLAGGED stops feeding and sending; the others go on."""
        reason = self.guards.lane_paused(lane.sender)
        if reason and lane.sender not in self.result.lanes_paused:
            self.result.lanes_paused[lane.sender] = reason
            log.error("lane %s paused: %s", lane.sender, reason)
        return reason is not None

    def _stop(self, reason: str, frees_at: datetime | None = None) -> None:
        """Stops every lane; `frees_at`: the provider's quota that stopped it frees then (the campaign continues)."""
        if not self.stop.is_set():
            self.result.stopped_reason = reason
            self.guards.stop_frees_at = frees_at
            until = f" until {frees_at.isoformat()}, when the campaign continues" if frees_at else ""
            log.error("channel stopped: %s; everything unsent stays queued%s", reason, until)
            self.stop.set()
        elif frees_at is not None and self.guards.stop_frees_at is not None:
            # Calls refused at once by the day's and the month's quota: it goes on once both have freed.
            self.guards.stop_frees_at = max(self.guards.stop_frees_at, frees_at)

    async def _reconciler(self) -> None:
        assert self.reconcile_fn is not None
        grace = self.retry.reconcile_grace_s
        while True:
            await asyncio.sleep(1.0)
            if not self.uncertain and not self.leftovers:
                continue
            await self._db(self.reconcile_fn)
            found = await self._db(self.ledger.with_receipt, [*self.uncertain, *self.leftovers])
            now = time.monotonic()
            for message_id, (lane, item, attempts, since) in list(self.uncertain.items()):
                if message_id in found:
                    del self.uncertain[message_id]
                    self.result.reconciled_sent += 1
                    self._finish(lane, item, SendOutcome(kind="sent", provider_message_id=found[message_id]), attempts)
                elif now - since >= grace:
                    del self.uncertain[message_id]
                    if self.stop.is_set():
                        self._finish(lane, item, SendOutcome(kind="unknown", error_code="timeout",
                                                             error_detail="no answer and no receipt"), attempts)
                    else:  # no receipt within the grace: the request never reached the provider
                        self.result.resent_after_timeout += 1
                        self.resending.add(item.seq)
                        await lane.queue.put((item, attempts + 1))
            settled = {m: found[m] for m in self.leftovers if m in found}
            expired = [m for m, since in self.leftovers.items() if m not in found and now - since >= grace]
            if settled or expired:
                await self._db(self.ledger.settle, settled, expired)
                for message_id in (*settled, *expired):
                    del self.leftovers[message_id]
                self.result.reconciled_sent += len(settled)
                self.result.unknown += len(expired)

    def _give_up_uncertain(self) -> None:
        for lane, item, attempts, _ in self.uncertain.values():
            self._finish(lane, item, SendOutcome(kind="unknown", error_code="timeout",
                                                 error_detail="no answer and no receipt"), attempts)
        self.uncertain.clear()

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(min(0.5, self.progress_every_s))
            await self._db(self.guards.check_pause)
            reason = self.guards.paused()
            if reason:
                self._stop(reason)
            if time.monotonic() - self.result.last_progress >= self.progress_every_s:
                self._progress()

    def _progress(self, final: bool = False) -> None:
        self.result.last_progress = time.monotonic()
        info = self.result.progress(time.monotonic() - self.started, final=final)
        info.update(self.guards.describe())
        log.info("dispatch: %(sent)d sent, %(failed)d failed of %(total)d (%(per_s).0f/s)", info)
        if self.on_status:  # to the store, on the ledger's thread (never blocking the event loop)
            self.db.submit(self.on_status, info)
        if self.on_progress:
            self.on_progress(info)


async def dispatch_campaign(
    db: Store, campaign_id: str, channels: dict[str, Channel] | Channel, *,
    rate: RateSpec | None = None, retry: RetrySpec | None = None, guards: Guards | None = None,
    reconcile: Callable[[], Any] | None = None, on_progress: Callable[[dict[str, Any]], None] | None = None,
    progress_every_s: float = 3.0, transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 10.0,
    on_status: Callable[[dict[str, Any]], None] | None = None, senders: list[str] | None = None,
    leases: SenderLeases | None = None,
) -> DispatchResult:
    """Sends every queued message of the campaign (or of its `senders` only); safe to call again after a crash,
    and beside other dispatchers of the same campaign: each sender is sent for only by the dispatcher holding its
    lease (pipeline/dispatch/locks.py; `leases` gives the lease settings and the holder's name, default ones are
    made). A sender held elsewhere is waited for until its holder releases it or its lease expires; its new
    holder first reconciles what the old one left in flight, then sends.

    `channels` maps each sender to its channel (one channel serves all senders when given alone);
    `reconcile` brings receipts into the store (called on the ledger's thread; e.g. an ingest of the
    webhook spool) so timed-out and crashed sends are matched to receipts before any resend; `on_status`
    records progress (called on the ledger's thread); `transport` replaces the network in tests.
    """
    run = _Dispatch(
        db, campaign_id, channels, rate=rate or RateSpec(), retry=retry or RetrySpec(), guards=guards or Guards(),
        reconcile=reconcile, on_progress=on_progress, progress_every_s=progress_every_s, transport=transport,
        timeout_s=timeout_s, on_status=on_status, senders=senders,
        leases=leases or SenderLeases(db, campaign_id),
    )
    return await run.run()
