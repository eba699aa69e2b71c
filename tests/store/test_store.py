"""The store itself: URLs, migrations on first use on both databases, and one-line errors for a store
that cannot be used."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from pipeline import store
from pipeline.store.local_pg import LocalPostgres
from pipeline.store.migrate import HEAD, MIGRATIONS, version
from pipeline.store.schema import metadata
from tests.costs.rows import add_campaign

ROOT = Path(__file__).resolve().parents[2]


def test_a_path_means_sqlite_and_postgres_urls_use_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(store.URL_ENV, raising=False)
    assert store.database_url("data/x.sqlite") == "sqlite:///data/x.sqlite"
    assert store.database_url(None) == "sqlite:///data/campaigns.sqlite"
    assert store.database_url("postgresql://u:secret@h/db").startswith("postgresql+psycopg://u:secret@h/db")
    monkeypatch.setenv(store.URL_ENV, "postgres://u@h:5433/campaigns")
    assert store.database_url(None) == "postgresql+psycopg://u@h:5433/campaigns"
    assert store.shown("postgresql+psycopg://u:secret@h/db") == "postgresql+psycopg://u:***@h/db"
    with pytest.raises(store.StoreError, match="unsupported store URL mysql://u:\\*\\*\\*@h/db"):
        store.database_url("mysql://u:secret@h/db")


def test_a_raw_cursors_error_is_the_same_one_line_store_error(db: store.Store) -> None:
    """Raw driver cursors (the send history's binary read, bulk loads) raise the driver's own errors, which SQLAlchemy
    does not wrap: a lost connection among them is still one line naming the store, and a bug keeps its traceback."""
    if db.dialect == "postgresql":
        import psycopg as driver
    else:
        import sqlite3 as driver
    with pytest.raises(store.StoreError, match="^store .*: the server closed the connection$"):
        with db.read():
            raise driver.OperationalError("the server closed the connection")
    import adbc_driver_manager  # the Arrow reads' and bulk loads' driver

    with pytest.raises(store.StoreError, match="^store .*: connection refused$"):
        with db.read():
            raise adbc_driver_manager.OperationalError("connection refused",
                                                       status_code=adbc_driver_manager.AdbcStatusCode.IO)
    with pytest.raises(driver.IntegrityError), db.write():
        raise driver.IntegrityError("a constraint")
    with pytest.raises(KeyError), db.read():
        raise KeyError("not the store's")


def test_the_migrations_create_exactly_the_declared_schema(db: store.Store) -> None:
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        assert version(conn) == HEAD
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD


def test_a_second_connect_finds_the_schema_current(db_url: str) -> None:
    first = store.connect(db_url)
    first.execute("INSERT INTO suppressions (channel, address, reason, since) VALUES ('sms', '+1', 'stop', :t)",
                  t=__import__("datetime").datetime.now(__import__("datetime").UTC))
    first.close()
    again = store.connect(db_url)
    assert again.scalar("SELECT count(*) FROM suppressions") == 1
    again.close()


def test_processes_starting_together_migrate_a_new_store_once(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    code = f"from pipeline import store; print(store.connect({str(path)!r}).scalar('SELECT count(*) FROM outbox'))"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, results
    assert [out.strip() for out, _ in results] == ["0"] * 4


_OPEN_TOGETHER = """
import multiprocessing, os, sys, time
from sqlalchemy import create_engine
from pipeline.store import dialect

def open_new(path, start):
    while time.time() < start:  # all six ask for the file in the same millisecond
        pass
    engine = create_engine("sqlite:///" + path)
    dialect.prepare_sqlite(engine)
    try:
        with engine.connect() as conn, conn.execution_options(write=True).begin():
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS first (x)")  # as a migration would
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    except Exception as error:
        print(repr(error).splitlines()[0], file=sys.stderr)
        sys.exit(1)

if __name__ == "__main__":
    multiprocessing.set_start_method("fork")
    failed = 0
    for round in range(int(sys.argv[2])):
        start = time.time() + 0.1
        procs = [multiprocessing.Process(target=open_new, args=(os.path.join(sys.argv[1], f"{round}.sqlite"), start))
                 for _ in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        failed += sum(proc.exitcode != 0 for proc in procs)
    print(failed)
"""


def test_processes_opening_a_new_file_together_all_switch_it_to_wal(tmp_path: Path) -> None:
    # The switch to WAL needs the exclusive lock, and SQLite refuses a second process asking for it at once
    # rather than wait (deadlock); without the retry 3-17 of 600 processes failed here with 'locked'.
    out = subprocess.run([sys.executable, "-c", _OPEN_TOGETHER, str(tmp_path), "100"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "0", out.stderr[-2000:]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env=env)


def test_an_unreachable_postgresql_is_one_line_naming_it(postgres_server: LocalPostgres) -> None:
    closed_port = postgres_server.port + 1 if postgres_server.port < 65000 else 1
    out = _cli("status", "welcome", "--db", f"postgresql://campaign:hunter2@127.0.0.1:{closed_port}/nope")
    assert out.returncode == 2
    assert out.stderr.startswith("error: store postgresql+psycopg://campaign:***@127.0.0.1:")
    assert len(out.stderr.strip().splitlines()) == 1 and "hunter2" not in out.stderr
    wrong_db = _cli("status", "welcome", "--db", postgres_server.url("no_such_database"))
    assert wrong_db.returncode == 2 and "no_such_database" in wrong_db.stderr
    assert len(wrong_db.stderr.strip().splitlines()) == 1


def test_a_read_only_sqlite_store_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "campaigns.sqlite"
    with store.connect(path) as db:
        add_campaign(db, "welcome")  # `pause` refuses a campaign the store does not know before it writes
    subprocess.run(["chattr", "+i", str(path)], check=True)  # read-only even for root
    try:
        out = _cli("pause", "welcome", "--db", str(path))
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert out.returncode == 2
    assert out.stderr.startswith(f"error: store sqlite:///{path}: ")
    assert "readonly" in out.stderr or "read-only" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_store_path_in_an_unwritable_place_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    # `db info` creates a store that is not there (status and pause refuse one: tests/dispatch/test_operations.py).
    out = _cli("db", "info", "--db", str(blocker / "sub" / "campaigns.sqlite"))
    assert out.returncode == 2 and out.stderr.startswith("error: store sqlite:///")
    assert len(out.stderr.strip().splitlines()) == 1


def _one_line(out: subprocess.CompletedProcess[str], prefix: str) -> str:
    """The CLI's one-line error (exit 2) after `prefix`."""
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]
    assert out.stderr.startswith(prefix), out.stderr
    return out.stderr.strip()


def test_a_file_that_is_not_a_sqlite_database_is_one_line(tmp_path: Path) -> None:
    import duckdb

    text = tmp_path / "notes.txt"
    text.write_text("not a database, but long enough for SQLite to read its header and refuse it\n" * 2)
    assert _one_line(_cli("status", "welcome", "--db", str(text)), f"error: store sqlite:///{text}: ").endswith(
        ": not a SQLite database")
    ledger = tmp_path / "c.duckdb"
    duckdb.connect(str(ledger)).close()
    said = _one_line(_cli("status", "welcome", "--db", str(ledger)), f"error: store sqlite:///{ledger}: ")
    assert "DuckDB" in said and f"campaign db import {ledger}" in said
    # `campaign run` says so too, before it starts Prefect (whose start-up would print its own lines first).
    out = _cli("run", str(ROOT / "campaigns/welcome.yaml"), "--db", str(ledger))
    assert _one_line(out, f"error: store sqlite:///{ledger}: ") == said and out.stdout == ""


def test_every_command_that_uses_the_store_takes_db() -> None:
    from pipeline.cli.parser import build_parser

    def commands(parser: argparse.ArgumentParser, path: str = "") -> dict[str, argparse.ArgumentParser]:
        found = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found |= commands(sub, f"{path} {name}".strip())
        return found or {path: parser}

    without = sorted(name for name, p in commands(build_parser()).items()
                     if not any("--db" in a.option_strings for a in p._actions))
    assert without == ["demo", "sandbox", "webhooks"]  # the demo's own store; servers that touch none


def test_a_url_that_does_not_parse_is_one_line_without_its_password() -> None:
    out = _cli("status", "welcome", "--db", "postgresql://u:hunter2@127.0.0.1:notaport/db")
    said = _one_line(out, "error: store postgresql://u:***@127.0.0.1:notaport/db: not a valid URL")
    assert "hunter2" not in said


def test_a_store_of_a_newer_version_is_refused_untouched(db_url: str) -> None:
    with store.connect(db_url) as db, db.write() as conn:
        conn.execute(text(f"UPDATE alembic_version SET version_num = '{NEXT}'"))  # as the next version would
        tables = inspect(conn).get_table_names()
    out = _cli("status", "welcome", "--db", db_url)
    said = _one_line(out, f"error: store {store.shown(store.database_url(db_url))}: ")
    assert said.endswith(f"its schema (revision {NEXT}) is newer than this version of the pipeline ({HEAD}): "
                         "upgrade the pipeline")
    with store.connect(db_url, migrate=False) as db, db.read() as conn:
        assert version(conn) == NEXT and inspect(conn).get_table_names() == tables


NEXT = f"{int(HEAD) + 1:04d}"  # the revision the next version of the pipeline would write


def _pg_store(request: pytest.FixtureRequest, tmp_path: Path, *statements: str, campaign: str | None = None) -> str:
    """A fresh PostgreSQL store (holding `campaign`, when given) after `statements` ({db}: its name) run as the
    server's superuser."""
    import psycopg

    from tests.helpers.stores import new_store_url

    url = new_store_url("postgresql", tmp_path, request)
    if campaign is not None:
        with store.connect(url) as db:
            add_campaign(db, campaign)
    server: LocalPostgres = request.getfixturevalue("postgres_server")
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.format(db=url.rsplit("/", 1)[1]))
    return url


