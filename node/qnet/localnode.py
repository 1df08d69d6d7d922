"""Node processes on this machine: one validator, or a network of them.

Used by the tests and the benchmarks; whoever starts one stops it by PID (``stop``/``kill``).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from qnet import crypto
from qnet.client import Client
from qnet.config import write_config
from qnet.genesis import REGIONS, Genesis, Params, make_genesis
from qnet.node import write_secret

BIN = Path(sys.executable).parent
CHAIN_ID = "qnet-local"
# An idle chain makes no blocks for an hour: tests that check "height unchanged" use it.
NO_EMPTY_BLOCKS = {"empty_block_interval_ms": 3_600_000, "timeout_propose_ms": 7_200_000}


_handed_out: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now and that this process has not handed out before (nodes
    bind their ports only when they start, so the kernel could offer one twice)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    content_type: str = "application/json",
    timeout: float = 10.0,
) -> tuple[int, object]:
    """One request; returns (status, decoded JSON or text), never raises on 4xx/5xx."""
    req = urllib.request.Request(
        url,
        data=body,
        method=method,
        headers={"Content-Type": content_type} if body is not None else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        status, raw, ctype = exc.code, exc.read(), exc.headers.get_content_type()
    return status, json.loads(raw) if ctype == "application/json" else raw.decode()


class LocalNode:
    """A node in its own data dir, run as a real ``qnet-node`` process (optionally inside a
    network namespace), with free ports on ``host``."""

    def __init__(
        self,
        data_dir: Path,
        genesis: Genesis,
        key: crypto.KeyPair,
        config: dict | None = None,
        host: str = "127.0.0.1",
        netns: str | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.genesis = genesis
        self.netns = netns
        write_secret(self.data_dir / "node_key", key.seed.hex())
        genesis.save(self.data_dir / "genesis.json")
        self.port = free_port()
        self.p2p_port = free_port()
        self.config = {
            "api_host": host,
            "api_port": self.port,
            "p2p_host": host,
            "p2p_port": self.p2p_port,
            **(config or {}),
        }
        write_config(self.data_dir / "config.toml", self.config)
        self.url = f"http://{host}:{self.port}"
        self.p2p_address = f"{host}:{self.p2p_port}"
        self.proc: subprocess.Popen | None = None

    @classmethod
    def single(
        cls,
        data_dir: Path,
        funded: dict[bytes, int],
        params: Params | None = None,
        config: dict | None = None,
    ) -> "LocalNode":
        """A one-validator chain whose genesis funds ``funded``."""
        key = crypto.KeyPair.generate()
        balances = {crypto.encode_address(a): units for a, units in funded.items()}
        # Unless a test asks for epochs, none ends while it runs: an epoch's first block would
        # carry the validator's heartbeat and move a height the test expects to stand still.
        params = params or Params(epoch_ms=10**12)
        genesis = make_genesis(CHAIN_ID, [(key.node_id, "eu")], balances, params)
        return cls(data_dir, genesis, key, config)

    def set_peers(self, peers: list[str]) -> None:
        self.config["peers"] = peers
        write_config(self.data_dir / "config.toml", self.config)

    def start(self, timeout: float = 20.0) -> None:
        start_all([self], timeout)

    def spawn(self) -> None:
        """Start the process; ``healthy`` tells when it answers."""
        log = open(self.data_dir / "node.log", "ab")  # noqa: SIM115 - lives with the process
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        self.proc = subprocess.Popen(
            [*prefix, str(BIN / "qnet-node"), "--data-dir", str(self.data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def healthy(self) -> bool:
        """True once the node answers /health; raises if its process has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"node exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return http("GET", self.url + "/health", timeout=1)[0] == 200
        except OSError:
            return False

    def log(self) -> str:
        return (self.data_dir / "node.log").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def get(self, path: str) -> tuple[int, object]:
        return http("GET", self.url + path)

    def post(self, path: str, body: bytes, content_type: str = "application/json"):
        return http("POST", self.url + path, body, content_type)

    def status(self) -> dict:
        return self.get("/api/v1/status")[1]

    def wait_committed(self, tx_id: bytes, timeout: float = 20.0) -> dict:
        return Client(self.url).wait_committed(tx_id.hex(), timeout)


def wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` until it returns something true, and return that; a connection
    error counts as not yet (a node may be restarting). AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def start_all(nodes: list[LocalNode], timeout: float = 20.0) -> None:
    """Start every node, then wait until all answer; on failure none is left running."""
    try:
        for node in nodes:
            node.spawn()
        waiting = list(nodes)
        deadline = time.monotonic() + timeout
        while waiting:
            waiting = [n for n in waiting if not n.healthy()]
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(waiting)} node(s) did not answer /health within {timeout:g} s; "
                    f"the first's log:\n{waiting[0].log()}"
                )
            time.sleep(0.05)
    except BaseException:
        for node in nodes:
            node.kill()  # never leave a process behind that the caller cannot stop
        raise


def local_net(
    base_dir: Path,
    validators: int,
    funded: dict[bytes, int],
    params: Params | None = None,
    config: dict | None = None,
    hosts: list[str] | None = None,
    netns: list[str] | None = None,
) -> list[LocalNode]:
    """``validators`` validators in regions taken in turn, each peered with all the others."""
    keys = [crypto.KeyPair.generate() for _ in range(validators)]
    genesis = local_genesis(keys, funded, params)
    return validator_nodes(base_dir, genesis, keys, config, hosts, netns)


def local_genesis(
    keys: list[crypto.KeyPair],
    funded: dict[bytes, int],
    params: Params | None = None,
    genesis_time_ms: int = 0,
) -> Genesis:
    """The genesis of a local network of validators ``keys``, in regions taken in turn. The
    same arguments give the same genesis, and so the same network (``Genesis.network``):
    what is signed for one run of it is valid on the next."""
    balances = {crypto.encode_address(a): units for a, units in funded.items()}
    return make_genesis(
        CHAIN_ID,
        [(k.node_id, REGIONS[i % len(REGIONS)]) for i, k in enumerate(keys)],
        balances,
        params,
        genesis_time_ms,
    )


def validator_nodes(
    base_dir: Path,
    genesis: Genesis,
    keys: list[crypto.KeyPair],
    config: dict | None = None,
    hosts: list[str] | None = None,
    netns: list[str] | None = None,
) -> list[LocalNode]:
    """The validators ``keys`` of ``genesis``, each peered with all the others."""
    nodes = [
        LocalNode(
            Path(base_dir) / f"v{i + 1}",
            genesis,
            key,
            config,
            host=hosts[i] if hosts else "127.0.0.1",
            netns=netns[i] if netns else None,
        )
        for i, key in enumerate(keys)
    ]
    for node in nodes:
        node.set_peers([n.p2p_address for n in nodes if n is not node])
    return nodes


def follower_layout(count: int, regions: list[str], light_share: float) -> list[tuple[str, str]]:
    """``count`` (type, region) pairs: regions in turn, about ``light_share`` of them light."""
    lights = round(count * light_share)
    types = ["full"] * (count - lights) + ["light"] * lights
    return [(t, regions[i % len(regions)]) for i, t in enumerate(types)]


def add_followers(
    base_dir: Path,
    validators: list[LocalNode],
    followers: list[tuple[str, str]],
    config: dict | None = None,
) -> list[LocalNode]:
    """Full and light nodes, ``(type, region)`` each, bootstrapping from the validators."""
    seeds = [v.p2p_address for v in validators]
    return [
        LocalNode(
            Path(base_dir) / f"{node_type}{i + 1}",
            validators[0].genesis,
            crypto.KeyPair.generate(),
            {**(config or {}), "node_type": node_type, "region": region, "peers": seeds},
        )
        for i, (node_type, region) in enumerate(followers)
    ]


def rss_mib(pid: int) -> float:
    """Resident memory of a process (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise LookupError(f"no VmRSS for pid {pid}")


def propagation_ms(arrivals: dict[str, dict[int, int]], validators: set[str]) -> dict[int, int]:
    """Per height every node has: the time from its first commit (the earliest validator)
    to the last of all nodes learning of it. ``arrivals``: node -> height -> unix ms."""
    common = None
    for seen in arrivals.values():
        common = set(seen) if common is None else common & set(seen)
    out = {}
    for height in sorted(common or ()):
        first = min(arrivals[v][height] for v in validators)
        out[height] = max(seen[height] for seen in arrivals.values()) - first
    return out


def start_network(
    workdir: Path, nodes: int, validators: int, light_share: float, regions: list[str]
) -> list[LocalNode]:
    """``validators`` validators, then full and light nodes bootstrapping from them."""
    vals = local_net(workdir, validators, {})
    followers = add_followers(
        workdir, vals, follower_layout(nodes - validators, regions, light_share)
    )
    start_all(vals)
    try:
        start_all(followers, timeout=180)
    except BaseException:
        for v in vals:
            v.stop()
        raise
    return vals + followers


def wait_converged(nodes: list[LocalNode], timeout: float) -> float:
    """Until every node has a block and all are within one block; returns seconds taken."""
    started = time.monotonic()
    while True:
        heights = [n.status()["height"] for n in nodes]
        if min(heights) > 0 and max(heights) - min(heights) <= 1:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            behind = [(n.data_dir.name, h) for n, h in zip(nodes, heights, strict=True)]
            raise TimeoutError(f"not converged after {timeout:g} s: {behind}")
        time.sleep(0.5)


def topology_summary(nodes: list[LocalNode]) -> dict:
    """Per node its peers; per type the fewest same-region super/full peers any has."""
    summary: dict = {"min_same_region_upstream": {}, "validator_peers": []}
    for n in nodes:
        status = n.status()
        peers = n.get("/api/v1/network/peers")[1]["peers"]
        same = sum(p["region"] == status["region"] and p["node_type"] != "light" for p in peers)
        kind = "validator" if n.config.get("node_type", "super") == "super" else status["node_type"]
        best = summary["min_same_region_upstream"].get(kind)
        summary["min_same_region_upstream"][kind] = same if best is None else min(best, same)
        if kind == "validator":
            summary["validator_peers"].append(len(peers))
    return summary
