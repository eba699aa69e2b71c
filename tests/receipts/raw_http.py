"""A hostile HTTP client on raw sockets, for tests of the servers' bounds: it sends what it likes, as slowly as it
likes, and watches whether and when the server answers or hangs up. Every wait polls with a deadline."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_until_closed(sock: socket.socket, within_s: float) -> tuple[bytes, bool]:
    """(what the server sent, whether it closed the connection) within `within_s`."""
    got = bytearray()
    deadline = time.monotonic() + within_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(min(left, 0.2))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(got), True
        if not data:
            return bytes(got), True
        got += data
    return bytes(got), False


def status_of(answer: bytes) -> int | None:
    """The status code of the first response in `answer`, if one came."""
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[0].startswith(b"HTTP/") and line[1].isdigit() else None


def answer_before_end(sock: socket.socket, chunks: list[bytes], *, chunked: bool, within_s: float = 5.0) -> bytes:
    """Sends `chunks` one by one (never the end of the body), stopping early if the server answers or hangs up;
    then returns what the server sent within `within_s`."""
    for chunk in chunks:
        sock.settimeout(0)
        try:
            if sock.recv(65536, socket.MSG_PEEK):
                break  # the server has answered
        except BlockingIOError:
            pass
        except ConnectionResetError:
            break
        sock.settimeout(5)
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
    return read_until_closed(sock, within_s)[0]


def trickle(sock: socket.socket, data: bytes, every_s: float, within_s: float) -> tuple[float | None, bytes]:
    """Sends `data` one byte at a time, `every_s` apart, until the server hangs up: (seconds until it did, or
    None if it was still open after `within_s`; what it sent)."""
    start = time.monotonic()
    got = bytearray()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - start, bytes(got)
        answer, closed = read_until_closed(sock, every_s)
        got += answer
        if closed:
            return time.monotonic() - start, bytes(got)
        if time.monotonic() - start > within_s:
            return None, bytes(got)
    answer, closed = read_until_closed(sock, max(0.0, within_s - (time.monotonic() - start)))
    return (time.monotonic() - start if closed else None), bytes(got + answer)
