"""The rollout playbook on testbed hosts: ops/playbooks/testnet.yml brings up 4 genesis
validators in regions na, eu, ap and sa plus a monitoring host, exactly as ``make testnet``
does (ops/testnet.py writes the inventory and runs ansible-playbook).

One testbed for the module: a ``--check --diff`` run against the fresh hosts, the rollout,
testinfra checks of every validator host, a second run that changes nothing, ``--check
--diff`` against the deployed network, a refused second genesis, and restart.yml. Run alone
(as root; ``-s`` prints the measured times):

    .venv/bin/python -m pytest -p no:cacheprovider -s tests/e2e/test_testnet.py
"""

import json
import re
import sys
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import testinfra

import testbed as tb

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ops"))
import testnet  # noqa: E402  (ops/testnet.py: artifacts, inventory, ansible-playbook runs)

NAME, SUBNET = "qt", "10.79.1"
REGIONS = testnet.REGIONS  # one validator each, hosts qt-1..qt-4; qt-5 is the monitoring host
VALIDATORS = [f"{NAME}-{i + 1}" for i in range(len(REGIONS))]
HARDENING = {
    "User": "qnet",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/qnet",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "PrivateUsers": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "2 3",
    "StartLimitBurst": "5",
    "StartLimitIntervalUSec": "5min",
    "UMask": "0077",
}

pytestmark = pytest.mark.timeout(900)


class Network:
    """The module's testbed, its inventory and what the playbook runs reported."""

    def __init__(self, bed: tb.Testbed, inventory: Path, network_dir: Path):
        self.bed = bed
        self.inventory = inventory
        self.network_dir = network_dir
        self.runs: dict[str, testnet.Run] = {}
        self.left_after_check: list[str] = []  # what the check-mode run made (nothing)

    def run(self, playbook: str, *args: str) -> testnet.Run:
        return testnet.run_playbook(self.inventory, playbook, *args, state=self.bed.dir)

    def host(self, name: str) -> tb.Host:
        return next(h for h in self.bed.hosts if h.name == name)

    def status(self, name: str) -> dict:
        status = testnet.node_status(self.host(name).address)
        assert status is not None, f"{name} does not answer"
        return status

    def testinfra(self, name: str):
        """A testinfra host for ``name``, over ssh with the testbed's key."""
        options = " ".join(tb.SSH_OPTIONS)
        return testinfra.get_host(
            f"ssh://root@{self.host(name).address}",
            ssh_identity_file=str(self.bed.key),
            ssh_extra_args=f"{options} -o BatchMode=yes",
        )


def show(run: testnet.Run) -> str:
    """The end of a run's output, for assertion messages."""
    return run.output[-6000:]


@pytest.fixture(scope="module")
def network(can_boot, tmp_path_factory):
    """The testbed (4 validators, 1 monitoring host) after a check-mode run against the fresh
    hosts and the real rollout; both runs are in ``runs``."""
    tb.Testbed(0, NAME).down()  # a testbed left by an interrupted run of this module
    home = tmp_path_factory.mktemp("testnet")
    with ThreadPoolExecutor(2) as pool:
        wheelhouse = pool.submit(testnet.build_artifacts, home / "artifacts")
        booted = pool.submit(tb.Testbed(len(REGIONS) + 1, NAME, SUBNET).up)
        try:
            wheelhouse.result()
        finally:
            bed = booted.result()
    try:
        testnet.build_debs(tb.image())
        network_dir = bed.dir / "network"
        inventory = testnet.write_inventory(
            bed, bed.dir / "testnet-inventory.yml", network_dir, home / "artifacts"
        )
        net = Network(bed, inventory, network_dir)
        net.runs["check fresh"] = net.run("testnet.yml", "--check", "--diff")
        made = "ls -d /opt/qnet /var/lib/qnet /etc/systemd/system/qnet-node.service 2>/dev/null"
        for host in bed.hosts:
            net.left_after_check += [f"{host.name}:{p}" for p in bed.ssh(host, made).stdout.split()]
        if network_dir.exists():
            net.left_after_check.append(str(network_dir))
        net.runs["rollout"] = net.run("testnet.yml")
        for what, run in net.runs.items():
            print(f"\ntestnet.yml ({what}): {run.seconds:.1f} s")
        yield net
    finally:
        testnet.close_connections(bed.dir)
        bed.down()


