"""Injected faults for the WhatsApp sandbox: the failures a dispatcher has to survive.

Kinds (all off by default):
- `5xx`: HTTP 503 with Meta's code 2 ("temporary downtime or overload") or HTTP 500 with code
  131000 ("unknown error"), answered *before* acceptance: the message is not sent.
- `timeout_drop`: the request is held without being accepted until the client gives up (or
  `timeout_delay_s` passes, then it is answered 503 / code 2). The message is not sent.
- `timeout_after_accept`: the message *is* accepted (counted, webhooks scheduled) but the 200
  answer is held until the client gives up or `timeout_delay_s` passes. A client that retries
  after its timeout sends the message twice, which the sandbox counts as a duplicate.
- `burst_429`: for `burst_429_for_s` seconds starting `burst_429_at_s` after the first well-formed
  send request, every well-formed send is answered 429 / code 130429.

The draw for the n-th well-formed send request is a pure function of (seed, n): a run replays
the same fault sequence, and a retry of a faulted message is a new draw that may succeed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal["5xx", "timeout_drop", "timeout_after_accept", "burst_429"]
FAULT_KINDS: tuple[FaultKind, ...] = ("5xx", "timeout_drop", "timeout_after_accept", "burst_429")

# (HTTP status, code, message, details); public tables map 131000 to 500 and 2 to 503 (docs/providers.md §1.4).
SERVER_ERRORS: tuple[tuple[int, int, str, str], ...] = (
    (503, 2, "(#2) Service temporarily unavailable", "Temporary due to downtime or due to being overloaded."),
    (500, 131000, "(#131000) Something went wrong", "Message failed to send due to an unknown error."),
)
THROUGHPUT_ERROR: tuple[int, int, str, str] = (
    429, 130429, "(#130429) Rate limit hit", "Cloud API message throughput has been reached.",
)


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    status: int = 0  # HTTP status of the answer (0 for timeout_after_accept: 200 after the hold)
    code: int = 0  # Meta error code of the answer (0 for timeout_after_accept)
    message: str = ""
    details: str = ""


_DROP = Fault("timeout_drop", *SERVER_ERRORS[0])
_AFTER_ACCEPT = Fault("timeout_after_accept")
_BURST = Fault("burst_429", *THROUGHPUT_ERROR)
_SERVER = tuple(Fault("5xx", *error) for error in SERVER_ERRORS)


def uniform(seed: int, n: int) -> tuple[float, float]:
    """Two independent uniform draws in [0, 1) for request number `n` under `seed`."""
    digest = hashlib.blake2b(f"{seed}|fault|{n}".encode(), digest_size=16).digest()
    return int.from_bytes(digest[:7], "big") / 2**56, int.from_bytes(digest[7:14], "big") / 2**56


class FaultInjector:
    """Decides, per well-formed send request, whether and how it fails. The caller counts a fault in
    `counts` when it applies it (a timeout_after_accept draw that the throughput limit refuses
    first is not injected)."""

    def __init__(
        self, *, seed: int, fault_5xx_rate: float = 0.0, timeout_drop_rate: float = 0.0,
        timeout_after_accept_rate: float = 0.0, burst_429_at_s: float | None = None, burst_429_for_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seed = seed
        self._cut_5xx = fault_5xx_rate
        self._cut_drop = fault_5xx_rate + timeout_drop_rate
        self._cut_after = self._cut_drop + timeout_after_accept_rate
        self._burst_at = burst_429_at_s or 0.0
        self._burst_for = burst_429_for_s
        self._clock = clock
        self._draws = self._cut_after > 0
        self._burst_pending = burst_429_at_s is not None and burst_429_for_s > 0
        self._burst_window: tuple[float, float] | None = None  # set at the first request
        self.requests = 0  # well-formed send requests drawn for (the per-request counter)
        self.counts: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)

    @property
    def enabled(self) -> bool:
        return self._draws or self._burst_pending or self._burst_window is not None

    def draw(self) -> Fault | None:
        """The fault for the next well-formed send request, or None."""
        if self._burst_pending:  # the first request starts the burst clock
            self._burst_pending = False
            start = self._clock() + self._burst_at
            self._burst_window = (start, start + self._burst_for)
        window = self._burst_window
        if window is not None:
            now = self._clock()
            if window[0] <= now < window[1]:
                return _BURST
            if now >= window[1]:
                self._burst_window = None
        if not self._draws:
            return None
        n = self.requests
        self.requests += 1
        return self.fault_for(*uniform(self.seed, n))

    def injected(self, fault: Fault) -> None:
        self.counts[fault.kind] += 1

    def fault_for(self, u: float, v: float) -> Fault | None:
        if u >= self._cut_after:
            return None
        if u < self._cut_5xx:
            return _SERVER[0] if v < 0.5 else _SERVER[1]
        if u < self._cut_drop:
            return _DROP
        return _AFTER_ACCEPT

    def sequence(self, count: int) -> list[Fault | None]:
        """What the first `count` draws give (burst aside), without consuming them: for tests."""
        return [self.fault_for(*uniform(self.seed, n)) for n in range(count)]
