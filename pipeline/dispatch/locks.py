"""One run per campaign at a time, wherever it runs: a lease row in the store, renewed while its holder lives.

A holder that stops renewing (its process or machine died) loses the lease when it expires; on the same
host, a holder whose process is gone loses it at once (kill -9 frees the campaign as a file lock did). The
row names the holder (flow run, pid, host, since), so a refused run can say which one is running.

Expiry is by the store's clock on PostgreSQL (`_store_now`): the holders of a fleet run on several machines, and a
machine whose clock runs ahead would otherwise see a live lease as expired and take it over. A SQLite store is one
file on one machine, whose processes share its clock.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection

from pipeline.settings import seconds_setting
from pipeline.store import Store, run, utc

LEASE_TTL_S = 30.0  # CAMPAIGN_LEASE_TTL_S


def lease_ttl_s() -> float:
    return seconds_setting("CAMPAIGN_LEASE_TTL_S", LEASE_TTL_S)


def lease_renew_s() -> float | None:
    """CAMPAIGN_LEASE_RENEW_S, or None: a third of the TTL."""
    return seconds_setting("CAMPAIGN_LEASE_RENEW_S", None)


class CampaignLocked(RuntimeError):
    """Another run of the same campaign holds the lease; the message names it."""

    def __init__(self, campaign_id: str, holder: LockHolder | None, waited_s: float = 0.0) -> None:
        self.campaign_id, self.holder, self.waited_s = campaign_id, holder, waited_s
        who = holder.describe() if holder else "another process"
        waited = f" (still, after waiting {waited_s:.0f} s for it)" if waited_s else ""
        super().__init__(
            f"campaign {campaign_id!r} is already running{waited}: {who}. Not starting a second dispatch; wait for "
            f"that run to finish, or stop it with `campaign pause {campaign_id}`"
        )

    def __reduce__(self) -> tuple[type, tuple[str, LockHolder | None, float]]:
        # Picklable with its fields (Prefect may serialise a run's exception).
        return (CampaignLocked, (self.campaign_id, self.holder, self.waited_s))


class LeaseLost(RuntimeError):
    """The lease expired and another run took it: this run must stop sending."""


@dataclass(frozen=True)
class LockHolder:
    campaign_id: str
    pid: int
    host: str
    since: str  # ISO 8601, UTC
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    expires_at: str | None = field(default=None, compare=False)

    def describe(self) -> str:
        run_ = ""
        if self.flow_run_id:
            name = f"{self.flow_run_name!r} " if self.flow_run_name else ""
            run_ = f"flow run {name}({self.flow_run_id}), "
        until = f", lease until {self.expires_at}" if self.expires_at else ""
        return f"{run_}pid {self.pid} on {self.host}, since {self.since}{until}"


def _name(campaign_id: str) -> str:
    return f"campaign:{campaign_id}"


_TAKE = """
INSERT INTO leases (name, holder, pid, host, flow_run_id, flow_run_name, since, expires_at)
VALUES (:name, :holder, :pid, :host, :flow_run_id, :flow_run_name, :now, :expires)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, pid = excluded.pid, host = excluded.host,
    flow_run_id = excluded.flow_run_id, flow_run_name = excluded.flow_run_name, since = excluded.since,
    expires_at = excluded.expires_at, cap_checked_at = NULL
WHERE leases.expires_at < :now OR leases.holder = :holder OR leases.holder = :dead
"""


def _store_now(conn: Connection) -> datetime:
    """Now, by the store's clock on PostgreSQL (the transaction's start), else this machine's."""
    if conn.dialect.name == "postgresql":
        return utc(run(conn, "SELECT now()").scalar()) or datetime.now(UTC)
    return datetime.now(UTC)