def test_check_mode_on_fresh_hosts_runs_cleanly_and_changes_nothing(network):
    run = network.runs["check fresh"]
    assert run.returncode == 0 and not run.failed, show(run)
    assert sorted(run.recap) == sorted(["localhost", *(h.name for h in network.bed.hosts)])
    # It said what it would do (the diff of the unit it would write) and did none of it.
    assert all(run.changed[name] > 0 for name in VALIDATORS), run.changed
    assert "+ExecStart=/opt/qnet/current/bin/qnet-node --data-dir /var/lib/qnet" in run.output
    assert network.left_after_check == []


def test_rollout_brings_up_validators_that_commit_and_peer(network):
    run = network.runs["rollout"]
    assert run.returncode == 0 and not run.failed, show(run)
    genesis = json.loads((network.network_dir / "genesis.json").read_text())
    in_genesis = {v["node_id"]: v["region"] for v in genesis["validators"]}
    assert sorted(in_genesis.values()) == sorted(REGIONS)
    assert {s["api_url"] for s in genesis["seeds"]} == {
        f"http://{network.host(name).address}:7370" for name in VALIDATORS
    }
    first = {name: network.status(name) for name in VALIDATORS}
    for name, region in zip(VALIDATORS, REGIONS, strict=True):
        status = first[name]
        assert (status["node_type"], status["region"]) == ("super", region)
        assert in_genesis[status["node_id"]] == region
        assert status["version"] == testnet.project_version()
        assert status["genesis_hash"] == first[VALIDATORS[0]]["genesis_hash"]
        assert status["peers"] >= len(VALIDATORS) - 1
    deadline = time.monotonic() + 30
    while not all(network.status(n)["height"] > first[n]["height"] for n in VALIDATORS):
        assert time.monotonic() < deadline, "the validators stopped committing"
        time.sleep(0.5)
    report = testnet.status_report(network.inventory)
    for name, region in zip(VALIDATORS, REGIONS, strict=True):
        row = rf"^{name}\s+{re.escape(network.host(name).address)}\s+{region}\s+super\s+\d+\s+3\s"
        assert re.search(row, report, re.MULTILINE), report


