"""Validators in network namespaces on a bridge, so a test can cut one off and heal it.

Everything it creates (bridge, namespaces, veth pairs) it removes in ``close``, also when
the test fails. Needs root and Linux; tests skip without them unless CI=true.
"""

import os
import subprocess

SUBNET = "10.78.0"


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


def can_run() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        return "iproute2 (ip) is not installed"
    return None


class Bridge:
    def __init__(self, hosts: int):
        tag = f"{os.getpid() % 100000:05d}"
        self.bridge = f"qb{tag}"
        self.namespaces = [f"qnet-{tag}-{i}" for i in range(hosts)]
        self.veths = [f"qv{tag}h{i}" for i in range(hosts)]
        self.addresses = [f"{SUBNET}.{11 + i}" for i in range(hosts)]
        self._made: list[tuple[str, ...]] = []  # undo commands, newest last
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._made.append(("link", "del", self.bridge))
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for ns, veth, addr in zip(self.namespaces, self.veths, self.addresses, strict=True):
            _ip("netns", "add", ns)
            self._made.append(("netns", "del", ns))
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self._made.append(("link", "del", veth))
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def cut(self, i: int) -> None:
        _ip("link", "set", self.veths[i], "down")

    def heal(self, i: int) -> None:
        _ip("link", "set", self.veths[i], "up")

    def close(self) -> None:
        while self._made:
            _ip(*self._made.pop(), check=False)