def test_a_postgresql_role_without_rights_is_one_line(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = _pg_store(request, tmp_path, 'CREATE ROLE "{db}_reader" LOGIN')
    as_reader = url.replace("//campaign@", f"//{url.rsplit('/', 1)[1]}_reader@")
    said = _one_line(_cli("status", "welcome", "--db", as_reader), "error: store postgresql+psycopg://")
    assert said.endswith(": permission denied for table alembic_version")


def test_a_read_only_postgresql_store_is_one_line(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = _pg_store(request, tmp_path, 'ALTER DATABASE "{db}" SET default_transaction_read_only = on',
                    campaign="welcome")  # `pause` refuses a campaign the store does not know before it writes
    said = _one_line(_cli("pause", "welcome", "--db", url), f"error: store {store.shown(store.database_url(url))}: ")
    assert said.endswith(": the store is read-only")


@pytest.mark.parametrize(("server", "ours"), [("off", "local"), ("on", "on"), ("remote_apply", "remote_apply")])
def test_commits_wait_for_the_disk_whatever_the_server_is_set_to(request: pytest.FixtureRequest, tmp_path: Path,
                                                                  server: str, ours: str) -> None:
    # `off` would let a crash of the server lose a claim it said was committed (tests/store/test_local_postgres.py
    # shows the loss); a setting that also waits for standbys is stronger and stays.
    url = _pg_store(request, tmp_path, f'ALTER DATABASE "{{db}}" SET synchronous_commit = {server}')
    with store.connect(url) as db:
        assert db.scalar("SHOW synchronous_commit") == ours
        with db.write() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == ours


def test_db_info_says_what_a_commit_survives(tmp_path: Path) -> None:
    out = _cli("db", "info", "--db", str(tmp_path / "campaigns.sqlite"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "durability: journal_mode=wal, synchronous=full\n" in out.stdout and "warning" not in out.stdout


def test_db_info_warns_of_a_postgresql_that_does_not_sync(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from pipeline.store.local_pg import local_postgres

    # The session's server is set up as the tests' servers are: fsync and full-page writes off.
    url = _pg_store(request, tmp_path, 'ALTER DATABASE "{db}" SET synchronous_commit = off')
    out = _cli("db", "info", "--db", url)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "durability: synchronous_commit=local, fsync=off, full_page_writes=off\n" in out.stdout
    assert "warning: the server runs with fsync=off, full_page_writes=off: a crash of its machine" in out.stdout
    with local_postgres(durable=True) as server:  # PostgreSQL's defaults
        out = _cli("db", "info", "--db", server.create_database("durable"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "durability: synchronous_commit=on, fsync=on, full_page_writes=on\n" in out.stdout
    assert "warning" not in out.stdout