@pytest.mark.parametrize("name", VALIDATORS)
def test_validator_host_is_deployed_and_hardened(network, name):
    host = network.testinfra(name)
    region = REGIONS[VALIDATORS.index(name)]
    service = host.service("qnet-node")
    assert service.is_enabled and service.is_running

    user = host.user("qnet")
    assert user.exists and user.shell == "/usr/sbin/nologin" and user.uid < 1000
    main_pid = host.check_output("systemctl show --property MainPID --value qnet-node")
    assert host.check_output(f"ps -o user= -p {main_pid}") == "qnet"

    props = host.check_output(
        "systemctl show qnet-node " + " ".join(f"--property {p}" for p in HARDENING)
    )
    shown = dict(line.split("=", 1) for line in props.splitlines())
    assert shown == HARDENING
    assert "@system-service" not in host.check_output(
        "systemctl show --property SystemCallFilter --value qnet-node"
    )  # shown expanded: a filter is in place
    # The kernel's view of the running node: no capabilities, no new privileges, seccomp.
    proc = host.file(f"/proc/{main_pid}/status").content_string
    fields = dict(line.split(":\t", 1) for line in proc.splitlines() if ":\t" in line)
    assert fields["CapEff"].strip() == fields["CapBnd"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2"

    key = host.file("/var/lib/qnet/node_key")
    assert (key.user, key.group, key.mode) == ("qnet", "qnet", 0o600)
    controller_key = (network.network_dir / "keys" / f"{name}.key").read_text().strip()
    assert key.content_string.strip() == controller_key
    data = host.file("/var/lib/qnet")
    assert (data.user, data.group, data.mode) == ("qnet", "qnet", 0o750)

    config = tomllib.loads(host.file("/var/lib/qnet/config.toml").content_string)
    others = [f"{network.host(n).address}:7371" for n in VALIDATORS if n != name]
    assert config == {
        "node_type": "super",
        "region": region,
        "api_host": "0.0.0.0",
        "api_port": 7370,
        "p2p_host": "0.0.0.0",
        "p2p_port": 7371,
        "peers": others,
    }
    genesis = host.file("/var/lib/qnet/genesis.json").content_string
    assert genesis == (network.network_dir / "genesis.json").read_text()

    version = testnet.project_version()
    current = host.file("/opt/qnet/current")
    assert current.is_symlink and current.linked_to == f"/opt/qnet/releases/{version}"
    release = host.file(f"/opt/qnet/releases/{version}/bin/qnet-node")
    assert release.user == "root" and not release.mode & 0o022
    for port in (7370, 7371):
        assert host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_second_run_changes_nothing(network):
    run = network.run("testnet.yml")
    network.runs["second"] = run
    print(f"\ntestnet.yml (second run): {run.seconds:.1f} s")
    assert run.returncode == 0 and not run.failed, show(run)
    assert set(run.changed.values()) == {0}, (run.changed, show(run))
    assert set(run.changed) == {"localhost", *(h.name for h in network.bed.hosts)}


def test_check_diff_on_the_deployed_network_changes_nothing(network):
    run = network.run("testnet.yml", "--check", "--diff")
    assert run.returncode == 0 and not run.failed, show(run)
    assert set(run.changed.values()) == {0}, (run.changed, show(run))


def test_an_existing_genesis_is_never_regenerated(network):
    genesis = network.network_dir / "genesis.json"
    before = genesis.read_bytes()
    other_chain = network.run("testnet.yml", "-l", "localhost", "-e", "qnet_chain_id=another")
    assert other_chain.returncode != 0
    assert "is the genesis of another network than the inventory describes" in other_chain.output

    key = network.network_dir / "keys" / f"{VALIDATORS[1]}.key"
    aside = key.with_name("aside")
    key.rename(aside)
    try:
        lost_key = network.run("testnet.yml", "-l", "localhost")
    finally:
        aside.rename(key)
    assert lost_key.returncode != 0
    assert f"the node keys of {VALIDATORS[1]} are neither in" in lost_key.output
    assert not aside.exists() and genesis.read_bytes() == before
    assert sorted(p.name for p in key.parent.iterdir()) == [f"{n}.key" for n in VALIDATORS]


def test_stop_and_start_one_validator_while_the_others_commit(network):
    name, witness = VALIDATORS[2], VALIDATORS[0]
    stopped = network.run("stop.yml", "-l", name)
    assert stopped.returncode == 0 and stopped.changed == {name: 1}, show(stopped)
    assert not network.testinfra(name).service("qnet-node").is_running
    assert testnet.node_status(network.host(name).address) is None
    height = network.status(witness)["height"]
    deadline = time.monotonic() + 30
    while network.status(witness)["height"] <= height:  # three of four: still a quorum
        assert time.monotonic() < deadline, "the chain stalled with one validator stopped"
        time.sleep(0.5)
    again = network.run("stop.yml", "-l", name)
    assert again.returncode == 0 and again.changed == {name: 0}, show(again)

    started = network.run("start.yml", "-l", name)
    assert started.returncode == 0 and started.changed == {name: 1}, show(started)
    assert network.testinfra(name).service("qnet-node").is_running
    assert network.status(name)["height"] > height


def test_restart_restarts_one_validator_and_it_catches_up(network):
    name = VALIDATORS[1]
    host = network.testinfra(name)
    pid = host.check_output("systemctl show --property MainPID --value qnet-node")
    run = network.run("restart.yml", "-l", name)
    assert run.returncode == 0 and not run.failed, show(run)
    assert run.changed == {name: 1}, run.changed
    assert "Wait until the node commits blocks, with its peers and in step with them" in run.output
    assert host.check_output("systemctl show --property MainPID --value qnet-node") != pid
    restarted = network.status(name)
    others = max(network.status(n)["height"] for n in VALIDATORS if n != name)
    assert restarted["sync_lag_blocks"] <= 10 and restarted["height"] >= others - 10
    assert restarted["uptime_s"] < run.seconds


def test_the_network_directory_is_private(network):
    assert network.network_dir.stat().st_mode & 0o777 == 0o700
    assert (network.network_dir / "keys").stat().st_mode & 0o777 == 0o700
    for key in (network.network_dir / "keys").iterdir():
        assert key.stat().st_mode & 0o777 == 0o600
