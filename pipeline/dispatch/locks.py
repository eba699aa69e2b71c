"""One run per campaign at a time: an exclusive lock file beside the ledger, released by the kernel on a crash.

The holder writes who it is (flow run, pid, host, since) into the file, so a refused run can name the one
that is running. `flock` locks belong to the open file, so a killed process (kill -9, a lost worker) never
leaves a stale lock behind, and the file itself is never deleted (deleting would race a new holder).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path


class CampaignLocked(RuntimeError):
    """Another run of the same campaign holds the lock; the message names it."""

    def __init__(self, campaign_id: str, holder: LockHolder | None, path: Path) -> None:
        self.campaign_id, self.holder, self.path = campaign_id, holder, path
        who = holder.describe() if holder else "another process (it has not written its name yet)"
        super().__init__(
            f"campaign {campaign_id!r} is already running: {who}. Not starting a second dispatch; wait for "
            f"that run to finish, or stop it with `campaign pause {campaign_id}` (lock file {path})"
        )

    def __reduce__(self) -> tuple[type, tuple[str, LockHolder | None, Path]]:
        # Picklable with its fields (Prefect may serialise a run's exception).
        return (CampaignLocked, (self.campaign_id, self.holder, self.path))


@dataclass(frozen=True)
class LockHolder:
    campaign_id: str
    pid: int
    host: str
    since: str  # ISO 8601, UTC
    flow_run_id: str | None = None
    flow_run_name: str | None = None

    def describe(self) -> str:
        run = ""
        if self.flow_run_id:
            name = f"{self.flow_run_name!r} " if self.flow_run_name else ""
            run = f"flow run {name}({self.flow_run_id}), "
        return f"{run}pid {self.pid} on {self.host}, since {self.since}"


def lock_path(db_path: Path | str, campaign_id: str) -> Path:
    """The campaign's lock file, beside its pause flag (pipeline.dispatch.operations.control_paths)."""
    return Path(db_path).parent / "control" / f"{campaign_id}.lock"


@contextmanager
def campaign_lock(
    db_path: Path | str, campaign_id: str, *, flow_run_id: str | None = None, flow_run_name: str | None = None
) -> Iterator[LockHolder]:
    """Holds the campaign's lock for the duration of the block; raises CampaignLocked at once (never waits)
    when another process, or another block in this process, holds it."""
    path = lock_path(db_path, campaign_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise CampaignLocked(campaign_id, _read_holder(fd), path) from None
        holder = LockHolder(
            campaign_id=campaign_id, pid=os.getpid(), host=socket.gethostname(),
            since=datetime.now(UTC).isoformat(timespec="seconds"), flow_run_id=flow_run_id,
            flow_run_name=flow_run_name,
        )
        _write(fd, json.dumps(asdict(holder)).encode())
        try:
            yield holder
        finally:
            _write(fd, b"")  # the next reader finds no stale name while nobody holds the lock
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def current_holder(db_path: Path | str, campaign_id: str) -> LockHolder | None:
    """Who runs the campaign now, or None when nobody holds its lock (for status commands)."""
    path = lock_path(db_path, campaign_id)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _write(fd: int, data: bytes) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _read_holder(fd: int) -> LockHolder | None:
    # The holder writes its name just after taking the lock: give it a moment before saying "unknown".
    for _ in range(20):
        raw = os.pread(fd, 4096, 0)
        if raw:
            try:
                return LockHolder(**json.loads(raw))
            except (ValueError, TypeError):
                pass  # caught mid-write
        time.sleep(0.01)
    return None
