"""The testnet the e2e modules share: ``make testnet``'s rollout (ops/testnet.py writes the
inventory, ops/playbooks/testnet.yml runs) on testbed hosts, once per session.

Hosts ``qt-1``..``qt-4`` are the genesis validators of regions na, eu, ap and sa, ``qt-5``
the monitoring host, and ``qt-6`` a spare that test_operations joins as a community full
node. The genesis funds an owner wallet (for the join) and senders (for load). Monitoring
runs with the test intervals below: Prometheus scrapes and evaluates every 2 s and
Alertmanager groups within 2 s; the rules' ``for:`` durations are the production ones.

The modules use it in this order (tests/e2e/conftest.py sorts them): test_testnet (the
rollout itself, idempotence, stop/start), test_alerting (alerts, dashboards),
test_operations (join, upgrade, backup/restore, qnet-ops), which leaves the fleet on
another release, and test_recovery (qnet-recovery acting on faults, with shorter ``for:``).
tests/drills.py deploys one of its own. Below the testnet: the releases an upgrade goes to,
and a steady load whose every accepted transaction must be committed.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

import testbed as tb
from qnet import crypto, loadgen
from qnet.localnode import http, wait_for
from qnet.tx import Transaction, encode_batch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "ops"))
import testnet  # noqa: E402  (ops/testnet.py: artifacts, inventory, ansible-playbook runs)

NAME, SUBNET = "qt", "10.79.1"
REGIONS = testnet.REGIONS  # one validator each, in host order
OWNER, PASSWORD = "owner", "operations-e2e"  # the community node owner's wallet
SENDERS = 16  # funded in genesis: test_operations' load comes from them
LOAD_KEYS = 4  # funded in genesis: test_alerting's load, for the dashboards
MONITORING_TEST_SETTINGS = {
    "prometheus_scrape_interval": "2s",
    "prometheus_scrape_timeout": "2s",
    "prometheus_evaluation_interval": "2s",
    "prometheus_qnet_sd_refresh_interval": "5s",
    "alertmanager_route_overrides": {"group_wait": "2s", "group_interval": "10s"},
    # The e2e modules restart validators on purpose, many times in 15 minutes (upgrades,
    # restores, qnet-ops): QNetRestartLoop would fire, stay firing for 15 minutes after the
    # last of them, and inhibit the QNetNodeDown that test_recovery needs recovery to act on.
    "prometheus_alert_for_overrides": {"QNetRestartLoop/critical": "1h"},
}
BIN = Path(sys.executable).parent


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "qnet-cli"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def get(url: str, timeout: float = 5) -> dict:
    code, body = http("GET", url, timeout=timeout)
    assert code == 200, f"GET {url}: {code} {body}"
    return body


def api(host: tb.Host) -> str:
    return f"http://{host.address}:7370"


def status(host: tb.Host) -> dict:
    return get(f"{api(host)}/api/v1/status")


class Testnet:
    """The testbed, its inventory and the controller's state: artifacts, keys, wallets."""

    __test__ = False  # not a test class, though its name starts with Test

    def __init__(self, bed: tb.Testbed, home: Path):
        self.bed, self.home = bed, home
        self.inventory = bed.dir / "testnet-inventory.yml"
        self.network_dir = bed.dir / "network"
        self.artifacts = home / "artifacts"
        self.keystore = home / "wallets"
        self.backups = home / "backups"
        self.validators = bed.hosts[: len(REGIONS)]
        self.monitor = bed.hosts[len(REGIONS)]
        self.spare = bed.hosts[len(REGIONS) + 1]
        self.prometheus = f"http://{self.monitor.address}:9090"
        self.alertmanager = f"http://{self.monitor.address}:9093"
        self.runs: dict[str, testnet.Run] = {}
        self.left_after_check: list[str] = []  # what the check-mode run made (nothing)
        self.version = testnet.project_version()

    def run(self, playbook: str, *args: str, **extra) -> testnet.Run:
        argv = [*args]
        if extra:
            argv += ["-e", json.dumps(extra)]
        return testnet.run_playbook(self.inventory, playbook, *argv, state=self.bed.dir)

    def host(self, name: str) -> tb.Host:
        return next(h for h in self.bed.hosts if h.name == name)

    def edit_inventory(self, change) -> None:
        """Apply ``change`` to the inventory's ``all`` mapping, as an operator edits it."""
        everyone = yaml.safe_load(self.inventory.read_text())
        change(everyone["all"])
        self.inventory.write_text(yaml.safe_dump(everyone, sort_keys=False))

    def inventory_hosts(self) -> list[str]:
        """The controller and the hosts of the inventory's groups (the plays' hosts)."""
        groups = yaml.safe_load(self.inventory.read_text())["all"]["children"]
        return sorted({"localhost", *(h for g in groups.values() for h in g.get("hosts") or {})})

    def hosts(self) -> list[tb.Host]:
        """The node hosts the inventory names."""
        groups = yaml.safe_load(self.inventory.read_text())["all"]["children"]
        names = {
            n for g in ("genesis", "full", "light") for n in groups.get(g, {}).get("hosts", {})
        }
        return [h for h in self.bed.hosts if h.name in names]

    def ssh(self, host: tb.Host, command: str) -> str:
        out = self.bed.ssh(host, command)
        assert out.returncode == 0, f"{host.name}: {command}: {out.stderr}"
        return out.stdout

    def heights(self, hosts: list[tb.Host] | None = None) -> dict[str, int]:
        return {h.name: status(h)["height"] for h in hosts or self.validators}

    def wait_advancing(self, hosts: list[tb.Host], blocks: int = 3, timeout: float = 60) -> None:
        """Every host's height moves on by ``blocks``."""
        start = self.heights(hosts)
        wait_for(
            lambda: all(status(h)["height"] >= start[h.name] + blocks for h in hosts),
            timeout,
            f"{[h.name for h in hosts]} to commit {blocks} more blocks",
        )


