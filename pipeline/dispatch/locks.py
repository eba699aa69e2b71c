"""One run per campaign at a time, wherever it runs: a lease row in the store, renewed while its holder lives.

A holder that stops renewing (its process or machine died) loses the lease when it expires; on the same
host, a holder whose process is gone loses it at once (kill -9 frees the campaign as a file lock did). The
row names the holder (flow run, pid, host, since), so a refused run can say which one is running.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pipeline.store import Store, run, utc

LEASE_TTL_S = float(os.environ.get("CAMPAIGN_LEASE_TTL_S", "30"))


class CampaignLocked(RuntimeError):
    """Another run of the same campaign holds the lease; the message names it."""

    def __init__(self, campaign_id: str, holder: LockHolder | None) -> None:
        self.campaign_id, self.holder = campaign_id, holder
        who = holder.describe() if holder else "another process"
        super().__init__(
            f"campaign {campaign_id!r} is already running: {who}. Not starting a second dispatch; wait for "
            f"that run to finish, or stop it with `campaign pause {campaign_id}`"
        )

    def __reduce__(self) -> tuple[type, tuple[str, LockHolder | None]]:
        # Picklable with its fields (Prefect may serialise a run's exception).
        return (CampaignLocked, (self.campaign_id, self.holder))


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
    expires_at = excluded.expires_at
WHERE leases.expires_at < :now OR leases.holder = :holder OR leases.holder = :dead
"""


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
        now = datetime.now(UTC)
        with self.db.write() as conn:
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
                now = datetime.now(UTC)
                renewed = self.db.execute(
                    "UPDATE leases SET expires_at = :expires WHERE name = :name AND holder = :holder",
                    expires=now + timedelta(seconds=self.ttl_s), name=_name(self.campaign_id), holder=self.token)
            except Exception:  # noqa: BLE001 - the store is away for a moment: try again; expiry decides
                continue
            if renewed == 0:
                self.lost.set()
                return

    def release(self) -> None:
        self._stop.set()
        self.db.execute("DELETE FROM leases WHERE name = :name AND holder = :holder", name=_name(self.campaign_id),
                        holder=self.token)


@contextmanager
def campaign_lock(
    db: Store, campaign_id: str, *, flow_run_id: str | None = None, flow_run_name: str | None = None,
    ttl_s: float | None = None,
) -> Iterator[Lease]:
    """Holds the campaign's lease for the block (renewed in the background); raises CampaignLocked at once,
    never waits, when a live holder has it. `lease.holder` says who holds it; `lease.lost` is set if it was
    lost (the store was unreachable for longer than the lease and another run took over)."""
    lease = Lease(db, campaign_id, ttl_s or LEASE_TTL_S)
    lease.take(flow_run_id, flow_run_name)  # a refusal raises here, before anything is touched
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
    params = {"name": _name(campaign_id), "now": datetime.now(UTC)}
    row = run(conn, sql, **params).first() if conn is not None else next(iter(db.rows(sql, **params)), None)
    if row is None or _gone(row[1], row[0]):
        return None
    since, expires = utc(row[2]), utc(row[5])
    return LockHolder(campaign_id, row[0], row[1], since.isoformat(timespec="seconds") if since else "",
                      row[3], row[4], expires.isoformat(timespec="seconds") if expires else None)
