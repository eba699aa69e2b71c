"""The tests' own PostgreSQL (pipeline/store/local_pg.py) keeps what it acknowledged when the server itself is
stopped: the outage tests stop it mid-dispatch and count every message sent once, which holds only if a claim the
store said it committed is still there after the restart."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psycopg

from pipeline.store.local_pg import USER, local_postgres

COMMITS = 100


def _children_named(postmaster: int, name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if ppid == postmaster and name in cmdline:
            found.append(int(entry.name))
    return found


def test_commits_acknowledged_before_an_immediate_stop_are_there_after_the_restart() -> None:
    with local_postgres() as pg:
        conninfo = f"host=127.0.0.1 port={pg.port} user={USER} dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as c:
            c.execute("CREATE TABLE claims (n int)")
            c.execute("CHECKPOINT")
        postmaster = int((pg.folder / "data" / "postmaster.pid").read_text().split()[0])
        writers = _children_named(postmaster, "walwriter")
        assert writers, "no WAL writer found under the server's postmaster"
        # As a busy machine may leave the WAL writer unscheduled for a moment: it writes nothing meanwhile.
        for pid in writers:
            os.kill(pid, signal.SIGSTOP)
        try:
            with psycopg.connect(conninfo) as c:
                for n in range(COMMITS):
                    c.execute("INSERT INTO claims VALUES (%s)", (n,))
                    c.commit()  # acknowledged
        finally:
            for pid in writers:
                os.kill(pid, signal.SIGCONT)
        pg.stop("immediate")  # a crash, to PostgreSQL
        pg.start()
        with psycopg.connect(conninfo) as c:
            assert c.execute("SELECT count(*) FROM claims").fetchone() == (COMMITS,)