def deploy(home: Path, name: str = NAME, subnet: str = SUBNET) -> Testnet:
    """Boot the hosts, build the artifacts, fund the wallets in the genesis, run a check-mode
    rollout against the fresh hosts and the real one; the caller takes the testbed down."""
    tb.Testbed(0, name).down()  # a testbed left by an interrupted session
    with ThreadPoolExecutor(2) as pool:
        wheelhouse = pool.submit(testnet.build_artifacts, home / "artifacts")
        booted = pool.submit(tb.Testbed(len(REGIONS) + 2, name, subnet).up)
        try:
            wheelhouse.result()
        finally:
            bed = booted.result()
    net = Testnet(bed, home)
    try:
        testnet.build_debs(tb.image())
        created = cli("--keystore", str(net.keystore), "--json", "wallet", "create", OWNER,
                      env={"QNET_WALLET_PASSWORD": PASSWORD})  # fmt: skip
        assert created.returncode == 0, created.stderr
        net.owner = json.loads(created.stdout)["address"]
        net.senders = [crypto.KeyPair.generate() for _ in range(SENDERS)]
        net.load_keys = [crypto.KeyPair.generate() for _ in range(LOAD_KEYS)]
        funds = {crypto.encode_address(s.address): "1000" for s in net.senders + net.load_keys}
        funds[net.owner] = "5000"
        testnet.write_inventory(bed, net.inventory, net.network_dir, net.artifacts, funds=funds)
        net.edit_inventory(lambda everyone: everyone["vars"].update(MONITORING_TEST_SETTINGS))
        net.runs["check fresh"] = net.run("testnet.yml", "--check", "--diff")
        made = "ls -d /opt/qnet /var/lib/qnet /etc/systemd/system/qnet-node.service 2>/dev/null"
        for host in bed.hosts:
            net.left_after_check += [f"{host.name}:{p}" for p in bed.ssh(host, made).stdout.split()]
        if net.network_dir.exists():
            net.left_after_check.append(str(net.network_dir))
        started = time.monotonic()
        net.runs["rollout"] = net.run("testnet.yml")
        rollout = net.runs["rollout"]
        assert rollout.returncode == 0, rollout.output[-6000:]
        print(f"\nshared testnet: testnet.yml took {time.monotonic() - started:.1f} s")
        served = status(net.validators[0])  # what the load signs for
        net.network = crypto.Network(served["chain_id"], bytes.fromhex(served["genesis_hash"]))
    except BaseException:
        close(net)
        raise
    return net


def close(net: Testnet) -> None:
    testnet.close_connections(net.bed.dir)
    net.bed.down()


# ---- releases and load, for test_operations and the drills' upgrade soak ----------------


def next_versions(version: str) -> tuple[str, str]:
    """The next two patch versions: a good release and a broken one."""
    major, minor, patch = (int(part) for part in re.match(r"(\d+)\.(\d+)\.(\d+)", version).groups())
    return f"{major}.{minor}.{patch + 1}", f"{major}.{minor}.{patch + 2}"


