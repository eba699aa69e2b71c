"""The group-commit spool (pipeline.receipts.spool): durability before return, batching, rotation, recovery."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import pytest

from pipeline.receipts.spool import (
    Spool,
    SpoolClosed,
    batches_of,
    closed_files,
    decode_body,
    decode_record,
    encode_record,
    lines_table,
)
from tests.helpers.waiting import wait_for_async


def lines_of(paths: list[Path]) -> list[bytes]:
    return [line for p in paths for line in p.read_bytes().splitlines()]


class RecordingSpool(Spool):
    """Remembers how many bytes were on disk at each data fsync."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.synced_sizes: list[int] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _fsync(self, file: IO[bytes]) -> None:
        super()._fsync(file)
        self.synced_sizes.append(os.fstat(file.fileno()).st_size)


def test_append_returns_only_after_its_bytes_are_fsynced(tmp_path: Path) -> None:
    async def run() -> None:
        spool = RecordingSpool(tmp_path)
        written = 0
        for i in range(5):
            record = f'{{"n": {i}}}'.encode()
            await spool.append(record)
            written += len(record) + 1
            # Every byte up to and including this record was on disk when an fsync returned.
            assert spool.synced_sizes and spool.synced_sizes[-1] >= written
        assert spool.fsyncs == 5
        await spool.close()

    asyncio.run(run())
    assert lines_of(closed_files(tmp_path)) == [f'{{"n": {i}}}'.encode() for i in range(5)]


class GatedSpool(Spool):
    """Holds its first batch write until `gate` is set, and remembers how many records each write carried."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.gate = threading.Event()
        self.batch_sizes: list[int] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _write_batch(self, data: bytes) -> None:
        self.batch_sizes.append(data.count(b"\n"))
        if len(self.batch_sizes) == 1:
            assert self.gate.wait(30), "the test never released the first write"
        super()._write_batch(data)


def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    """Group commit, independent of timing: while one write + fsync is under way, every append that comes
    meanwhile waits for the next one, and that one write + fsync carries them all."""
    n = 500

    async def run() -> GatedSpool:
        spool = GatedSpool(tmp_path)
        first = asyncio.create_task(spool.append(b'{"n": 0}'))
        await wait_for_async(lambda: spool.batch_sizes, timeout_s=10, what="the first write to start")
        rest = [asyncio.create_task(spool.append(f'{{"n": {i}}}'.encode())) for i in range(1, n)]
        await wait_for_async(lambda: spool.appends == n, timeout_s=10, what="every append to be queued")
        assert not first.done() and spool.writes == 0  # the first write is still under way
        spool.gate.set()
        await asyncio.gather(first, *rest)
        assert (spool.writes, spool.fsyncs, spool.batch_sizes) == (2, 2, [1, n - 1])
        await spool.close()
        return spool

    spool = asyncio.run(run())
    got = sorted(json.loads(line)["n"] for line in lines_of(closed_files(tmp_path)))
    assert got == list(range(n))
    assert spool.appends == n and spool.fsyncs == spool.writes + spool.rotations  # closing adds the file's last


def test_rotation_by_size_keeps_every_record(tmp_path: Path) -> None:
    async def run() -> None:
        spool = Spool(tmp_path, rotate_after_bytes=64)
        for i in range(20):
            await spool.append(f'{{"record": {i}, "pad": "xx"}}'.encode())  # ~25 bytes with newline
        await spool.close()

    asyncio.run(run())
    files = closed_files(tmp_path)
    assert len(files) >= 5
    assert not list(tmp_path.glob("*.open"))
    assert [json.loads(line)["record"] for line in lines_of(files)] == list(range(20))
    assert files == sorted(files)
    assert all(f.name.startswith("spool-") and f.suffix == ".jsonl" for f in files)


class CountingSpool(Spool):
    """Counts the periodic task's rotation checks, so a test can wait for checks rather than for time."""

    checks = 0

    def rotate_if_due(self) -> Path | None:
        try:
            return super().rotate_if_due()
        finally:
            self.checks += 1


def test_periodic_task_closes_an_old_open_file(tmp_path: Path) -> None:
    async def run() -> None:
        spool = CountingSpool(tmp_path, rotate_after_s=0.05)
        await spool.append(b'{"a": 1}')
        # Appending never closes the file itself (the periodic task is not running yet, so no race with it).
        assert closed_files(tmp_path) == []
        assert len(list(tmp_path.glob("*.open"))) == 1
        spool.start()
        await wait_for_async(lambda: closed_files(tmp_path), timeout_s=10, what="the periodic task to close the file")
        assert len(closed_files(tmp_path)) == 1
        assert not list(tmp_path.glob("*.open"))
        # Idle: three more checks create or close no empty file.
        checked = spool.checks
        await wait_for_async(lambda: spool.checks >= checked + 3, timeout_s=10, what="three more rotation checks")
        assert len(closed_files(tmp_path)) == 1 and not list(tmp_path.glob("*.open"))
        await spool.close()

    asyncio.run(run())


def test_close_rotates_and_refuses_later_appends(tmp_path: Path) -> None:
    async def run() -> None:
        spool = Spool(tmp_path, rotate_after_s=3600)
        spool.start()
        await spool.append(b'{"a": 1}')
        await spool.close()
        assert len(closed_files(tmp_path)) == 1
        with pytest.raises(SpoolClosed):
            await spool.append(b'{"a": 2}')

    asyncio.run(run())


