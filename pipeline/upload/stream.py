"""Receiving an upload: a multipart/form-data body streamed to disk chunk by chunk, never whole in memory.

The file part is written to `<name>.csv.part`, fsynced and renamed once complete, so no reader ever sees half
a file under its final name. Small form fields (token, spec) are kept in memory, bounded in number and size
(so are each part's headers). The token is checked before the first byte of the file is written: from a header
or cookie before the body is read (pipeline/upload/routes.py), from the form's `token` field as soon as that
field ends (the page puts it before the file); a form that brings no token is refused once it passes the
field bounds. A refused upload's body is drained (bounded) so the browser can read the answer; without the
token, only what arrives within a second, and no more than a form's fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from python_multipart.multipart import MultipartParser, parse_options_header

DEFAULT_MAX_FIELDS = 8  # form fields besides the file (the page sends two: token, spec)
DEFAULT_MAX_FIELD_BYTES = 4096  # a field's value, and a part's headers
FILE_FIELD = "file"
TOKEN_FIELD = "token"
UNAUTHORISED_DRAIN_S = 1.0

Receive = Callable[[], Awaitable[dict[str, Any]]]
TokenCheck = Callable[[Mapping[str, str]], None]  # raises UploadRefused when the fields carry no valid token


class UploadRefused(Exception):
    """An upload answered with `status` and a message the page shows as it is."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The browser closed the connection mid-upload; there is nobody to answer."""


@dataclass(frozen=True)
class Received:
    fields: dict[str, str]
    path: Path  # the complete file, under its sanitised name
    original_name: str
    size: int


def too_large(max_bytes: int) -> str:
    return f"the file is larger than the upload limit of {max_bytes / 1_000_000:g} MB"


def safe_csv_name(filename: str) -> str:
    """'C:\\Users\\me\\Spring list (v2).CSV' -> 'Spring-list-v2.csv': the base name only, letters, digits, '-'
    and '_'. Anything not named .csv is refused."""
    base = re.split(r"[\\/]", filename)[-1].strip()
    stem, dot, ext = base.rpartition(".")
    if not dot or ext.lower() != "csv":
        raise UploadRefused(415, f"{base or 'the file'} is not a CSV file (its name must end in .csv)")
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_")[:60] or "audience"
    return f"{stem}.csv"


def form_bytes(max_fields: int, max_field_bytes: int) -> int:
    """The most a form may carry besides the file: its fields and every part's headers and boundaries."""
    return (max_fields + 1) * (2 * max_field_bytes + 256)


