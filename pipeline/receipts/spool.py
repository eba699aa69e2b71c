"""The durable webhook spool: a group-commit, fsync-before-ack appender of one-line records.

The receiver writes here (never DuckDB); the receipts stage ingests files once they are closed,
and a closed file is one renamed from `*.open` to `spool-<utc>-<seq>.jsonl`. One spool directory
has one writing process.

A record is one line holding the provider, the time it was received and the raw body, in one of
two formats (`decode_record` reads both):

- `v2 <received_at> <provider> <raw body>`: the body exactly as received, after a fixed-width
  UTC time (`2026-11-25T10:00:00.123456Z`). Used whenever the body is UTF-8 without a newline
  or NUL, i.e. for every real webhook: it costs the receiver no JSON encoding, and the receipts
  stage parses the body once (with DuckDB) instead of unescaping it out of a JSON string first.
- `{"provider": ..., "received_at": ..., "body": ...}`: a JSON object whose body is an
  ASCII-escaped string (`surrogateescape`), for any other body, so that even bytes that are not
  UTF-8 round-trip and reach quarantine instead of being lost. Files written before v2 hold only
  this format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import mmap
import os
import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

OPEN_SUFFIX = ".open"
CLOSED_GLOB = "spool-*.jsonl"
V2_PREFIX = b"v2 "
STAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # 27 characters for years 1000-9999
STAMP_LEN = 27


class SpoolClosed(RuntimeError):
    """append() after close(): the caller must not answer 200."""


# (unix second, its formatted prefix): the receiver stamps thousands of records per second.
_stamp_cache: tuple[int, bytes] = (-1, b"")


def _stamp(received_at: datetime | None) -> bytes:
    global _stamp_cache
    if received_at is not None:
        return received_at.astimezone(UTC).strftime(STAMP_FORMAT).encode("ascii")
    micros = time.time_ns() // 1000
    second, fraction = divmod(micros, 1_000_000)
    if _stamp_cache[0] != second:
        _stamp_cache = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode("ascii"))
    return b"%s.%06dZ" % (_stamp_cache[1], fraction)


def _verbatim_ok(raw_body: bytes) -> bool:
    if b"\n" in raw_body or b"\x00" in raw_body:
        return False
    if raw_body.isascii():
        return True
    try:
        raw_body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encode_record(provider: str, raw_body: bytes, received_at: datetime | None = None) -> bytes:
    """One spool line (without its newline) for one webhook body: v2 when the body allows it."""
    if provider.isascii() and provider.isidentifier() and _verbatim_ok(raw_body):
        return b"%s%s %s %s" % (V2_PREFIX, _stamp(received_at), provider.encode("ascii"), raw_body)
    record = {
        "provider": provider,
        "received_at": (received_at or datetime.now(UTC)).isoformat(),
        "body": raw_body.decode("utf-8", errors="surrogateescape"),
    }
    return json.dumps(record, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def decode_body(body: str) -> bytes:
    """The raw bytes a JSON record's `body` was made from (inverse of its encoding)."""
    return body.encode("utf-8", errors="surrogateescape")


def decode_record(line: bytes) -> tuple[str, datetime | None, bytes]:
    """(provider, received_at, raw body) of a spool line; ValueError if it is not a record."""
    if line.startswith(V2_PREFIX):
        stamp, provider, body = line[len(V2_PREFIX):].split(b" ", 2)
        if len(stamp) != STAMP_LEN or not stamp.endswith(b"Z"):
            raise ValueError(f"v2 record: bad time {stamp[:40]!r}")
        received_at = datetime.strptime(stamp.decode("ascii"), STAMP_FORMAT).replace(tzinfo=UTC)
        return provider.decode("ascii"), received_at, body
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("spool line is not a JSON object")
    provider, body, stamp = record.get("provider"), record.get("body"), record.get("received_at")
    if not isinstance(provider, str):
        raise ValueError(f"unknown provider {provider!r}")
    if not isinstance(body, str):
        raise ValueError("spool line has no string 'body'")
    received_at = None
    if isinstance(stamp, str):
        received_at = datetime.fromisoformat(stamp)
        if received_at.tzinfo is None:
            received_at = received_at.replace(tzinfo=UTC)
    return provider, received_at, decode_body(body)


def closed_files(directory: Path | str) -> list[Path]:
    """Closed spool files, oldest first (names start with the UTC time the file was opened)."""
    return sorted(p for p in Path(directory).glob(CLOSED_GLOB) if p.is_file())


# Arrow string views (16 bytes each) of the lines: up to 12 bytes inline, longer ones by position.
_SHORT_VIEW = struct.Struct("<i12s")
_LONG_VIEW = struct.Struct("<i4sii")
_V2_HEADER = len(V2_PREFIX) + STAMP_LEN + 1  # "v2 <stamp> ", then "<provider> <body>"


