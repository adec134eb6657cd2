"""Test hosts on one machine: Linux network namespaces joined by veth links to a bridge.

``async with TestNetwork(3) as net:`` makes hosts ``h1``..``h3`` with addresses in a
198.18.0.0/15 subnet (reserved for network tests, never routed), each with its own
loopback and one link to a switch (a bridge in a namespace of its own). The test
process itself gets one more link to the switch, so it reaches every host directly.
``cut(host)`` takes a host's link down, as a pulled cable would; ``mend`` brings it
back. Everything is removed on exit. Needs root and ``ip`` (iproute2).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self

from launcher.services import Host

__all__ = ["NetnsUnavailable", "TestHost", "TestNetwork", "netns_unavailable"]

_PREFIX: Final = "yapt"
_TIMEOUT_S: Final = 10.0


class NetnsUnavailable(Exception):
    """Namespaces cannot be made here; the message says why."""


@dataclass(frozen=True, slots=True)
class TestHost:
    name: str
    namespace: str
    address: str
    switch_port: str  # the link's end in the switch namespace

    def as_host(self) -> Host:
        """Where the launcher runs a service on this host."""
        return Host(self.name, self.address, ("ip", "netns", "exec", self.namespace))


async def _ip(*args: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        "ip",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(_TIMEOUT_S):
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if check and proc.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)} failed: {text.strip()}")
    return text


async def netns_unavailable() -> str | None:
    """Why test hosts cannot be made here, or None if they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"{_PREFIX}-{os.getpid()}-probe"
    try:
        await _ip("netns", "add", probe)
        await _ip("netns", "del", probe)
    except NetnsUnavailable as exc:
        return f"cannot make a network namespace here: {exc}"
    return None


class TestNetwork:
    """``hosts`` namespaces on one bridge, plus a link from this process's namespace."""

    __test__ = False  # not a pytest class

    def __init__(self, hosts: int) -> None:
        # Unique per run, so leftovers of a killed run never collide with this one.
        # Namespaces carry the pid (to find leftovers); links, 15 characters at most,
        # a random tag.
        run = f"{random.randrange(16**4):04x}"
        namespace = f"{_PREFIX}-{os.getpid()}-{run}"
        link = f"yt{run}"
        self._subnet = f"198.18.{random.randrange(1, 255)}"
        self._switch = f"{namespace}-sw"
        self._root_link = f"{link}r"
        self._root_port = f"{link}pr"
        self.hosts = [
            TestHost(
                name=f"h{i}",
                namespace=f"{namespace}-h{i}",
                address=f"{self._subnet}.{i}",
                switch_port=f"{link}p{i}",
            )
            for i in range(1, hosts + 1)
        ]

    def host(self, name: str) -> TestHost:
        return next(h for h in self.hosts if h.name == name)

    async def cut(self, name: str) -> None:
        """Take the host's link down at the switch: nothing crosses it either way."""
        await _ip("-n", self._switch, "link", "set", self.host(name).switch_port, "down")

    async def mend(self, name: str) -> None:
        await _ip("-n", self._switch, "link", "set", self.host(name).switch_port, "up")

    async def __aenter__(self) -> Self:
        await _remove_leftovers()
        try:
            await self._build()
        except BaseException:
            await self._remove()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._remove()

    async def _build(self) -> None:
        sw = self._switch
        await _ip("netns", "add", sw)
        await _ip("-n", sw, "link", "add", "br0", "type", "bridge")
        await _ip("-n", sw, "link", "set", "br0", "up")
        for host in self.hosts:
            ns = host.namespace
            await _ip("netns", "add", ns)
            await _ip("-n", ns, "link", "set", "lo", "up")
            # Made in the switch namespace, one end moved to the host as its eth0.
            await _ip(
                "-n", sw, "link", "add", host.switch_port, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            )  # fmt: skip
            await _ip("-n", sw, "link", "set", host.switch_port, "master", "br0", "up")
            await _ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            await _ip("-n", ns, "link", "set", "eth0", "up")
        # This process's own link: only an address in the test subnet, no default route.
        port = self._root_port
        await _ip("link", "add", self._root_link, "type", "veth", "peer", "name", port)
        await _ip("link", "set", port, "netns", sw)
        await _ip("-n", sw, "link", "set", port, "master", "br0", "up")
        await _ip("addr", "add", f"{self._subnet}.254/24", "dev", self._root_link)
        await _ip("link", "set", self._root_link, "up")

    async def _remove(self) -> None:
        # Deleting the switch namespace takes every veth with it; the hosts go too.
        await _ip("link", "del", self._root_link, check=False)
        for host in self.hosts:
            await _ip("netns", "del", host.namespace, check=False)
        await _ip("netns", "del", self._switch, check=False)


async def _remove_leftovers() -> None:
    """Namespaces of earlier test runs whose process is gone (a SIGKILLed pytest)."""
    listing = await _ip("netns", "list", check=False)
    for line in listing.splitlines():
        name = (line.split() or [""])[0]
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != _PREFIX or not parts[1].isdigit():
            continue
        if not _alive(int(parts[1])):
            await _ip("netns", "del", name, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
