"""The group-commit spool (pipeline.spool): durability before return, batching, rotation, recovery."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import IO

import pytest

from pipeline.spool import Spool, SpoolClosed, closed_files, decode_body, encode_record


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


def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    n = 500

    async def run() -> Spool:
        spool = Spool(tmp_path)
        await asyncio.gather(*(spool.append(f'{{"n": {i}}}'.encode()) for i in range(n)))
        await spool.close()
        return spool

    spool = asyncio.run(run())
    got = sorted(json.loads(line)["n"] for line in lines_of(closed_files(tmp_path)))
    assert got == list(range(n))
    assert spool.appends == n
    # One batch is written while the rest queue up; the next batch takes all of them.
    assert spool.writes <= 5, spool.stats()
    assert spool.fsyncs <= spool.writes + spool.rotations


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


def test_periodic_task_closes_an_old_open_file(tmp_path: Path) -> None:
    async def run() -> None:
        spool = Spool(tmp_path, rotate_after_s=0.05)
        spool.start()
        await spool.append(b'{"a": 1}')
        assert closed_files(tmp_path) == []  # still open
        assert len(list(tmp_path.glob("*.open"))) == 1
        for _ in range(100):
            if closed_files(tmp_path):
                break
            await asyncio.sleep(0.02)
        assert len(closed_files(tmp_path)) == 1
        assert not list(tmp_path.glob("*.open"))
        await asyncio.sleep(0.15)  # idle: no empty files get created or closed
        assert len(closed_files(tmp_path)) == 1
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


def test_record_format_round_trips_any_body() -> None:
    body = '{"text": "退订 ✓"}'.encode() + b"\xff"  # not valid UTF-8 at the end
    line = encode_record("whatsapp", body)
    assert b"\n" not in line
    record = json.loads(line)
    assert set(record) == {"provider", "received_at", "body"}
    assert record["provider"] == "whatsapp"
    assert record["received_at"].endswith("+00:00")
    assert decode_body(record["body"]) == body


def test_closed_files_ignores_open_and_foreign_files(tmp_path: Path) -> None:
    for name in ["spool-2-000002.jsonl", "spool-1-000001.jsonl", "spool-3-000003.jsonl.open", "notes.txt"]:
        (tmp_path / name).write_text("x")
    assert [p.name for p in closed_files(tmp_path)] == ["spool-1-000001.jsonl", "spool-2-000002.jsonl"]