def _views(data: bytes | mmap.mmap) -> tuple[int, bytearray, bytearray]:
    """(number of lines, Arrow string views of them, views of their v2 bodies): the pieces
    `data.split(b"\n")` would give, and of each v2 record the bytes after its provider (else empty)."""
    lines, bodies, pos, count, size = bytearray(), bytearray(), 0, 0, len(data)
    find, short, long = data.find, _SHORT_VIEW.pack, _LONG_VIEW.pack
    empty = short(0, b"")
    while True:
        end = find(b"\n", pos)
        stop = size if end < 0 else end
        length = stop - pos
        lines += short(length, data[pos:stop]) if length <= 12 else long(length, data[pos:pos + 4], 0, pos)
        # A space is never part of a multi-byte character: the body starts on a character boundary.
        space = find(b" ", pos + _V2_HEADER, stop) if data[pos:pos + 3] == V2_PREFIX else -1
        if space < 0:
            bodies += empty
        else:
            start = space + 1
            length = stop - start
            bodies += short(length, data[start:stop]) if length <= 12 else long(length, data[start:start + 4], 0, start)
        count += 1
        if end < 0:
            return count, lines, bodies
        pos = end + 1


def lines_table(file_idx: int, data: bytes | mmap.mmap) -> pa.Table | None:
    """A spool file's lines as an Arrow table (file_idx, line_no from 1, line, body) for DuckDB to parse,
    or None when the file is not UTF-8 (torn or foreign bytes: then read it line by line in Python).
    `body` is a v2 record's raw body (empty for other lines), so SQL needs no character-counting
    `substr` over every line to find it.

    Both are string views into `data` itself: no copy of the text (fresh memory for a copy of a
    400 MB spool costs ~0.5 s in page faults), only 16 bytes per line and column.
    """
    import pyarrow as pa  # here, not at the top: the receiver imports this module and needs no Arrow

    buffer = pa.py_buffer(data)
    whole = pa.Array.from_buffers(pa.large_string(), 1, [None, pa.py_buffer(struct.pack("<2q", 0, len(data))),
                                                         buffer])
    try:
        whole.validate(full=True)  # UTF-8, as DuckDB requires valid text (Arrow's vectorised check)
    except pa.ArrowInvalid:
        return None
    # Splitting UTF-8 at b"\n" cannot cut a character, so the pieces are valid text as they are.
    count, lines, bodies = _views(data)
    return pa.table({
        "file_idx": pa.repeat(pa.scalar(file_idx, pa.int32()), count),
        "line_no": pa.array(range(1, count + 1), pa.int32()),
        "line": pa.Array.from_buffers(pa.string_view(), count, [None, pa.py_buffer(lines), buffer]),
        "body": pa.Array.from_buffers(pa.string_view(), count, [None, pa.py_buffer(bodies), buffer]),
    })


