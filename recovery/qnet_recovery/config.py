"""qnet-recovery's configuration file (YAML), checked whole before anything uses it.

Every key has a safe default except ``nodes``; an unknown key, a wrong type or a value out
of range is a ``ConfigError`` naming the key. Durations are Prometheus-style: ``10s``,
``5m``, ``1h``, ``1h30m``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from qnet.ops import Host

from .engine import DEFAULT_MATCH, Budget, NodeInfo, Policy

DEFAULT_PATH = Path("/etc/qnet-recovery/config.yml")
ABSOLUTE = (lambda v: v.startswith("/"), "an absolute path")
USER = (lambda v: bool(re.fullmatch(r"[a-z_][a-z0-9_-]*", v)), "a user name")
PORT = (lambda v: 1 <= v <= 65535, "a port (1-65535)")
_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    ssh_port: int
    ssh_user: str
    api_port: int
    node_type: str
    region: str
    validator: bool
    home: str
    data_dir: str
    user: str
    power: int

    @property
    def api_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.api_port}"

    def host(self, key_file: str) -> Host:
        """The node as ``qnet.ops`` addresses it, with recovery's own key (host keys
        checked against recovery's known_hosts)."""
        return Host(
            name=self.name,
            address=self.address,
            port=self.ssh_port,
            user=self.ssh_user,
            key_file=key_file,
            check_host_key=True,
            region=self.region,
            node_type=self.node_type,
            api_port=self.api_port,
            home=self.home,
            data_dir=self.data_dir,
            node_user=self.user,
        )


@dataclass(frozen=True)
class Config:
    """A checked configuration; ``parse`` holds the defaults of the file's keys."""

    nodes: dict[str, Node]
    listen_host: str
    listen_port: int
    state_file: Path
    audit_log: Path
    dry_run: bool
    alertmanagers: tuple[str, ...]
    match: dict[str, str]
    chain_halted_alert: str
    budget: Budget
    verify_deadline_s: float
    backup_dir: Path | None
    backup_max_age_s: float
    work_dir: Path
    ssh_key_file: str
    known_hosts: str

    @property
    def policy(self) -> Policy:
        return Policy(
            nodes={n.name: NodeInfo(n.validator, n.power) for n in self.nodes.values()},
            match=dict(self.match),
            chain_halted_alert=self.chain_halted_alert,
            budget=self.budget,
        )

    @property
    def url(self) -> str:
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"http://{host}:{self.listen_port}"


def duration(value: object, key: str) -> float:
    text = str(value).strip()
    m = _DURATION.fullmatch(text)
    if not text or m is None or not any(m.groups()):
        raise ConfigError(f"{key}: {value!r} is not a duration such as 10s, 5m or 1h")
    h, mi, s = (int(g or 0) for g in m.groups())
    return float(h * 3600 + mi * 60 + s)


