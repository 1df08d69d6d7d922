"""The testnet the e2e modules share: ``make testnet``'s rollout (ops/testnet.py writes the
inventory, ops/playbooks/testnet.yml runs) on testbed hosts, once per session.

Hosts ``qt-1``..``qt-4`` are the genesis validators of regions na, eu, ap and sa, ``qt-5``
the monitoring host, and ``qt-6`` a spare that test_operations joins as a community full
node. The genesis funds an owner wallet (for the join) and senders (for load). Monitoring
runs with the test intervals below: Prometheus scrapes and evaluates every 2 s and
Alertmanager groups within 2 s; the rules' ``for:`` durations are the production ones.

The modules use it in this order (tests/e2e/conftest.py sorts them): test_testnet (the
rollout itself, idempotence, stop/start), test_alerting (alerts, dashboards), and
test_operations (join, upgrade, backup/restore, qnet-ops), which leaves the fleet on
another release.
"""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

import testbed as tb
from qnet import crypto
from qnet.localnode import http, wait_for

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


def deploy(home: Path) -> Testnet:
    """Boot the hosts, build the artifacts, fund the wallets in the genesis, run a check-mode
    rollout against the fresh hosts and the real one; the caller takes the testbed down."""
    tb.Testbed(0, NAME).down()  # a testbed left by an interrupted session
    with ThreadPoolExecutor(2) as pool:
        wheelhouse = pool.submit(testnet.build_artifacts, home / "artifacts")
        booted = pool.submit(tb.Testbed(len(REGIONS) + 2, NAME, SUBNET).up)
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
        testnet.write_inventory(bed, net.inventory, net.network_dir, net.artifacts)
        net.edit_inventory(
            lambda everyone: everyone["vars"].update(
                qnet_genesis_funds=funds, **MONITORING_TEST_SETTINGS
            )
        )
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
        net.chain_id = status(net.validators[0])["chain_id"]
    except BaseException:
        close(net)
        raise
    return net


def close(net: Testnet) -> None:
    testnet.close_connections(net.bed.dir)
    net.bed.down()