def read_spool_file(path: Path) -> bytes | mmap.mmap:
    """A closed spool file's bytes, mapped rather than read: closed files never change, and the
    mapping spares a copy (and its page faults) of what may be hundreds of megabytes."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return b""
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


def batches_of(paths: list[Path], batch_bytes: int) -> Iterator[list[Path]]:
    """Consecutive groups of files, each at most `batch_bytes` (or one larger file), as even as the
    files allow: each group is one transaction of the receipts stage, and every commit into the keyed
    `events` table merges and stores its index again, so fewer groups of like size beat a small first
    one (which used to let the next group's parsing start sooner)."""
    sizes = [path.stat().st_size for path in paths]
    share = sum(sizes) / max(1, math.ceil(sum(sizes) / max(1, batch_bytes)))
    batch: list[Path] = []
    size = start = groups = 0  # bytes in this group, bytes before it, groups yielded
    for path, length in zip(paths, sizes, strict=True):
        # A file goes to the next group once its middle lies past this group's share of the total.
        if batch and (size + length > batch_bytes or start + size + length / 2 > share * (groups + 1)):
            yield batch
            batch, start, size, groups = [], start + size, 0, groups + 1
        batch.append(path)
        size += length
    if batch:
        yield batch


def _fsync_dir(directory: Path) -> None:
    # A create or rename is durable only once the directory entry itself is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Appends records to the open spool file; many concurrent appends share one write + fsync."""

    def __init__(
        self,
        directory: Path | str,
        rotate_after_s: float = 1.0,
        rotate_after_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.rotate_after_s = rotate_after_s
        self.rotate_after_bytes = rotate_after_bytes
        # Counters for tests, benchmarks and /healthz.
        self.appends = 0
        self.writes = 0
        self.fsyncs = 0
        self.rotations = 0
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._rotator: asyncio.Task[None] | None = None
        self._closed = False
        # Guards the file between worker threads (a batch write vs. a timed rotation).
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._opened_at = 0.0
        self._size = 0
        self._seq = 0
        self.recover()

    # ---- synchronous file work (runs in worker threads) -------------------------------------

    def recover(self) -> list[Path]:
        """Closes `*.open` files left by a crashed writer, so their acknowledged records get ingested.

        A torn last line (crash mid-write, never acknowledged) is left in place: ingest quarantines it.
        """
        recovered = []
        with self._lock:
            for path in sorted(self.directory.glob(f"spool-*.jsonl{OPEN_SUFFIX}")):
                if path == self._path:
                    continue
                if path.stat().st_size == 0:
                    path.unlink()
                    continue
                target = path.with_name(path.name.removesuffix(OPEN_SUFFIX))
                path.rename(target)
                recovered.append(target)
            if recovered:
                _fsync_dir(self.directory)
                log.warning("spool: recovered %d unclosed file(s) in %s", len(recovered), self.directory)
        return recovered

    def _open(self) -> None:
        now = datetime.now(UTC)
        self._seq += 1
        stem = f"spool-{now:%Y%m%dT%H%M%S.%f}Z-{self._seq:06d}.jsonl"
        self._path = self.directory / (stem + OPEN_SUFFIX)
        self._file = open(self._path, "xb")  # noqa: SIM115 - lives until rotation
        _fsync_dir(self.directory)
        self._opened_at = time.monotonic()
        self._size = 0

    def _fsync(self, file: IO[bytes]) -> None:
        os.fsync(file.fileno())
        self.fsyncs += 1

    def _rotate_locked(self) -> Path | None:
        if self._file is None or self._path is None:
            return None
        self._file.flush()
        self._fsync(self._file)
        self._file.close()
        closed = self._path.with_name(self._path.name.removesuffix(OPEN_SUFFIX))
        self._path.rename(closed)
        _fsync_dir(self.directory)
        self._file, self._path, self._size = None, None, 0
        self.rotations += 1
        return closed

    def _write_batch(self, data: bytes) -> None:
        with self._lock:
            if self._file is None:
                self._open()
            assert self._file is not None
            self._file.write(data)
            self._file.flush()
            self._fsync(self._file)
            self.writes += 1
            self._size += len(data)
            if self._size >= self.rotate_after_bytes:
                self._rotate_locked()

    def rotate(self) -> Path | None:
        """Closes the open file now (if any); returns the closed file's path."""
        with self._lock:
            return self._rotate_locked()

    def rotate_if_due(self) -> Path | None:
        with self._lock:
            if self._file is None or self._size == 0:
                return None
            if time.monotonic() - self._opened_at < self.rotate_after_s:
                return None
            return self._rotate_locked()

    # ---- asyncio side -----------------------------------------------------------------------

    async def append(self, record: bytes) -> None:
        """Appends one record (a line without its newline); returns once it is written and fsynced."""
        if self._closed:
            raise SpoolClosed("spool is closed")
        if b"\n" in record:
            raise ValueError("a spool record must be a single line")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        self.appends += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop())
        await future

    async def _flush_loop(self) -> None:
        # Whatever queued up while the previous batch was in fsync goes out as the next batch:
        # the more concurrent appends, the bigger each batch (group commit).
        while self._pending:
            batch, self._pending = self._pending, []
            data = b"".join(record + b"\n" for record, _ in batch)
            try:
                await asyncio.to_thread(self._write_batch, data)
            except BaseException as exc:  # the disk said no: every waiter must hear it (no false 200)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else OSError(str(exc)))
                if not isinstance(exc, Exception):
                    raise
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    def start(self) -> None:
        """Starts the periodic rotation task (call from the running event loop)."""
        if self._rotator is None:
            self._rotator = asyncio.create_task(self._rotate_periodically())

    async def _rotate_periodically(self) -> None:
        interval = max(0.01, min(self.rotate_after_s / 4, 0.5))
        while True:
            await asyncio.sleep(interval)
            try:
                closed = await asyncio.to_thread(self.rotate_if_due)
            except OSError:
                log.exception("spool: timed rotation failed; will retry")
                continue
            if closed is not None:
                log.debug("spool: closed %s", closed.name)

    async def close(self) -> None:
        """Stops taking appends, drains what is queued, and closes the open file."""
        self._closed = True
        if self._rotator is not None:
            self._rotator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rotator
            self._rotator = None
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await asyncio.to_thread(self.rotate)

    def stats(self) -> dict[str, int]:
        return {
            "appends": self.appends,
            "writes": self.writes,
            "fsyncs": self.fsyncs,
            "rotations": self.rotations,
            "pending": len(self._pending),
        }
