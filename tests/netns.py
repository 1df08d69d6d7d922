"""Hosts in network namespaces on a bridge, so a test can cut one off and heal it.

Host ``i`` (from 0) is the namespace ``PREFIX-<i+1>`` with ``eth0`` at ``SUBNET.<11+i>``, joined
by the veth pair ``ve-PREFIX-<i+1>`` to the bridge ``br-PREFIX`` at ``SUBNET.1``. Traffic stays
on the bridge: the namespaces get no default route. ``close`` removes everything by name, so
it is safe to call twice or after a half-done build, and names that already exist are refused
up front (they belong to someone else, or to a run that was not cleaned up). Needs root and
Linux; tests skip without them unless CI=true.
"""

import os
import subprocess

SUBNET = "10.78.0"
MAX_NAME = 15  # IFNAMSIZ - 1: the longest interface name Linux takes


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def can_run() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        return "iproute2 (ip) is not installed"
    return None


class Bridge:
    def __init__(
        self, hosts: int, subnet: str = SUBNET, prefix: str | None = None, build: bool = True
    ):
        """``build=False`` only names the parts, e.g. to ``close`` what another process made."""
        self.prefix = prefix or f"qn{os.getpid() % 100000:05d}"
        self.bridge = f"br-{self.prefix}"
        self.namespaces = [f"{self.prefix}-{i + 1}" for i in range(hosts)]
        self.veths = [f"ve-{ns}" for ns in self.namespaces]
        self.subnet = subnet
        self.gateway = f"{subnet}.1"
        self.addresses = [f"{subnet}.{11 + i}" for i in range(hosts)]
        if 11 + hosts > 255 or max(len(name) for name in [self.bridge, *self.veths]) > MAX_NAME:
            raise ValueError(f"{hosts} hosts named {self.prefix!r} do not fit")
        if build:
            taken = self.existing()
            if taken:
                raise RuntimeError(f"{', '.join(taken)} already exist: remove them first")
            try:
                self._build()
            except BaseException:
                self.close()
                raise

    def existing(self) -> list[str]:
        """Those of this bridge's links, namespaces and subnet that are taken now."""
        links = [*self.veths, self.bridge]
        found = [name for name in links if _ip("link", "show", name, check=False).returncode == 0]
        listed = {line.split()[0] for line in _ip("netns", "list").stdout.splitlines()}
        found += [ns for ns in self.namespaces if ns in listed]
        # A second bridge in the same subnet would take half the traffic meant for this one.
        used = _ip("-o", "-4", "addr", "show", "to", f"{self.subnet}.0/24").stdout
        return found + [f"{self.subnet}.0/24 (on {line.split()[1]})" for line in used.splitlines()]

    def _build(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for ns, veth, addr in zip(self.namespaces, self.veths, self.addresses, strict=True):
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def cut(self, i: int) -> None:
        _ip("link", "set", self.veths[i], "down")

    def heal(self, i: int) -> None:
        _ip("link", "set", self.veths[i], "up")

    def close(self) -> None:
        # A veth can outlive its namespace while a process still holds it: delete it first.
        for veth in self.veths:
            _ip("link", "del", veth, check=False)
        for ns in self.namespaces:
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.bridge, check=False)