class _Reader:
    """Takes keys out of one mapping, checking each; what is left over is unknown."""

    def __init__(self, data: object, where: str):
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'the file'}: expected a mapping")
        self.data, self.where = dict(data), where

    def _key(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def take(self, key: str, kind: type, default: object, check=None, why: str = ""):
        if key not in self.data:
            return default
        value = self.data.pop(key)
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok or (check is not None and not check(value)):
            want = why or f"a {kind.__name__}"
            raise ConfigError(f"{self._key(key)}: {value!r} is not {want}")
        return value

    def duration(self, key: str, default: float, minimum: float = 1.0) -> float:
        if key not in self.data:
            return default
        seconds = duration(self.data.pop(key), self._key(key))
        if seconds < minimum:
            raise ConfigError(f"{self._key(key)}: at least {minimum:g} s")
        return seconds

    def sub(self, key: str) -> _Reader:
        return _Reader(self.data.pop(key, {}), self._key(key))

    def done(self) -> None:
        if self.data:
            names = ", ".join(self._key(str(k)) for k in self.data)
            raise ConfigError(f"unknown key(s): {names}")


def _node(name: object, data: object) -> Node:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", name):
        raise ConfigError(f"nodes: {name!r} is not a host name")
    r = _Reader(data, f"nodes.{name}")
    address = r.take("address", str, None, lambda v: bool(v.strip()), "an address")
    if address is None:
        raise ConfigError(f"nodes.{name}.address: missing")
    node = Node(
        name=name,
        address=address,
        ssh_port=r.take("ssh_port", int, 22, *PORT),
        ssh_user=r.take("ssh_user", str, "root", *USER),
        api_port=r.take("api_port", int, 7370, *PORT),
        node_type=r.take(
            "node_type",
            str,
            "full",
            lambda v: v in ("super", "full", "light"),
            "super, full or light",
        ),
        region=r.take("region", str, "?"),
        validator=r.take("validator", bool, False),
        home=r.take("home", str, "/opt/qnet", *ABSOLUTE),
        data_dir=r.take("data_dir", str, "/var/lib/qnet", *ABSOLUTE),
        user=r.take("user", str, "qnet", *USER),  # the node's, as the gate knows it
        power=r.take("power", int, 1, lambda v: v > 0, "a positive integer"),
    )
    r.done()
    return node


def parse(data: object) -> Config:
    r = _Reader(data if data is not None else {}, "")
    listen = r.take(
        "listen", str, "127.0.0.1:9097", lambda v: bool(re.fullmatch(r".+:\d{1,5}", v)), "host:port"
    )
    host, _, port = listen.rpartition(":")
    if not PORT[0](int(port)):
        raise ConfigError(f"listen: port {port} is out of range")
    raw_nodes = r.take("nodes", dict, None)
    if not raw_nodes:
        raise ConfigError("nodes: at least one node is needed")
    nodes = {str(n): _node(n, d) for n, d in raw_nodes.items()}
    if not any(n.validator for n in nodes.values()):
        raise ConfigError("nodes: no validator (validator: true) among them")
    match = r.take("match", dict, dict(DEFAULT_MATCH))
    for label, rx in match.items():
        if not isinstance(label, str) or not isinstance(rx, str):
            raise ConfigError(f"match.{label}: label and pattern must be strings")
        try:
            re.compile(rx)
        except re.error as exc:
            raise ConfigError(f"match.{label}: {rx!r} is not a regular expression: {exc}") from None
    ams = r.take("alertmanagers", list, [])
    for url in ams:
        if not isinstance(url, str) or not re.fullmatch(r"https?://\S+", url):
            raise ConfigError(f"alertmanagers: {url!r} is not an http(s) URL")
    b, default = r.sub("budget"), Budget()
    budget = Budget(
        max_actions=b.take(
            "max_actions", int, default.max_actions, lambda v: 1 <= v <= 100, "from 1 to 100"
        ),
        window_s=b.duration("window", default.window_s),
        backoff_initial_s=b.duration("backoff_initial", default.backoff_initial_s),
        backoff_max_s=b.duration("backoff_max", default.backoff_max_s),
        healthy_reset_s=b.duration("healthy_reset", default.healthy_reset_s),
    )
    b.done()
    if budget.backoff_max_s < budget.backoff_initial_s:
        raise ConfigError("budget.backoff_max: shorter than budget.backoff_initial")
    rs = r.sub("resync")
    backup_dir = rs.take(
        "backup_dir", str, "", lambda v: v == "" or v.startswith("/"), "an absolute path or empty"
    )
    resync_age = rs.duration("backup_max_age", 6 * 3600.0)
    work_dir = rs.take("work_dir", str, "/var/lib/qnet-recovery/work", *ABSOLUTE)
    rs.done()
    s = r.sub("ssh")
    key_file = s.take("key_file", str, "/var/lib/qnet-recovery/.ssh/id_ed25519", *ABSOLUTE)
    known_hosts = s.take("known_hosts", str, "/var/lib/qnet-recovery/.ssh/known_hosts", *ABSOLUTE)
    s.done()
    config = Config(
        nodes=nodes,
        listen_host=host.strip("[]"),
        listen_port=int(port),
        state_file=Path(r.take("state_file", str, "/var/lib/qnet-recovery/state.json", *ABSOLUTE)),
        audit_log=Path(r.take("audit_log", str, "/var/log/qnet-recovery/audit.jsonl", *ABSOLUTE)),
        dry_run=r.take("dry_run", bool, False),
        alertmanagers=tuple(ams),
        match=match,
        chain_halted_alert=r.take("chain_halted_alert", str, Policy.chain_halted_alert),
        budget=budget,
        verify_deadline_s=r.duration("verify_deadline", 120.0, minimum=5.0),
        backup_dir=Path(backup_dir) if backup_dir else None,
        backup_max_age_s=resync_age,
        work_dir=Path(work_dir),
        ssh_key_file=key_file,
        known_hosts=known_hosts,
    )
    r.done()
    return config


def load(path: Path) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML: {exc}") from None
    try:
        return parse(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
