"""Hosts on one machine for the multi-host test: network namespaces (`ip netns add`) joined by a private link that
only they share. The first host is the hub: a bridge in its namespace holds the link's first address; every other
host gets a veth pair, one end on that bridge, the other in its own namespace with the next address. Nothing of it
is reachable from the machine's own namespace (nor the reverse), and everything is deleted on exit, failing or not.

`Host.command(args)` runs a command in the host: its network namespace and a UTS namespace with the host's own host
name (so a lease names the host it was taken on). `Host.call(fn)` runs a Python callable on a thread of this process
that has entered the host's network namespace (setns): the test reads the hub's services from there."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
LINK = "10.231.7"  # a /24 that exists only inside these namespaces
COMMAND_S = 20  # one `ip` command, at most


def why_not() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (the multi-host test runs as root, as CI does)"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"no `{tool}` here (Debian's iproute2 and util-linux)"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=COMMAND_S)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _enter(namespace: str) -> None:
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
    finally:
        os.close(fd)


@dataclass
class Host:
    name: str  # the host name its processes see
    namespace: str
    address: str
    _thread: ThreadPoolExecutor | None = field(default=None, repr=False)

    def command(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "sh", "-c",
                f'hostname {self.name} && exec "$@"', "sh", *args]

    def call(self, fn: Callable[..., T], *args: Any, timeout_s: float = 60) -> T:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"in-{self.name}", initializer=_enter,
                                              initargs=(self.namespace,))
        return self._thread.submit(fn, *args).result(timeout=timeout_s)

    def close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True, cancel_futures=True)


@contextmanager
def private_hosts(names: list[str]) -> Iterator[list[Host]]:
    """One host per name (the first is the hub, at LINK.1); deleted with their links on exit."""
    tag = f"cf{os.getpid()}"
    hosts = [Host(name, f"{tag}-{name}", f"{LINK}.{i + 1}") for i, name in enumerate(names)]
    with ExitStack() as stack:
        for host in hosts:
            _ip("netns", "add", host.namespace)
            stack.callback(_ip, "netns", "delete", host.namespace)
            stack.callback(host.close)
            _ip("-n", host.namespace, "link", "set", "lo", "up")
        hub = hosts[0]
        _ip("-n", hub.namespace, "link", "add", "link0", "type", "bridge")
        _ip("-n", hub.namespace, "addr", "add", f"{hub.address}/24", "dev", "link0")
        _ip("-n", hub.namespace, "link", "set", "link0", "up")
        for i, host in enumerate(hosts[1:], start=1):
            _ip("-n", hub.namespace, "link", "add", f"to{i}", "type", "veth", "peer", "name", "eth0", "netns",
                host.namespace)
            _ip("-n", hub.namespace, "link", "set", f"to{i}", "master", "link0")
            _ip("-n", hub.namespace, "link", "set", f"to{i}", "up")
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
            _ip("-n", host.namespace, "link", "set", "eth0", "up")
        yield hosts


def namespaces_left(tag: str) -> list[str]:
    """The namespaces of this machine whose name starts with `tag` (none should outlive their test)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=COMMAND_S).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(tag)]