def release_tree(target: Path, version: str, broken: bool = False) -> Path:
    """A copy of the repository's files that make the wheel and its web pages (git ls-files:
    tracked and new, not ignored) with ``version`` in pyproject.toml; ``broken``: its
    qnet-node exits 3 at start."""
    listed = subprocess.run(
        [
            "git",
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
            "--",
            *testnet.SOURCES,
            testnet.WEB_SOURCES,
        ],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is left out
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    pyproject = target / "pyproject.toml"
    text, count = re.subn(
        r'^version = "[^"]+"$',
        f'version = "{version}"',
        pyproject.read_text(),
        count=1,
        flags=re.MULTILINE,
    )
    assert count == 1, "no version line in pyproject.toml"
    pyproject.write_text(text)
    if broken:
        main = target / "node/qnet/main.py"
        docstring = '    """Run a QNet node from DATA_DIR'
        source = main.read_text()
        assert docstring in source, "qnet.main.main() is not where the broken release patches"
        line = source[source.index(docstring) :].split("\n", 1)[0]
        main.write_text(
            source.replace(
                line,
                f"{line}\n    click.echo('qnet-node {version} is broken on purpose', err=True)"
                "\n    raise SystemExit(3)",
                1,
            )
        )
    return target


def build_release(artifacts: Path, version: str, broken: bool = False) -> Path:
    with tempfile.TemporaryDirectory(prefix=f"qe-release-{version}-") as scratch:
        return testnet.build_artifacts(artifacts, release_tree(Path(scratch), version, broken))


def block(host: tb.Host, height: int) -> dict:
    return get(f"{api(host)}/api/v1/blocks/{height}")


def set_version(net: Testnet, version: str) -> None:
    net.edit_inventory(lambda everyone: everyone["vars"].update(qnet_version=version))


class Load:
    """Steady transfers from the funded senders to the validators' APIs, in a thread.

    Each validator has its own senders; a batch a validator does not take (it is down or
    restarting) goes to the next one, and what is refused for a nonce gap (the previous
    transaction went to another validator and has not reached this one yet) is sent again,
    so each sender's transactions arrive in nonce order. Every id a validator accepted is
    kept: each must end up in a block."""

    TICK_S = 0.1  # each sender sends one transaction per tick: 160 tx/s from 16 senders

    def __init__(
        self,
        urls: list[str],
        senders: list[crypto.KeyPair],
        network: crypto.Network,
        each: int = 3_000,
    ):
        sink = crypto.KeyPair.generate().address
        self.urls = urls
        self.queues: dict[bytes, list[Transaction]] = {
            s.address: loadgen.presign([s], network, each, 1_000, sink) for s in senders
        }
        self.next = dict.fromkeys(self.queues, 0)
        self.groups = [[s.address for s in senders[i :: len(urls)]] for i in range(len(urls))]
        self.accepted: set[str] = set()
        self.refused: Counter[str] = Counter()
        self.unsent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load")

    def _send(self, home: int, group: list[bytes]) -> None:
        batch = [self.queues[s][self.next[s]] for s in group if self.next[s] < len(self.queues[s])]
        if not batch:
            return
        body = encode_batch(batch)
        for k in range(len(self.urls)):
            url = self.urls[(home + k) % len(self.urls)]
            try:
                code, answer = http(
                    "POST",
                    f"{url}/api/v1/transactions/batch",
                    body,
                    "application/octet-stream",
                    timeout=3,
                )
            except OSError:
                continue  # down or restarting: the next validator takes it
            if code != 200:
                continue
            refused = {r["index"]: r["code"] for r in answer["rejected"]}
            for i, tx in enumerate(batch):
                code = refused.get(i)
                if code in (None, "duplicate"):  # duplicate: pending already, from a retry
                    self.accepted.add(tx.id.hex())
                if code in (None, "duplicate", "stale_nonce"):
                    self.next[tx.sender] += 1
                else:
                    self.refused[code] += 1
            return
        self.unsent += 1

    def _run(self) -> None:
        tick = time.monotonic()
        while not self._stop.is_set():
            for home, group in enumerate(self.groups):
                self._send(home, group)
            tick += self.TICK_S
            self._stop.wait(max(0.0, tick - time.monotonic()))

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def committed_ids(host: tb.Host, first: int, last: int) -> tuple[set[str], list[int]]:
    """The transaction ids and the header times (ms) of blocks ``first``..``last``."""
    with ThreadPoolExecutor(8) as pool:
        blocks = list(pool.map(lambda h: block(host, h), range(first, last + 1)))
    ids = {t for b in blocks for t in b["transactions"]}
    return ids, [b["header"]["time_ms"] for b in blocks]
