"""The send history (pipeline/audience/send_history.py): each closed hour's sends per channel kept as a blob, which the
frequency cap reads instead of the outbox. On SQLite and PostgreSQL: the cap counts the same with and without it,
every change to a closed hour's sends (reconciled, retried, moved, deleted, imported) deletes that hour's blob so
the next cap sees the change, the open hour stays in the outbox, and a store that cannot be written still caps."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from pipeline import store
from pipeline.audience import send_history, send_sums
from pipeline.audience.frequency import _read_outbox, capped_recipients
from pipeline.spec import FrequencyCap

NOW = datetime.now(UTC)
CAP = FrequencyCap(max=2, per="7d", channels=["whatsapp", "chatapp"], categories=["marketing"])


def _insert(db: store.Store, rows: list[tuple]) -> None:
    """(message id, campaign, recipient, channel, category, state, sent_at) rows into the outbox."""
    with db.write() as conn:
        store.run_many(conn, "INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, "
                             "category, payload_json, state, queued_at, sent_at) VALUES (:m, :c, :seq, :k, :ch, 'S1', "
                             ":cat, '{}', :state, :at, :at)",
                       [{"m": m, "c": c, "seq": i, "k": k, "ch": ch, "cat": cat, "state": state, "at": at}
                        for i, (m, c, k, ch, cat, state, at) in enumerate(rows)])


def _a_twice_b_once(db: store.Store, at: datetime, second: str = "sent") -> tuple[str, str]:
    """m1 and m2 to a (WhatsApp and Chat App, m2 `second`), m3 to b, all at `at`; returns (a, b)."""
    a, b = "+447400100001", "+447400100002"
    _insert(db, [("m1", "c1", a, "whatsapp", "marketing", "sent", at),
                 ("m2", "c2", a, "chatapp", "marketing", second, at),
                 ("m3", "c1", b, "whatsapp", "marketing", "sent", at)])
    return a, b


def _random_history(seed: int, n: int) -> list[tuple]:
    rng = random.Random(seed)
    keys = [f"+4474001{i:05d}" for i in range(40)] + ["ann@example.test", "7100000000000001", "+0123"]
    return [(f"m{i}", rng.choice(["c1", "c2", "c3"]), rng.choice(keys), rng.choice(["whatsapp", "chatapp", "sms"]),
             rng.choice(["marketing", "marketing", "utility", None]), rng.choice(["sent", "sent", "unknown", "failed"]),
             NOW - timedelta(minutes=rng.randrange(0, 9 * 24 * 60))) for i in range(n)]


def _from_outbox(db: store.Store, cap: FrequencyCap, exclude: str | None = None) -> set[str]:
    """The cap counted from the outbox alone (the window and everything after it)."""
    keys = _read_outbox(db, cap, [(NOW - cap.window, datetime(9999, 1, 1, tzinfo=UTC), tuple(cap.channels))],
                        {c: {exclude} if exclude else set() for c in cap.channels})
    counts = keys.value_counts()
    return set(counts.filter(counts["count"] >= cap.max)["key"].to_list())


def _blobs(db: store.Store) -> int:
    return db.scalar("SELECT count(*) FROM send_history")


@pytest.mark.parametrize("exclude", [None, "c2"])
def test_the_cap_from_the_history_is_the_cap_from_the_outbox(db: store.Store, exclude: str | None) -> None:
    _insert(db, _random_history(7, 3_000))
    expected = _from_outbox(db, CAP, exclude)
    assert len(expected) > 10
    assert capped_recipients(db, CAP, now=NOW, exclude_campaign=exclude) == expected
    built = _blobs(db)
    assert built >= 2 * (7 * 24 - 2)  # every closed hour of the week, both channels (empty hours too)
    # Read again: from the blobs now, the same.
    assert capped_recipients(db, CAP, now=NOW, exclude_campaign=exclude) == expected
    assert _blobs(db) == built
    stored = db.scalar("SELECT sum(sends) FROM send_history")
    assert stored == db.scalar("SELECT count(*) FROM outbox WHERE channel IN ('whatsapp', 'chatapp') AND state IN "
                               "('sent', 'unknown') AND sent_at >= :low AND sent_at < :high",
                               low=send_history.hour_start(min(send_history.hours_between(NOW - CAP.window, NOW))),
                               high=send_history.hour_start(db.scalar("SELECT max(hour) FROM send_history")) +
                               send_history.HOUR)


def test_every_change_to_a_closed_hours_sends_deletes_its_blob(db: store.Store) -> None:
    day_ago = (NOW - timedelta(days=1)).replace(minute=30)
    a, b = _a_twice_b_once(db, day_ago, second="unknown")
    assert capped_recipients(db, CAP, now=NOW) == {a}
    hour = send_history.hour_key(day_ago)
    built = _blobs(db)

    def changed(statement: str, expected: set[str], **params: object) -> None:
        db.execute(statement, **params)
        assert db.scalar("SELECT count(*) FROM send_history WHERE hour = :h", h=hour) < 2, statement
        assert capped_recipients(db, CAP, now=NOW) == expected, statement
        assert _blobs(db) == built  # built again

    # The provider never had it: unknown -> failed.
    changed("UPDATE outbox SET state = 'failed' WHERE message_id = 'm2'", set())
    # Back to a send (a late receipt), then another campaign's send to B imported into the same hour.
    changed("UPDATE outbox SET state = 'sent' WHERE message_id = 'm2'", {a})
    changed("INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, category, payload_json, "
            "state, queued_at, sent_at) VALUES ('m4', 'c9', 1, :k, 'chatapp', 'S1', 'marketing', '{}', 'sent', :at, "
            ":at)", {a, b}, k=b, at=day_ago)
    # A send re-stamped out of the window, and one deleted.
    changed("UPDATE outbox SET sent_at = :at WHERE message_id = 'm4'", {a}, at=NOW - timedelta(days=9))
    changed("DELETE FROM outbox WHERE message_id = 'm1'", set())


def test_a_send_of_the_open_hour_fires_nothing_and_is_counted(db: store.Store) -> None:
    a = "+447400100001"
    _insert(db, [("m1", "c1", a, "whatsapp", "marketing", "sent", NOW - timedelta(days=2))])
    assert capped_recipients(db, CAP, now=NOW) == set()
    built = _blobs(db)
    db.execute("INSERT INTO outbox (message_id, campaign_id, seq, recipient_key, channel, sender, category, "
               "payload_json, state, queued_at) VALUES ('m2', 'c2', 1, :k, 'whatsapp', 'S1', 'marketing', '{}', "
               "'sending', :at)", k=a, at=NOW)
    db.execute("UPDATE outbox SET state = 'sent', sent_at = :at WHERE message_id = 'm2'", at=NOW)
    assert _blobs(db) == built
    assert capped_recipients(db, CAP, now=NOW + timedelta(seconds=1)) == {a}


def test_a_store_that_cannot_be_written_still_caps(tmp_path: Path) -> None:
    path = tmp_path / "campaigns.sqlite"
    with store.connect(path) as db:
        _insert(db, _random_history(11, 500))
        expected = _from_outbox(db, CAP)
    subprocess.run(["chattr", "+i", str(path)], check=True)  # read-only even for root
    try:
        with store.connect(path) as db:
            assert capped_recipients(db, CAP, now=NOW) == expected
            assert _blobs(db) == 0
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_storing_waits_for_an_open_change_only_so_long_and_the_cap_reads_the_outbox_meanwhile(
        db: store.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transaction that has changed a send of a closed hour, still open (SQLite: any write transaction): the cap
    does not wait for it past LOCK_WAIT_S, stores nothing, and counts from the outbox what is committed."""
    monkeypatch.setattr(send_history, "LOCK_WAIT_S", 0.2)
    a = "+447400100001"
    _insert(db, [(f"m{i}", f"c{i}", a, "whatsapp", "marketing", "sent", NOW - timedelta(days=i + 1))
                 for i in range(3)])
    with db.write() as conn:
        store.run(conn, "UPDATE outbox SET state = 'failed' WHERE message_id IN ('m0', 'm1')")
        assert capped_recipients(db, CAP, now=NOW) == {a}  # the change is not committed yet
        assert _blobs(db) == 0
    assert capped_recipients(db, CAP, now=NOW) == set()
    assert _blobs(db) > 0