def test_close_with_nothing_written_leaves_no_file(tmp_path: Path) -> None:
    async def run() -> None:
        spool = Spool(tmp_path)
        spool.start()
        await spool.close()

    asyncio.run(run())
    assert list(tmp_path.iterdir()) == []


def test_leftover_open_files_are_closed_on_start(tmp_path: Path) -> None:
    crashed = tmp_path / "spool-20250101T000000.000000Z-000001.jsonl.open"
    crashed.write_bytes(b'{"a": 1}\n{"torn')
    empty = tmp_path / "spool-20250101T000001.000000Z-000002.jsonl.open"
    empty.write_bytes(b"")
    Spool(tmp_path)
    assert [p.name for p in closed_files(tmp_path)] == ["spool-20250101T000000.000000Z-000001.jsonl"]
    assert not list(tmp_path.glob("*.open"))


def test_write_failure_reaches_every_waiter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path)

    def disk_full(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool, "_write_batch", disk_full)

    async def run() -> list[object]:
        return await asyncio.gather(*(spool.append(b"{}") for _ in range(10)), return_exceptions=True)

    results = asyncio.run(run())
    assert len(results) == 10 and all(isinstance(r, OSError) for r in results)


def test_records_must_be_single_lines(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        asyncio.run(Spool(tmp_path).append(b"a\nb"))


def test_a_utf8_body_is_spooled_verbatim() -> None:
    body = '{"object":"whatsapp_business_account","text":"退订 ✓","e":"\\ud83d\\ude00"}'.encode()
    at = datetime(2026, 11, 25, 10, 0, 0, 123456, tzinfo=UTC)
    line = encode_record("whatsapp", body, at)
    assert line == b"v2 2026-11-25T10:00:00.123456Z whatsapp " + body  # the body's bytes, as received
    assert decode_record(line) == ("whatsapp", at, body)
    now = decode_record(encode_record("whatsapp", b"{}"))[1]
    assert now is not None and abs((datetime.now(UTC) - now).total_seconds()) < 5
    assert encode_record("whatsapp", b"{}", datetime(2026, 1, 1, tzinfo=UTC)).startswith(
        b"v2 2026-01-01T00:00:00.000000Z whatsapp ")  # fixed width, whatever the microseconds


@pytest.mark.parametrize("body", [
    '{"text": "退订 ✓"}'.encode() + b"\xff",  # not valid UTF-8 at the end
    b'{"a":\n1}',  # a newline would split the record
    b"{\x00}",
])
def test_other_bodies_become_json_records_that_round_trip(body: bytes) -> None:
    line = encode_record("whatsapp", body)
    assert b"\n" not in line and line.isascii()
    record = json.loads(line)
    assert set(record) == {"provider", "received_at", "body"}
    assert record["provider"] == "whatsapp"
    assert record["received_at"].endswith("+00:00")
    assert decode_body(record["body"]) == body
    provider, received_at, raw = decode_record(line)
    assert (provider, raw) == ("whatsapp", body) and received_at is not None and received_at.tzinfo is not None


def test_decode_record_reads_old_json_records_and_refuses_junk() -> None:
    old = b'{"provider":"whatsapp","received_at":"2025-06-16T00:00:00","body":"{}"}'  # naive time: UTC
    assert decode_record(old) == ("whatsapp", datetime(2025, 6, 16, tzinfo=UTC), b"{}")
    assert decode_record(b'{"provider":"whatsapp","body":"{}"}') == ("whatsapp", None, b"{}")
    for junk in [b"{torn", b"[1]", b'{"provider":"x"}', b'{"body":"{}"}', b"v2 nonsense",
                 b"v2 2026-11-25T10:00:00.123456 whatsapp {}", b"v2 2026-13-25T10:00:00.123456Z whatsapp {}"]:
        with pytest.raises(ValueError):
            decode_record(junk)


def test_closed_files_ignores_open_and_foreign_files(tmp_path: Path) -> None:
    for name in ["spool-2-000002.jsonl", "spool-1-000001.jsonl", "spool-3-000003.jsonl.open", "notes.txt"]:
        (tmp_path / name).write_text("x")
    assert [p.name for p in closed_files(tmp_path)] == ["spool-1-000001.jsonl", "spool-2-000002.jsonl"]


def test_lines_table_numbers_lines_like_split_and_refuses_non_utf8() -> None:
    data = b'v2 first\n\n{"b": "\xc3\xa9"}\nlast without newline'
    table = lines_table(7, data)
    assert table is not None
    assert table.column("file_idx").to_pylist() == [7, 7, 7, 7]
    assert table.column("line_no").to_pylist() == [1, 2, 3, 4]
    assert table.column("line").to_pylist() == [x.decode() for x in data.split(b"\n")]
    ended = lines_table(0, b"a\nb\n")
    assert ended is not None and ended.column("line").to_pylist() == ["a", "b", ""]  # as bytes.split gives
    assert lines_table(0, b"ok\n\xff\xfe torn\n") is None


def test_batches_of_groups_files_evenly_by_size(tmp_path: Path) -> None:
    paths = []
    for i in range(10):
        path = tmp_path / f"spool-{i:02d}.jsonl"
        path.write_bytes(b"x" * 100)
        paths.append(path)
    groups = list(batches_of(paths, 400))
    assert [len(g) for g in groups] == [3, 4, 3]  # 1,000 bytes: three groups of about a third, none over 400
    assert [p for g in groups for p in g] == paths
    assert [len(g) for g in batches_of(paths[:2], 10)] == [1, 1]  # a file larger than the limit: alone
    assert list(batches_of([], 400)) == []