def _gone(host: str, pid: int | None) -> bool:
    """A holder on this host whose process no longer exists."""
    if host != socket.gethostname() or not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Lease:
    """A campaign's lease as its holder sees it: taken, renewed in the background, released."""

    def __init__(self, db: Store, campaign_id: str, ttl_s: float) -> None:
        self.db, self.campaign_id, self.ttl_s = db, campaign_id, ttl_s
        self.token = secrets.token_hex(8)
        self.lost = threading.Event()
        self._stop = threading.Event()

    def take(self, flow_run_id: str | None, flow_run_name: str | None) -> LockHolder:
        with self.db.write() as conn:
            now = _store_now(conn)
            row = run(conn, "SELECT holder, host, pid FROM leases WHERE name = :name",
                      name=_name(self.campaign_id)).first()
            dead = row[0] if row is not None and _gone(row[1], row[2]) else ""
            params = {"name": _name(self.campaign_id), "holder": self.token, "pid": os.getpid(),
                      "host": socket.gethostname(), "flow_run_id": flow_run_id, "flow_run_name": flow_run_name,
                      "now": now, "expires": now + timedelta(seconds=self.ttl_s), "dead": dead}
            if run(conn, _TAKE, **params).rowcount == 0:
                raise CampaignLocked(self.campaign_id, current_holder(self.db, self.campaign_id, conn=conn))
        self.holder = LockHolder(self.campaign_id, os.getpid(), socket.gethostname(),
                                 now.isoformat(timespec="seconds"), flow_run_id, flow_run_name)
        return self.holder

    def renew_until_released(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                with self.db.write() as conn:
                    expires = _store_now(conn) + timedelta(seconds=self.ttl_s)
                    renewed = run(conn, "UPDATE leases SET expires_at = :expires WHERE name = :name "
                                        "AND holder = :holder", expires=expires, name=_name(self.campaign_id),
                                  holder=self.token).rowcount
            except Exception:  # noqa: BLE001 - the store is away for a moment: try again; expiry decides
                continue
            if renewed == 0:
                self.lost.set()
                return

    def release(self) -> None:
        self._stop.set()
        self.db.execute("DELETE FROM leases WHERE name = :name AND holder = :holder", name=_name(self.campaign_id),
                        holder=self.token)


def take_within(lease: Lease, flow_run_id: str | None, flow_run_name: str | None, wait_s: float,
                on_wait: Callable[[LockHolder | None], None] | None = None) -> LockHolder:
    """Takes the lease, trying again for at most `wait_s` s while a live holder has it (then CampaignLocked, saying
    how long it waited); `on_wait` is told who holds it, once, when the first try is refused."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return lease.take(flow_run_id, flow_run_name)
        except CampaignLocked as refused:
            left = deadline - time.monotonic()
            if left <= 0:
                raise (CampaignLocked(lease.campaign_id, refused.holder, wait_s) if wait_s else refused) from None
            if on_wait is not None:
                on_wait(refused.holder)
                on_wait = None
            # The holder renews every ttl/3; trying at that pace (at most each second) finds it free soon enough.
            time.sleep(min(left, max(0.2, min(1.0, lease.ttl_s / 3))))


@contextmanager
def campaign_lock(
    db: Store, campaign_id: str, *, flow_run_id: str | None = None, flow_run_name: str | None = None,
    ttl_s: float | None = None, wait_s: float = 0.0, on_wait: Callable[[LockHolder | None], None] | None = None,
) -> Iterator[Lease]:
    """Holds the campaign's lease for the block (renewed in the background); when a live holder has it, raises
    CampaignLocked at once, or after trying for `wait_s` seconds (see take_within). `lease.holder` says who holds
    it; `lease.lost` is set if it was lost (the store was unreachable for longer than the lease and another run
    took over)."""
    lease = Lease(db, campaign_id, ttl_s or lease_ttl_s())
    take_within(lease, flow_run_id, flow_run_name, wait_s, on_wait)  # a refusal raises here, before anything else
    renewer = threading.Thread(target=lease.renew_until_released, name=f"lease-{campaign_id}", daemon=True)
    renewer.start()
    try:
        yield lease
    finally:
        lease.release()
        renewer.join(timeout=5)


def current_holder(db: Store, campaign_id: str, *, conn=None) -> LockHolder | None:  # noqa: ANN001
    """Who runs the campaign now (a live lease), or None (for status commands)."""
    sql = ("SELECT pid, host, since, flow_run_id, flow_run_name, expires_at FROM leases "
           "WHERE name = :name AND expires_at >= :now")
    if conn is not None:
        row = run(conn, sql, name=_name(campaign_id), now=_store_now(conn)).first()
    else:
        with db.read() as own:
            row = run(own, sql, name=_name(campaign_id), now=_store_now(own)).first()
    if row is None or _gone(row[1], row[0]):
        return None
    since, expires = utc(row[2]), utc(row[5])
    return LockHolder(campaign_id, row[0], row[1], since.isoformat(timespec="seconds") if since else "",
                      row[3], row[4], expires.isoformat(timespec="seconds") if expires else None)


# --- one dispatcher per sender -------------------------------------------------------------------------------
# A campaign's senders may be dispatched by several processes and machines at once (the fleet: one group of
# senders per Prefect flow run), but each sender by exactly one of them: its rate limiter lives in that
# dispatcher, so a number's rate holds only if nobody else sends as it. Same lease rows, one per (campaign,
# sender), taken in a transaction, renewed every CAMPAIGN_LEASE_RENEW_S (default a third of the TTL).


def sender_lease_name(campaign_id: str, sender: str) -> str:
    return f"sender:{campaign_id}:{sender}"


class SenderLeases:
    """The senders of one campaign that this dispatcher holds: `take` what is free (or expired, or held by a dead
    process on this host), renewed by `renewing()`'s thread; a sender whose renewal finds another holder (this
    one stopped renewing for longer than the TTL) moves from `held` to `lost` and must not be sent for again."""

    def __init__(self, db: Store, campaign_id: str, *, ttl_s: float | None = None, renew_s: float | None = None,
                 flow_run_id: str | None = None, flow_run_name: str | None = None) -> None:
        self.db, self.campaign_id = db, campaign_id
        self.ttl_s = ttl_s or lease_ttl_s()
        self.renew_s = renew_s or lease_renew_s() or self.ttl_s / 3
        if self.renew_s >= self.ttl_s:
            raise ValueError(f"the lease renewal ({self.renew_s:g} s) must come before it expires ({self.ttl_s:g} s)")
        self.flow_run_id, self.flow_run_name = flow_run_id, flow_run_name
        self.token = secrets.token_hex(8)
        self.held: set[str] = set()
        self.lost: set[str] = set()
        self._guard = threading.Lock()
        self._stop = threading.Event()

    def take(self, senders: list[str]) -> list[str]:
        """Takes, in one transaction, every sender of `senders` whose lease is free; returns those taken now."""
        wanted = [s for s in senders if s not in self.held and s not in self.lost]
        if not wanted:
            return []
        taken = []
        with self.db.write() as conn:
            now = _store_now(conn)
            for sender in wanted:
                name = sender_lease_name(self.campaign_id, sender)
                row = run(conn, "SELECT holder, host, pid FROM leases WHERE name = :name", name=name).first()
                dead = row[0] if row is not None and _gone(row[1], row[2]) else ""
                params = {"name": name, "holder": self.token, "pid": os.getpid(), "host": socket.gethostname(),
                          "flow_run_id": self.flow_run_id, "flow_run_name": self.flow_run_name, "now": now,
                          "expires": now + timedelta(seconds=self.ttl_s), "dead": dead}
                if run(conn, _TAKE, **params).rowcount:
                    taken.append(sender)
        with self._guard:
            self.held.update(taken)
        return taken

    def renew(self) -> list[str]:
        """Extends every held lease; returns the senders lost (another dispatcher holds them now)."""
        with self._guard:
            held = sorted(self.held)
        if not held:
            return []
        with self.db.write() as conn:
            kept = {r[0] for r in run(
                conn, "UPDATE leases SET expires_at = :expires WHERE name IN :names AND holder = :holder "
                      "RETURNING name", expires=_store_now(conn) + timedelta(seconds=self.ttl_s), holder=self.token,
                names=[sender_lease_name(self.campaign_id, s) for s in held])}
        lost = [s for s in held if sender_lease_name(self.campaign_id, s) not in kept]
        if lost:
            with self._guard:
                self.held.difference_update(lost)
                self.lost.update(lost)
        return lost

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                self.renew()
            except Exception:  # noqa: BLE001 - the store is away for a moment: try again; expiry decides
                continue

    @contextmanager
    def renewing(self) -> Iterator[SenderLeases]:
        """Renews the held leases in a thread for the block, and releases them (all of them) after it."""
        self._stop.clear()
        renewer = threading.Thread(target=self._renew_until_stopped, name=f"sender-leases-{self.campaign_id}",
                                   daemon=True)
        renewer.start()
        try:
            yield self
        finally:
            self._stop.set()
            renewer.join(timeout=self.renew_s + 10)
            self.release()

    def release(self) -> None:
        with self._guard:
            held, self.held = sorted(self.held), set()
        if held:
            self.db.execute("DELETE FROM leases WHERE name IN :names AND holder = :holder", holder=self.token,
                            names=[sender_lease_name(self.campaign_id, s) for s in held])


def sender_holders(db: Store, campaign_id: str) -> dict[str, LockHolder]:
    """Who dispatches which sender of the campaign now (live leases only)."""
    prefix = sender_lease_name(campaign_id, "")
    with db.read() as conn:
        rows = run(conn, "SELECT name, pid, host, since, flow_run_id, flow_run_name, expires_at FROM leases "
                         "WHERE name LIKE :prefix AND expires_at >= :now", prefix=prefix + "%",
                   now=_store_now(conn)).all()
    holders = {}
    for name, pid, host, since, run_id, run_name, expires in rows:
        if not name.startswith(prefix) or _gone(host, pid):  # LIKE's `_` matches any character
            continue
        since_, expires_ = utc(since), utc(expires)
        holders[name[len(prefix):]] = LockHolder(
            campaign_id, pid, host, since_.isoformat(timespec="seconds") if since_ else "", run_id, run_name,
            expires_.isoformat(timespec="seconds") if expires_ else None)
    return holders


_CAP_CHECKS = 0x6361705F636B  # PostgreSQL advisory lock key of the cap checks ("cap_ck")


def cap_checked_in_turn(db: Store, campaign_id: str) -> list[str]:
    """Marks the campaign's running dispatch (its lease) as having checked the frequency cap, and returns the other
    campaigns whose running dispatch checked it before and still hold their lease. One check at a time (SQLite's
    write lock; PostgreSQL's advisory lock for the transaction): of two runs starting together, the second counts
    what the first is about to send and the first does not count the second's, so exactly one of them sends."""
    with db.write() as conn:
        if conn.dialect.name == "postgresql":
            run(conn, "SELECT pg_advisory_xact_lock(:key)", key=_CAP_CHECKS)
        now = _store_now(conn)
        # A live sender lease counts too: a dispatch takes them only after its own check, and a fleet's groups go on
        # sending on their workers while they hold them, even when the run that started them is gone.
        ahead = run(conn, "SELECT name FROM leases WHERE expires_at > :now AND ((name LIKE 'campaign:%' "
                          "AND cap_checked_at IS NOT NULL) OR name LIKE 'sender:%')", now=now)
        campaigns = {_campaign_of(name) for (name,) in ahead.all()} - {campaign_id}
        run(conn, "UPDATE leases SET cap_checked_at = :now WHERE name = :ours", ours=_name(campaign_id), now=now)
    return sorted(campaigns)


def _campaign_of(lease: str) -> str:
    """The campaign of a lease's name: campaign:<id>, or sender:<id>:<sender> (sender_lease_name)."""
    if lease.startswith("sender:"):
        return lease.removeprefix("sender:").rsplit(":", 1)[0]
    return lease.removeprefix("campaign:")


def cap_check_over(db: Store, campaign_id: str) -> None:
    """The run's dispatch has returned: what it left queued (a budget stop, a pause, a window closed) is not about to
    be sent, so later cap checks no longer count it (the lease itself is held through receipts and the report)."""
    db.execute("UPDATE leases SET cap_checked_at = NULL WHERE name = :name", name=_name(campaign_id))
