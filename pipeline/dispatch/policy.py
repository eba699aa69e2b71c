"""Dispatch policy beside the engine: backoff, the run's counters, and the guards that may hold a
message back (send window) or stop the channel (budget, messaging limit, operator pause)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.channels.base import SendOutcome
from pipeline.dispatch.ledger import Ledger, Pending
from pipeline.dispatch.schedule import Window, zone
from pipeline.spec import RateSpec, RetrySpec, SendWindow


def backoff_delay(attempt: int, retry: RetrySpec, outcome: SendOutcome, rng: random.Random) -> float:
    """Exponential backoff with jitter (half to full); the provider's Retry-After wins when longer."""
    exp = min(retry.max_delay_s, retry.base_delay_s * 2 ** (attempt - 1))
    return max(rng.uniform(exp / 2, exp), outcome.retry_after_s or 0.0)


@dataclass
class DispatchResult:
    total: int = 0
    sent: int = 0
    failed: int = 0
    deferred: int = 0
    retries: int = 0
    throttled: int = 0
    reconciled_sent: int = 0
    unknown: int = 0
    resent_after_timeout: int = 0
    stopped_reason: str | None = None
    # Messages left queued for a later time (send window, send-at, messaging limit) and when the campaign can go on.
    waiting: int = 0
    continue_at: datetime | None = None
    lanes_paused: dict[str, str] = field(default_factory=dict)  # sender -> why its lane paused (the others went on)
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)
    busiest_second: dict[str, int] = field(default_factory=dict)  # sender -> most sends in any 1-s window, as sent
    last_progress: float = 0.0

    @property
    def per_second(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def progress(self, elapsed_s: float, *, final: bool) -> dict[str, Any]:
        done = self.sent + self.failed + self.deferred
        per_s = done / elapsed_s if elapsed_s > 0 else 0.0
        left = max(0, self.total - done)
        return {
            "sent": self.sent, "failed": self.failed, "deferred": self.deferred, "total": self.total,
            "throttled": self.throttled, "retries": self.retries, "per_s": round(per_s, 1),
            "fraction": done / self.total if self.total else 1.0,
            "eta_s": round(left / per_s, 1) if per_s and not final else None, "final": final,
            "stopped_reason": self.stopped_reason, "lanes_paused": dict(self.lanes_paused),
        }


class Guards:
    """Decides, per message about to be sent, whether it may go now."""

    def __init__(
        self, *, budget_usd: float | None = None, messaging_limit: int | None = None,
        send_window: SendWindow | None = None, pause_check: Callable[[], bool] | None = None,
        watch: Any = None,
    ) -> None:
        self.budget_usd = budget_usd
        self.messaging_limit = messaging_limit
        self.send_window = send_window
        self.pause_check = pause_check  # reads the operator's pause flag (the store), on the ledger's thread
        self.pause_requested = False
        # The template and numbers at the provider (pipeline/dispatch/template_watch.py), polled with the pause flag.
        self.watch = watch
        self.reserved_usd = 0.0
        self.capacity: int | None = None
        self.limit_frees_at: datetime | None = None
        self.stop_frees_at: datetime | None = None  # the run stopped on a provider's quota that frees then
        self.waiting_for_window = 0
        self.next_window_at: datetime | None = None
        self._window = Window(send_window) if send_window else None

    def prepare(self, ledger: Ledger, channel: str) -> None:
        """Reads the pause flag and the provider's view (the run stops before sending when either stops it), and
        what earlier sends already used: the rolling 24 h recipients and the spend so far."""
        now = datetime.now(UTC)
        self.check_pause()
        if self.messaging_limit is not None:
            used, frees_at = ledger.recently_messaged(channel, timedelta(hours=24), now)
            self.capacity = max(0, self.messaging_limit - used)
            self.limit_frees_at = frees_at
        if self.budget_usd is not None:
            self.reserved_usd = ledger.spent_usd()

    def admit(self, item: Pending) -> str | None:
        """None: send it; "wait": outside its send window (stays queued); any other text: stop, why."""
        if self._window and not self._inside_window(item.timezone):
            return "wait"
        if self.capacity is not None:
            if self.capacity <= 0:
                when = self.limit_frees_at.isoformat(timespec="minutes") if self.limit_frees_at else "later"
                return (f"messaging limit of {self.messaging_limit} unique recipients per 24 h reached; "
                        f"the rest stays queued and can continue from {when}")
            self.capacity -= 1
        if self.budget_usd is not None:
            if self.reserved_usd + item.est_cost_usd > self.budget_usd + 1e-9:
                return (f"budget of USD {self.budget_usd:.2f} reached (USD {self.reserved_usd:.4f} committed); "
                        "the rest stays queued")
            self.reserved_usd += item.est_cost_usd
        return None

    def spent(self, item: Pending) -> None:
        """A message went out: its cost was already reserved by `admit`."""

    def check_pause(self) -> None:
        """Reads the pause flag (blocking: call it off the event loop)."""
        if self.pause_check is not None:
            self.pause_requested = self.pause_check()
        if self.watch is not None:
            self.watch.poll()

    def paused(self) -> str | None:
        if self.pause_requested:
            return "paused by the operator (`campaign resume` continues)"
        return self.watch.reason if self.watch is not None else None

    def lane_paused(self, sender: str) -> str | None:
        """Why this sender's lane must not send now (its number at the provider), or None."""
        return self.watch.lane_paused(sender) if self.watch is not None else None

    def lane_rate(self, sender: str, rate: RateSpec) -> RateSpec:
        """The lane's rate: slowed for a number the provider rates YELLOW."""
        factor = self.watch.lane_factor(sender) if self.watch is not None else 1.0
        return rate if factor == 1.0 else rate.model_copy(update={"max_per_second": rate.max_per_second * factor})

    def _inside_window(self, timezone: str | None) -> bool:
        assert self._window is not None
        tz, now = zone(timezone), datetime.now(UTC)
        if self._window.inside(tz, now):
            return True
        self.waiting_for_window += 1
        opens = self._window.next_opening(tz, now)
        if opens is not None and (self.next_window_at is None or opens < self.next_window_at):
            self.next_window_at = opens
        return False

    def still_open(self, item: Pending) -> bool:
        """Checked again just before a claimed message leaves: its window may have closed while it waited."""
        return self._window is None or self._inside_window(item.timezone)

    def continue_at(self, ledger: Ledger, stopped_reason: str | None) -> datetime | None:
        """When the messages still queued can go: the next window opening, the next send-at release, (stopped
        by the messaging limit) when the limit frees, or (stopped by a provider's quota, `stop_frees_at`) when the
        quota does; None when nothing waits for a time (blocking: off the loop)."""
        limited = bool(stopped_reason and stopped_reason.startswith("messaging limit"))
        if stopped_reason and not limited:
            # Stopped by the operator, the budget or the provider: a person decides when it goes on; by a quota that
            # frees at a known time, then (a run in a closed window then waits for the window by itself).
            return self.stop_frees_at
        times = [t for t in (self.next_window_at, ledger.next_release(datetime.now(UTC))) if t is not None]
        if limited and self.limit_frees_at is not None:
            times.append(self.limit_frees_at)
        return min(times, default=None)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        if self.waiting_for_window:
            info["waiting_for_window"] = self.waiting_for_window
            info["next_window_at"] = self.next_window_at.isoformat() if self.next_window_at else None
        if self.budget_usd is not None:
            info["budget_committed_usd"] = round(self.reserved_usd, 6)
        if self.capacity is not None:
            info["messaging_limit_left"] = self.capacity
        return info

