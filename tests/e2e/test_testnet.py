"""The rollout playbook on testbed hosts: ops/playbooks/testnet.yml brings up 4 genesis
validators in regions na, eu, ap and sa plus a monitoring host, exactly as ``make testnet``
does (ops/testnet.py writes the inventory and runs ansible-playbook).

The session's shared testnet (tests/e2e_testnet.py): a ``--check --diff`` run against the
fresh hosts, the rollout, testinfra checks of every validator host, a second run that
changes nothing, ``--check --diff`` against the deployed network, a refused second genesis,
and restart.yml. Run alone (as root; ``-s`` prints the measured times):

    .venv/bin/python -m pytest -p no:cacheprovider -s tests/e2e/test_testnet.py
"""

import json
import re
import tomllib

import pytest
import testinfra

import e2e_testnet
import testbed as tb
from e2e_testnet import NAME, REGIONS, Testnet, testnet
from qnet.localnode import http, wait_for

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


def infra_host(network: Testnet, name: str):
    """A testinfra host for ``name``, over ssh with the testbed's key."""
    options = " ".join(tb.SSH_OPTIONS)
    return testinfra.get_host(
        f"ssh://root@{network.host(name).address}",
        ssh_identity_file=str(network.bed.key),
        ssh_extra_args=f"{options} -o BatchMode=yes",
    )


def status(network: Testnet, name: str) -> dict:
    return e2e_testnet.status(network.host(name))


def show(run: testnet.Run) -> str:
    """The end of a run's output, for assertion messages."""
    return run.output[-6000:]


@pytest.fixture(scope="module")
def network(shared_net):
    for what, run in shared_net.runs.items():
        print(f"\ntestnet.yml ({what}): {run.seconds:.1f} s")
    return shared_net


def test_check_mode_on_fresh_hosts_runs_cleanly_and_changes_nothing(network):
    run = network.runs["check fresh"]
    assert run.returncode == 0 and not run.failed, show(run)
    assert sorted(run.recap) == network.inventory_hosts()
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
    first = {name: status(network, name) for name in VALIDATORS}
    for name, region in zip(VALIDATORS, REGIONS, strict=True):
        mine = first[name]
        assert (mine["node_type"], mine["region"]) == ("super", region)
        assert in_genesis[mine["node_id"]] == region
        assert mine["version"] == testnet.project_version()
        assert mine["genesis_hash"] == first[VALIDATORS[0]]["genesis_hash"]
        assert mine["peers"] >= len(VALIDATORS) - 1
    wait_for(
        lambda: all(status(network, n)["height"] > first[n]["height"] for n in VALIDATORS),
        30,
        "the validators to commit",
    )
    report = testnet.status_report(network.inventory)
    for name, region in zip(VALIDATORS, REGIONS, strict=True):
        row = rf"^{name}\s+{re.escape(network.host(name).address)}\s+{region}\s+super\s+\d+\s+3\s"
        assert re.search(row, report, re.MULTILINE), report
        api = e2e_testnet.api(network.host(name))
        for page in ("wallet", "status"):  # the wheel carries the built pages
            assert f"{name}: {api}/{page}\n" in report, report
            code, html = http("GET", f"{api}/{page}")
            assert code == 200 and "/static/" in html, (page, code, html[:300])


@pytest.mark.parametrize("name", VALIDATORS)
def test_validator_host_is_deployed_and_hardened(network, name):
    host = infra_host(network, name)
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
    assert sorted(run.changed) == network.inventory_hosts()


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
    assert not infra_host(network, name).service("qnet-node").is_running
    assert testnet.node_status(network.host(name).address) is None
    height = status(network, witness)["height"]
    wait_for(  # three of four: still a quorum
        lambda: status(network, witness)["height"] > height,
        30,
        "the chain to advance with one validator stopped",
    )
    again = network.run("stop.yml", "-l", name)
    assert again.returncode == 0 and again.changed == {name: 0}, show(again)

    started = network.run("start.yml", "-l", name)
    assert started.returncode == 0 and started.changed == {name: 1}, show(started)
    assert infra_host(network, name).service("qnet-node").is_running
    assert status(network, name)["height"] > height


def test_restart_restarts_one_validator_and_it_catches_up(network):
    name = VALIDATORS[1]
    host = infra_host(network, name)
    pid = host.check_output("systemctl show --property MainPID --value qnet-node")
    run = network.run("restart.yml", "-l", name)
    assert run.returncode == 0 and not run.failed, show(run)
    assert run.changed == {name: 1}, run.changed
    assert "Wait until the node commits blocks, with its peers and in step with them" in run.output
    assert host.check_output("systemctl show --property MainPID --value qnet-node") != pid
    restarted = status(network, name)
    others = max(status(network, n)["height"] for n in VALIDATORS if n != name)
    assert restarted["sync_lag_blocks"] <= 10 and restarted["height"] >= others - 10
    assert restarted["uptime_s"] < run.seconds


def test_the_network_directory_is_private(network):
    assert network.network_dir.stat().st_mode & 0o777 == 0o700
    assert (network.network_dir / "keys").stat().st_mode & 0o777 == 0o700
    for key in (network.network_dir / "keys").iterdir():
        assert key.stat().st_mode & 0o777 == 0o600
