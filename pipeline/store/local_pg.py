"""A throwaway PostgreSQL server from this machine's binaries, on loopback: for the tests, the benchmarks
and trying the fleet set-up on one machine. PostgreSQL refuses to run as root, so as root it runs as the
`postgres` system user (runuser). Everything it made is removed when it stops.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

USER = "campaign"
# What durable=False changes: writes reach the kernel at every commit, and nothing waits for the disk.
FAST_SETTINGS = "-c fsync=off -c full_page_writes=off"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries here (install Debian's `postgresql`), or the server did not start."""


def binaries() -> Path:
    """The folder holding initdb and pg_ctl: the newest /usr/lib/postgresql/*/bin, else the PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).resolve().parent
    raise PostgresUnavailable("no PostgreSQL server binaries (initdb, pg_ctl): `apt-get install postgresql`")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalPostgres:
    folder: Path
    port: int
    bin_dir: Path

    @property
    def admin_url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database on this server; returns its URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run([str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), *args], check=check)

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl("stop", "-m", mode, "-w", check=False)

    def start(self, timeout_s: float = 60) -> None:
        """(Re)starts the server on its port and waits until it takes connections."""
        self.pg_ctl("start", "-w", "-t", str(int(timeout_s)), "-l", str(self.folder / "server.log"), "-o",
                    f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 {self._settings}")
        _wait_ready(self.port, timeout_s)

    _settings: str = ""


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(_as_postgres(cmd), capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise PostgresUnavailable(f"{Path(cmd[0]).name} failed: {(result.stderr or result.stdout).strip()[-500:]}")
    return result


def _wait_ready(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise PostgresUnavailable(f"PostgreSQL did not listen on port {port} within {timeout_s} s") from None
            time.sleep(0.05)


@contextmanager
def local_postgres(*, durable: bool = False, timeout_s: float = 60) -> Iterator[LocalPostgres]:
    """A running server for the block. `durable=False` (the tests) turns fsync off, which only a crash of the machine
    would notice, and the suite runs faster; benchmarks keep PostgreSQL's defaults. Commits stay synchronous either
    way: tests stop the server itself mid-dispatch (`stop("immediate")`, a crash to PostgreSQL), and with
    synchronous_commit off an acknowledged claim could be lost then, its message sent again on resume — the
    duplicates such a test is there to rule out (seen under load: 1006 sends of 1000)."""
    bin_dir = binaries()
    folder = Path(tempfile.mkdtemp(prefix="campaign-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        _run([str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", USER, "--auth=trust", "-E", "UTF8",
              "--no-sync", "--no-instructions"])
        server = LocalPostgres(folder, _free_port(), bin_dir)
        server._settings = "" if durable else FAST_SETTINGS
        server.start(timeout_s)
        try:
            yield server
        finally:
            server.stop("immediate")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