class _Form:
    """python-multipart callbacks: fields into a dict, the file into `<folder>/<name>.part`."""

    def __init__(self, folder: Path, max_bytes: int, check_token: TokenCheck, max_fields: int,
                 max_field_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.max_fields, self.max_field_bytes = max_fields, max_field_bytes
        self._check_token = check_token
        self.authorised = False
        self.fields: dict[str, str] = {}
        self.field_count = 0
        self.file: IO[bytes] | None = None
        self.part_path: Path | None = None
        self.original_name = ""
        self.size = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._field: bytearray | None = None
        self._name = ""
        self.ended = False  # the closing boundary arrived: the body was not cut short

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_headers_finished": self._headers_finished,
            "on_part_data": self._data, "on_part_end": self._part_end, "on_end": self._end,
        }

    def check_token(self) -> None:
        self._check_token(self.fields)
        self.authorised = True

    def _part_begin(self) -> None:
        self._headers, self._field, self._header_bytes = [], None, 0

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.max_field_bytes:
            raise UploadRefused(400, "a part of the form has headers that are too long")

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._headers.append((data[start:end], b""))

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        field, value = self._headers[-1]
        self._headers[-1] = (field, value + data[start:end])

    def _headers_finished(self) -> None:
        disposition = next((v for f, v in self._headers if f.lower() == b"content-disposition"), b"")
        _, options = parse_options_header(disposition)
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name != FILE_FIELD:
            self.field_count += 1
            if self.field_count > self.max_fields:
                if not self.authorised:
                    self.check_token()  # a form without a token is told so, not that it is long
                raise UploadRefused(400, f"the form has more than {self.max_fields} fields")
            self._field = bytearray()
            return
        if self.part_path is not None:
            raise UploadRefused(400, "send one file per upload")
        self.check_token()  # before a single byte of the file touches the disk
        self.original_name = options.get(b"filename", b"").decode("utf-8", "replace")
        if not self.original_name:
            raise UploadRefused(400, "choose a CSV file to upload")
        name = safe_csv_name(self.original_name)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.part_path = self.folder / f"{name}.part"
        self.file = self.part_path.open("wb")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._field is not None:
            self._field += data[start:end]
            if len(self._field) > self.max_field_bytes:
                raise UploadRefused(400, f"the form field {self._name!r} is too long")
        elif self.file is not None:
            self.size += end - start
            if self.size > self.max_bytes:
                raise UploadRefused(413, too_large(self.max_bytes))
            # Plain blocking writes: a chunk is at most a socket read (64 KiB), a few microseconds to the page
            # cache, cheaper than handing each to a thread.
            self.file.write(data[start:end])

    def _part_end(self) -> None:
        if self._field is not None:
            self.fields[self._name] = self._field.decode("utf-8", "replace")
            self._field = None
            if self._name == TOKEN_FIELD:
                self.check_token()  # a wrong token is refused here, before anything more is read

    def _end(self) -> None:
        self.ended = True

    def complete(self) -> Received:
        if not self.ended:
            raise UploadRefused(400, "the upload was cut off before its end; send it again")
        if self.file is None or self.part_path is None:
            self.check_token()
            raise UploadRefused(400, "choose a CSV file to upload")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if self.size == 0:
            self.discard()
            raise UploadRefused(400, f"{self.original_name} is empty")
        final = self.part_path.with_suffix("")  # x.csv.part -> x.csv
        os.replace(self.part_path, final)
        return Received(self.fields, final, self.original_name, self.size)

    def discard(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.part_path is not None:
            self.part_path.unlink(missing_ok=True)


async def receive_upload(
    headers: Mapping[str, str], receive: Receive, folder: Path, *, max_bytes: int, check_token: TokenCheck,
    max_fields: int = DEFAULT_MAX_FIELDS, max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES,
) -> Received:
    """Reads the request body from `receive` (ASGI) into `folder`. Raises UploadRefused for anything the
    uploader should be told (no token, not a CSV, too large, too many or too long fields, empty), ClientGone if
    the browser gave up."""
    content_type, options = parse_options_header(headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise UploadRefused(400, "send the upload as a multipart/form-data form")
    overhead = form_bytes(max_fields, max_field_bytes)
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes + overhead:
        raise UploadRefused(413, too_large(max_bytes))  # said before a byte is read
    form = _Form(folder, max_bytes, check_token, max_fields, max_field_bytes)
    parser = MultipartParser(boundary, form.callbacks())
    body = _Body(receive)
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
        return form.complete()
    except UploadRefused:
        form.discard()
        # Read (and drop) what the browser is still sending, so it gets to read our answer instead of a reset
        # connection; bounded, so a client cannot keep us reading forever (the server's body deadline bounds the
        # time), and for a client without the token to a form's fields and a second.
        if form.authorised:
            await body.drain(max_bytes + overhead)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(body.drain(overhead), UNAUTHORISED_DRAIN_S)
        raise
    except ClientGone:
        form.discard()
        raise
    except Exception as exc:  # python-multipart's errors on a malformed body
        form.discard()
        raise UploadRefused(400, f"the form could not be read ({type(exc).__name__})") from None


class _Body:
    """The request body as chunks straight from ASGI `receive` (so the rest can still be drained after an
    error, which Starlette's one-shot `request.stream()` does not allow)."""

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.done = False
        self.read = 0

    def __aiter__(self) -> _Body:
        return self

    async def __anext__(self) -> bytes:
        if self.done:
            raise StopAsyncIteration
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        self.done = not message.get("more_body", False)
        chunk = message.get("body", b"")
        self.read += len(chunk)
        return chunk

    async def drain(self, limit: int) -> None:
        try:
            while not self.done and self.read <= limit:
                await self.__anext__()
        except (ClientGone, StopAsyncIteration):
            pass