def test_hours_older_than_the_teams_setting_are_read_from_the_outbox_and_not_kept(
        db: store.Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = tmp_path / "controls.yaml"
    settings.write_text("send_history:\n  keep_days: 2\n")
    monkeypatch.setenv("CAMPAIGN_CONTROLS_FILE", str(settings))
    _insert(db, _random_history(5, 2_000))
    expected = _from_outbox(db, CAP)
    assert capped_recipients(db, CAP, now=NOW) == expected
    oldest = db.scalar("SELECT min(hour) FROM send_history")
    assert send_history.hour_start(oldest) >= NOW - timedelta(days=2, hours=2)
    assert 2 * 2 * 24 - 4 <= _blobs(db) <= 2 * 2 * 24 + 2
    # A blob of an older hour (kept under an earlier setting) goes when the history is next stored.
    with db.write() as conn:
        store.run(conn, "INSERT INTO send_history (hour, channel, sends, data) VALUES ('2020-01-01 00', 'sms', 0, "
                        ":data)", data=send_history.encode(send_history.parse(None)))
    db.execute("DELETE FROM send_history WHERE hour = (SELECT max(hour) FROM send_history)")
    assert capped_recipients(db, CAP, now=NOW) == expected
    assert db.scalar("SELECT min(hour) FROM send_history") == oldest


_COLD_CAP = """
import sys
from pipeline import store
from pipeline.audience.frequency import capped_recipients
from pipeline.spec import FrequencyCap
with store.connect(sys.argv[1]) as db:
    print(len(capped_recipients(db, FrequencyCap(max=2, per="7d", channels=["whatsapp"]))))
print("pandas" in sys.modules, "scipy" in sys.modules)
"""


def test_a_cold_cap_read_imports_neither_pandas_nor_scipy(tmp_path: Path) -> None:
    """A preparation reads the cap in a fresh process: pyarrow's first conversion of a Python value imports pandas when
    it is installed (~0.2 s, holding the interpreter): the blobs are filtered without one."""
    url = f"sqlite:///{tmp_path / 'c.sqlite'}"
    with store.connect(url) as db:
        _insert(db, [(f"m{i}", "c1", "+447400100001", "whatsapp", "marketing", "sent", NOW - timedelta(hours=3 + i))
                     for i in range(3)])
    out = subprocess.run([sys.executable, "-c", _COLD_CAP, url], capture_output=True, text=True, check=True,
                         timeout=120).stdout.split()
    assert out == ["1", "False", "False"]


def _no_blob_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, a read of the send history's blobs fails the test: the counts kept must do."""
    def no_blobs(*args: object, **kwargs: object) -> None:
        raise AssertionError("the blobs were read again")

    monkeypatch.setattr(send_history, "read", no_blobs)


def _sums(db: store.Store) -> list[str]:
    return sorted(cap for (cap,) in db.rows("SELECT cap FROM send_history_sums"))


@pytest.mark.parametrize("exclude", [None, "c2", "c-none"])
def test_the_counts_kept_for_the_next_read_give_the_same_cap(db: store.Store, exclude: str | None,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The first read keeps the week's counts per recipient; the next reads take them instead of the blobs and give
    the cap the outbox gives. A campaign left out that sent nothing in the window shares the row of none left out."""
    _insert(db, _random_history(11, 3_000))
    expected = _from_outbox(db, CAP, exclude)
    assert capped_recipients(db, CAP, now=NOW, exclude_campaign=exclude) == expected
    kept = _sums(db)
    assert len(kept) == 1 and ('"c2"' in kept[0]) == (exclude == "c2")

    _no_blob_reads(monkeypatch)
    assert capped_recipients(db, CAP, now=NOW, exclude_campaign=exclude) == expected
    if exclude != "c2":  # none left out, or one with no send: the same row
        assert capped_recipients(db, CAP, now=NOW) == _from_outbox(db, CAP) == expected
    assert _sums(db) == kept


def test_counts_from_a_blob_stored_again_are_not_used(db: store.Store) -> None:
    """A change to a closed hour deletes its blob; once a read has stored it again (a new version), counts kept from
    the blob before no longer match it, whatever reads next."""
    day_ago = (NOW - timedelta(days=1)).replace(minute=30)
    a, b = _a_twice_b_once(db, day_ago)
    assert capped_recipients(db, CAP, now=NOW) == {a}
    before = db.scalar("SELECT blobs FROM send_history_sums")
    db.execute("UPDATE outbox SET state = 'failed' WHERE message_id = 'm2'")
    hour = send_history.hour_key(day_ago)
    assert send_history.build(db, [hour], ["whatsapp", "chatapp"]) >= 1  # stored again before the cap reads it
    assert capped_recipients(db, CAP, now=NOW) == set()
    assert db.scalar("SELECT blobs FROM send_history_sums") != before
    db.execute("UPDATE outbox SET recipient_key = :k WHERE message_id = 'm3'", k=a)
    assert capped_recipients(db, CAP, now=NOW) == {a}


def test_counts_kept_while_an_hour_has_no_blob_yet_read_that_hour_from_the_outbox(
        db: store.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the ten minutes after an hour closes it is not stored yet: the counts kept meanwhile cover the other hours,
    and the next read takes them and reads that hour from the outbox, a send added to it counted."""
    day_ago = (NOW - timedelta(days=1)).replace(minute=30)
    a = "+447400100001"
    _insert(db, [("m1", "c1", a, "whatsapp", "marketing", "sent", day_ago)])
    hour, build = send_history.hour_key(day_ago), send_history.build
    monkeypatch.setattr(send_history, "build", lambda db, hours, *args: build(db, [h for h in hours if h != hour],
                                                                             *args))
    assert capped_recipients(db, CAP, now=NOW) == set()
    assert len(_sums(db)) == 1 and db.scalar("SELECT count(*) FROM send_history WHERE hour = :h", h=hour) == 0
    _insert(db, [("m2", "c2", a, "chatapp", "marketing", "sent", day_ago)])

    _no_blob_reads(monkeypatch)
    assert capped_recipients(db, CAP, now=NOW) == {a}


def test_counts_replaced_by_another_process_between_the_two_reads_are_not_used(
        db: store.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kept row is found by its digest, then its data read: a row another process replaced in between (counted
    from other blobs) is not taken for this one; the cap counts the blobs again."""
    day_ago = (NOW - timedelta(days=1)).replace(minute=30)
    a = "+447400100001"
    _insert(db, [("m1", "c1", a, "whatsapp", "marketing", "sent", day_ago),
                 ("m2", "c2", a, "chatapp", "marketing", "sent", day_ago)])
    assert capped_recipients(db, CAP, now=NOW) == {a}
    rows, nobody = db.rows, send_sums.Counts.of(
        send_history.Sends(pl.Series([], dtype=pl.Int64), pl.Series([], dtype=pl.String), {}))

    def then_replaced(sql: str, **params: object) -> list:
        found = rows(sql, **params)
        if "send_history_sums" in sql:  # meanwhile another process keeps counts of other blobs: no one capped
            db.execute("UPDATE send_history_sums SET blobs = 'other', data = :data", data=send_sums._encode(nobody))
        return found

    monkeypatch.setattr(db, "rows", then_replaced)
    assert capped_recipients(db, CAP, now=NOW) == {a}


def test_caps_that_differ_in_their_window_only_keep_a_row_each(db: store.Store,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A team's 24 h cap and a spec's 7-day cap on the same channels and categories: each keeps its counts, and
    neither replaces the other's (each read would count the blobs again)."""
    _insert(db, _random_history(5, 2_000))
    day = FrequencyCap(max=1, per="24h", channels=["whatsapp", "chatapp"], categories=["marketing"])
    week, today = capped_recipients(db, CAP, now=NOW), capped_recipients(db, day, now=NOW)
    assert len(_sums(db)) == 2

    _no_blob_reads(monkeypatch)
    assert capped_recipients(db, CAP, now=NOW) == week == _from_outbox(db, CAP)
    assert capped_recipients(db, day, now=NOW) == today == _from_outbox(db, day)


def test_a_new_hour_stored_deletes_the_counts_kept_before(db: store.Store) -> None:
    """Once a newly closed hour is stored every cap's window has moved on: the rows kept before are deleted, so a
    cap no longer used leaves none behind."""
    _insert(db, _random_history(5, 500))
    capped_recipients(db, CAP, now=NOW)
    assert len(_sums(db)) == 1
    hour = send_history.hour_key(NOW - timedelta(days=8, hours=1))  # closed, not stored yet (outside CAP's window)
    _insert(db, [("late", "c1", "+447400100001", "whatsapp", "marketing", "sent", send_history.hour_start(hour))])
    assert send_history.build(db, [hour], ["whatsapp"]) == 1
    assert _sums(db) == []


def test_keeping_the_counts_does_not_wait_for_a_writer_past_the_history_s_wait(
        db: store.Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blobs are stored but the counts not kept yet, and another transaction holds the store's write lock (SQLite)
    or the counts' table (PostgreSQL): the cap is read from the blobs and the preparation waiting on it goes on; the
    counts are kept by a later read."""
    monkeypatch.setattr(send_history, "LOCK_WAIT_S", 0.2)
    _insert(db, _random_history(5, 500))
    expected = capped_recipients(db, CAP, now=NOW)
    db.execute("DELETE FROM send_history_sums")
    done: list[object] = []
    with db.write() as conn:
        if db.dialect == "postgresql":
            store.run(conn, "LOCK TABLE send_history_sums IN EXCLUSIVE MODE")
        else:
            store.run(conn, "DELETE FROM send_history_sums")
        reader = threading.Thread(target=lambda: done.append(capped_recipients(db, CAP, now=NOW)))
        reader.start()
        reader.join(timeout=15)  # the store's own busy timeout is 30 s
        assert done == [expected]
    assert _sums(db) == []
    capped_recipients(db, CAP, now=NOW)
    assert len(_sums(db)) == 1
