"""The WhatsApp sandbox in its own process, for benchmarks: the client under test and the
sandbox then do not share a GIL or an event loop, as with the real Cloud API.

    with sandbox_process(SandboxConfig(access_token=..., app_secret=..., fault_5xx_rate=0.01)) as url:
        ...  # POST f"{url}/v23.0/{phone_number_id}/messages"; GET f"{url}/_sandbox/stats?messages=0"
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO

import httpx

from pipeline.sandbox.__main__ import CONFIG_ENV, READY_PREFIX, SECRET_ENV, TOKEN_ENV
from pipeline.sandbox.whatsapp import SandboxConfig
from pipeline.servers import LOOPBACK

_SECRETS = {"access_token", "app_secret"}


def sandbox_command(*, host: str = LOOPBACK, port: int = 0) -> list[str]:
    return [sys.executable, "-m", "pipeline.sandbox", "--host", host, "--port", str(port)]


def sandbox_env(config: SandboxConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: every non-secret field as JSON, the secrets in their own variables."""
    env = dict(os.environ if base is None else base)
    env[CONFIG_ENV] = json.dumps(config.model_dump(mode="json", exclude=_SECRETS))
    env[TOKEN_ENV] = config.access_token
    env[SECRET_ENV] = config.app_secret
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@contextlib.contextmanager
def sandbox_process(
    config: SandboxConfig, *, port: int = 0, host: str = LOOPBACK, startup_timeout_s: float = 30.0,
    stop_timeout_s: float = 20.0,
) -> Iterator[str]:
    """Starts `python -m pipeline.sandbox` with `config`, yields its base URL once it answers, and
    stops it on exit, raising or not: SIGTERM to its process group, SIGKILL after `stop_timeout_s`.

    The child runs in its own session, so anything it starts is stopped with it. `port=0` lets the
    child bind a free port and report it. `started_pids()` and `exit_code(pid)` tell tests what ran.
    """
    proc = subprocess.Popen(
        sandbox_command(host=host, port=port), env=sandbox_env(config), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, start_new_session=True,
    )
    _started[proc.pid] = None
    try:
        assert proc.stdout is not None
        url = _wait_ready(proc, proc.stdout, startup_timeout_s)
        yield url
    finally:
        _stop(proc, stop_timeout_s)


# pid -> exit code (None while running) of every sandbox process started here, oldest first.
_started: dict[int, int | None] = {}


def started_pids() -> list[int]:
    """Pids of the sandbox processes started by this process, newest last."""
    return list(_started)


def exit_code(pid: int) -> int | None:
    """How a sandbox process started here ended: 0 after a clean stop, -9 if it had to be killed."""
    return _started.get(pid)


def _wait_ready(proc: subprocess.Popen[bytes], stdout: IO[bytes], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    line = _read_line(proc, stdout, deadline).decode(errors="replace").strip()
    if not line.startswith(READY_PREFIX):
        raise RuntimeError(f"sandbox process did not start: {line!r} (its stderr says why)")
    url = line[len(READY_PREFIX):].split()[0]
    # Keep reading its stdout, so a chatty child can never block on a full pipe.
    threading.Thread(target=_discard, args=(stdout,), name=f"sandbox:{proc.pid}:stdout", daemon=True).start()
    with httpx.Client(base_url=url, trust_env=False, timeout=2.0) as client:
        while True:
            try:
                if client.get("/_sandbox/stats", params={"messages": "0"}).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            if _exited_unreaped(proc.pid) is not False or time.monotonic() > deadline:
                raise RuntimeError(f"sandbox process at {url} did not answer")
            time.sleep(0.05)


def _read_line(proc: subprocess.Popen[bytes], stdout: IO[bytes], deadline: float) -> bytes:
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError("sandbox process did not report its address in time")
            if not selector.select(min(remaining, 0.2)):
                continue
            chunk = os.read(stdout.fileno(), 4096)
            if not chunk:  # EOF: the child exited
                break
            buffer += chunk
    return buffer.split(b"\n", 1)[0]


def _discard(stream: IO[bytes]) -> None:
    with contextlib.suppress(OSError, ValueError):
        while os.read(stream.fileno(), 65536):
            pass


def _stop(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM the child's group, SIGKILL it after `timeout_s`; the leader is reaped last, so its
    pid (which is the group id) cannot be reused while the group is still being signalled."""
    pgid = proc.pid  # start_new_session: the child leads its own group
    if _exited_unreaped(proc.pid) is False:
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _exited_unreaped(proc.pid) is False and time.monotonic() < deadline:
            time.sleep(0.02)
    if _exited_unreaped(proc.pid) is not None:  # not reaped yet: the group id is still ours
        _signal_group(pgid, signal.SIGKILL)  # whatever is left of the group, leader included
    _started[proc.pid] = proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _exited_unreaped(pid: int) -> bool | None:
    """True once `pid` has exited (left as a zombie, not reaped); None if it is already reaped."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    return info is not None


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
