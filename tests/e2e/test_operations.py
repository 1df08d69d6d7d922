"""The operations playbooks on testbed hosts: join.yml, upgrade.yml (rolling, with automatic
rollback), backup.yml and restore.yml, and qnet-ops, against the session's shared testnet
(tests/e2e_testnet.py: 4 genesis validators in regions na, eu, ap, sa, a monitoring host),
plus its spare host, which joins as a full node in a fifth region and is found by the
monitoring host's Prometheus through service discovery.

The releases are real: the wheelhouses of the tree's version, of a copy of the tree with the
next patch version, and of a copy whose ``qnet-node`` exits 3 at start, each built the way
``make artifacts`` builds one (ops/testnet.py's ``build_artifacts``).

Run alone (as root; ``-s`` prints the measured figures):

    .venv/bin/python -m pytest -p no:cacheprovider -s tests/e2e/test_operations.py
"""

import itertools
import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import testbed as tb
from commands import run as run_command
from e2e_testnet import (
    BIN,
    OWNER,
    PASSWORD,
    Load,
    api,
    block,
    build_release,
    cli,
    committed_ids,
    get,
    next_versions,
    set_version,
    status,
    testnet,
)
from qnet.localnode import LocalNode, http, wait_for

REGIONS = ("na", "eu", "ap", "sa")  # the genesis validators', in host order
JOIN_REGION = "oc"  # none of the validators is there
# Playbook runs get these, so that a broken release is found quickly.
START_TIMEOUT_S = 20

pytestmark = pytest.mark.timeout(900)


# ---- the network ----------------------------------------------------------------------------


def precommitters(host: tb.Host, height: int) -> set[str]:
    return {p["validator"] for p in block(host, height)["certificate"]["precommits"]}


@pytest.fixture(scope="module")
def net(shared_net):
    """The shared testnet, with the next two releases built beside its own."""
    base = testnet.project_version()
    good, broken = next_versions(base)
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        builds = [
            pool.submit(build_release, shared_net.artifacts, good),
            pool.submit(build_release, shared_net.artifacts, broken, True),
        ]
        for build in builds:
            build.result()
    shared_net.base, shared_net.good, shared_net.broken = base, good, broken
    print(f"\nreleases {good}, {broken}: {time.monotonic() - started:.1f} s")
    return shared_net


# ---- b. a community node joins --------------------------------------------------------------


def test_join_activates_a_full_node_in_a_new_region(net):
    joiner = net.spare

    def add_joiner(everyone: dict) -> None:
        everyone["children"]["full"]["hosts"] = {joiner.name: {}}
        everyone["children"][f"region_{JOIN_REGION}"] = {"hosts": {joiner.name: {}}}

    prometheus_config = net.ssh(net.monitor, "sha256sum /etc/prometheus/prometheus.yml")
    net.edit_inventory(add_joiner)
    owner = {"qnet_join_owner": OWNER, "qnet_join_keystore": str(net.keystore),
             "qnet_join_password": PASSWORD}  # fmt: skip
    run = net.run("join.yml", "-l", joiner.name, **owner)
    assert run.returncode == 0, run.output[-6000:]
    print(f"join.yml: {run.seconds:.1f} s")

    mine = status(joiner)
    assert (mine["node_type"], mine["region"], mine["version"]) == ("full", JOIN_REGION, net.base)
    # Caught up: a block committed meanwhile may be on its way to it for a moment.
    wait_for(lambda: status(joiner)["sync_lag_blocks"] == 0, 10, "the full node to catch up")
    record = get(f"{api(net.validators[0])}/api/v1/nodes/{mine['node_id']}")
    assert (record["node_type"], record["region"], record["owner"]) == (
        "full",
        JOIN_REGION,
        net.owner,
    )
    # Its key was made on the controller, beside the validators' keys.
    key_file = net.network_dir / "keys" / f"{joiner.name}.key"
    assert (
        json.loads(cli("--json", "node", "id", str(key_file)).stdout)["node_id"] == mine["node_id"]
    )

    # A full node dials the validators as its seeds: they list it, with its type and region.
    def seen_by() -> list[str]:
        found = []
        for v in net.validators:
            peers = cli("--node", api(v), "--json", "network", "peers")
            assert peers.returncode == 0, peers.stderr
            for p in json.loads(peers.stdout)["peers"]:
                if p["node_id"] == mine["node_id"]:
                    assert (p["node_type"], p["region"]) == ("full", JOIN_REGION), p
                    found.append(v.name)
        return found

    validators = wait_for(seen_by, 30, "a validator to list the new full node as its peer")
    print(f"the full node in {JOIN_REGION} is a peer of {', '.join(validators)}")

    # The monitoring host's Prometheus scrapes it, found through the validators' service
    # discovery: nothing on the monitoring host was changed for it.
    def scraped() -> dict | None:
        targets = get(f"{net.prometheus}/api/v1/targets")["data"]["activeTargets"]
        return next(
            (
                t
                for t in targets
                if t["labels"]["instance"] == mine["node_id"] and t["health"] == "up"
            ),
            None,
        )

    joined_at = time.monotonic()
    target = wait_for(scraped, 60, "Prometheus to scrape the new full node")
    print(f"Prometheus scraped it {time.monotonic() - joined_at:.1f} s after join.yml ended")
    assert target["labels"] == {
        "instance": mine["node_id"],
        "job": "qnet",
        "node_type": "full",
        "region": JOIN_REGION,
        "community": "true",  # not in the inventory: its alerts are a person's, not recovery's
    }
    assert target["scrapeUrl"] == f"http://{joiner.address}:7370/metrics"
    assert target["discoveredLabels"]["__meta_qnet_node_id"] == mine["node_id"]
    assert net.ssh(net.monitor, "sha256sum /etc/prometheus/prometheus.yml") == prometheus_config
    assert run.changed.get(net.monitor.name, 0) == 0
    before = status(joiner)["height"]
    wait_for(lambda: status(joiner)["height"] > before, 30, "the full node to follow the chain")

    again = net.run("join.yml", "-l", joiner.name, **owner)
    assert again.returncode == 0, again.output[-6000:]
    assert sum(again.changed.values()) == 0, again.output[-6000:]


# ---- a. rolling upgrade under load, and a broken release rolled back ------------------------


UPGRADED = re.compile(r"([\w.-]+): qnet (\S+) -> (\S+), healthy after ([\d.]+) s")


def test_rolling_upgrade_under_load_keeps_committing_and_loses_nothing(net):
    hosts = net.hosts()
    set_version(net, net.good)

    check = net.run("upgrade.yml", "--check")
    assert check.returncode == 0, check.output[-6000:]
    assert all(check.changed.values()), check.changed  # it tells what it would do, and
    for host in hosts:  # does none of it
        assert status(host)["version"] == net.base
        assert net.bed.ssh(host, f"test -e /opt/qnet/releases/{net.good}").returncode == 1

    watcher = net.validators[-1]  # upgraded last: it answers for the longest
    first = status(watcher)["height"]
    with Load([api(v) for v in net.validators], net.senders, net.network) as load:
        wait_for(lambda: len(load.accepted) > 200, 30, "the load to be under way")
        run = net.run("upgrade.yml")
        upgraded_at = status(watcher)["height"]
    assert run.returncode == 0, run.output[-6000:]
    assert load.accepted, "no transaction was accepted"

    for host in hosts:
        assert status(host)["version"] == net.good, host.name
        # Caught up: a node that is following the chain can be one block behind at the moment
        # a peer has committed the next one, so the lag is awaited, not sampled.
        wait_for(
            lambda host=host: status(host)["sync_lag_blocks"] == 0, 15, f"{host.name} to catch up"
        )
        link = net.ssh(host, "readlink /opt/qnet/current").strip()
        assert link == f"/opt/qnet/releases/{net.good}"
        # The old release stays beside the new one, for a rollback.
        net.ssh(host, f"test -x /opt/qnet/releases/{net.base}/bin/qnet-node")

    # Every accepted transaction is committed (the mempools drain within a few blocks).
    def all_committed() -> bool:
        head = status(watcher)["height"]
        ids, _ = committed_ids(watcher, first + 1, head)
        return load.accepted <= ids

    try:
        wait_for(all_committed, 60, "every accepted transaction to be committed")
    except AssertionError as timeout:
        ids, _ = committed_ids(watcher, first + 1, status(watcher)["height"])
        lost = sorted(load.accepted - ids)
        answers = [http("GET", f"{api(watcher)}/api/v1/transactions/{t}")[1] for t in lost[:3]]
        raise AssertionError(
            f"{len(lost)} of {len(load.accepted)} accepted transactions lost: {answers}"
        ) from timeout

    _, times = committed_ids(watcher, first, upgraded_at)
    longest_gap_s = max(b - a for a, b in itertools.pairwise(times)) / 1000
    per_host = {m[0]: float(m[3]) for m in UPGRADED.findall(run.output)}
    print(
        f"\nrolling upgrade {net.base} -> {net.good} of {len(hosts)} nodes under load: "
        f"{run.seconds:.1f} s; per node (s): {per_host}\n"
        f"load: {len(load.accepted)} transactions accepted, all committed; refused and sent "
        f"again: {dict(load.refused)}; batches no validator took: {load.unsent}\n"
        f"longest gap between consecutive blocks during the upgrade: {longest_gap_s:.2f} s "
        f"({upgraded_at - first} blocks)"
    )
    assert set(per_host) == {h.name for h in hosts}
    assert longest_gap_s < 10, f"the chain stalled for {longest_gap_s:.1f} s"

    again = net.run("upgrade.yml")
    assert again.returncode == 0, again.output[-6000:]
    assert sum(again.changed.values()) == 0, again.output[-6000:]


def test_a_broken_release_is_rolled_back_on_the_first_validator(net):
    before = {h.name: status(h)["version"] for h in net.hosts()}
    previous = before[net.validators[0].name]
    run = net.run(
        "upgrade.yml", qnet_version=net.broken, qnet_upgrade_start_timeout=START_TIMEOUT_S
    )
    assert run.returncode != 0, run.output[-6000:]
    first = net.validators[0]
    message = re.search(r"UPGRADE FAILED on (\S+): qnet (\S+) did not pass the gate: (.*?)\. "
                        r"ROLLED BACK to qnet (\S+)", run.output, re.DOTALL)  # fmt: skip
    assert message, run.output[-6000:]
    assert message.group(1, 2, 4) == (first.name, net.broken, previous), message.group(0)
    assert "exited with status 3" in message.group(3), message.group(3)
    assert "broken on purpose" in message.group(3), message.group(3)
    healthy_after = float(re.search(r"healthy again ([\d.]+)\s+s after", run.output).group(1))
    print(
        f"\nbroken release {net.broken}: upgrade.yml failed after {run.seconds:.1f} s; "
        f"{first.name} rolled back to {previous} and healthy {healthy_after:.1f} s after the "
        f"failure was found"
    )
    assert run.failed == {first.name: 1}

    for host in net.hosts():
        assert status(host)["version"] == before[host.name], host.name
        assert net.ssh(host, "readlink /opt/qnet/current").strip() == (
            f"/opt/qnet/releases/{before[host.name]}"
        )
        untouched = host is not first
        present = net.bed.ssh(host, f"test -e /opt/qnet/releases/{net.broken}").returncode == 0
        assert present != untouched, f"{host.name}: release {net.broken} present: {present}"
    net.wait_advancing(net.validators)


# ---- c. backup, wipe, restore ---------------------------------------------------------------


def test_backup_wipe_and_restore_brings_a_validator_back(net, tmp_path):
    victim, other = net.validators[1], net.validators[0]
    check = net.run("backup.yml", "--check", "-l", victim.name, qnet_backup_dir=str(net.backups))
    assert check.returncode == 0, check.output[-6000:]
    assert not list(net.backups.glob("*.tar.gz"))
    backup = net.run("backup.yml", "-l", victim.name, qnet_backup_dir=str(net.backups))
    assert backup.returncode == 0, backup.output[-6000:]
    files = sorted(net.backups.glob(f"{victim.name}-*-h*.tar.gz"))
    assert len(files) == 1, files
    snapshot_height = int(re.search(r"-h(\d+)\.tar\.gz$", files[0].name).group(1))
    assert net.ssh(victim, "ls -A /var/lib/qnet/snapshots") == ""

    node_id = status(victim)["node_id"]
    net.ssh(
        victim,
        "systemctl stop qnet-node && rm -f /var/lib/qnet/chain.db* /var/lib/qnet/consensus.*",
    )
    assert net.bed.ssh(victim, "test -e /var/lib/qnet/chain.db").returncode == 1

    check = net.run("restore.yml", "--check", "-l", victim.name, qnet_restore_from=str(files[0]))
    assert check.returncode == 0, check.output[-6000:]
    assert net.bed.ssh(victim, "test -e /var/lib/qnet/chain.db").returncode == 1
    assert net.bed.ssh(victim, "systemctl is-active qnet-node").stdout.strip() == "inactive"

    run = net.run("restore.yml", "-l", victim.name, qnet_restore_from=str(files[0]))
    assert run.returncode == 0, run.output[-6000:]
    restored = status(victim)
    assert restored["sync_lag_blocks"] == 0 and restored["height"] >= snapshot_height
    print(
        f"\nbackup of {victim.name} at height {snapshot_height}: {backup.seconds:.1f} s; "
        f"wipe, then restore.yml until caught up: {run.seconds:.1f} s"
    )

    # The same chain: one block hash at a common height.
    common = min(status(victim)["height"], status(other)["height"])
    assert block(victim, common)["header"]["hash"] == block(other, common)["header"]["hash"]
    # It votes again: its precommit is in the certificate of a block committed afterwards.
    since = status(other)["height"]

    def voted() -> int | None:
        head = status(other)["height"]
        return next(
            (h for h in range(since + 1, head + 1) if node_id in precommitters(other, h)), None
        )

    height = wait_for(voted, 60, f"a certificate with {victim.name}'s precommit")
    print(f"{victim.name} signs again: its precommit is in block {height}'s certificate")

    again = net.run("restore.yml", "-l", victim.name, qnet_restore_from=str(files[0]))
    assert again.returncode == 0, again.output[-6000:]
    assert sum(again.changed.values()) == 0, again.output[-6000:]

    # A snapshot of another chain is refused before the node is touched.
    alien = LocalNode.single(tmp_path / "alien", {})
    alien.start()
    try:
        wait_for(lambda: alien.status()["height"] >= 2, 30, "the other chain's blocks")
        made = cli("--json", "node", "snapshot", "--data-dir", str(alien.data_dir),
                   "--out", str(tmp_path / "alien.tar.gz"))  # fmt: skip
        assert made.returncode == 0, made.stderr
    finally:
        alien.stop()
    started = net.ssh(victim, "systemctl show -p ActiveEnterTimestampMonotonic --value qnet-node")
    refused = net.run(
        "restore.yml", "-l", victim.name, qnet_restore_from=str(tmp_path / "alien.tar.gz")
    )
    assert refused.returncode != 0
    assert "refused, nothing was changed" in refused.output, refused.output[-6000:]
    assert sum(refused.changed.values()) == 0
    assert (
        net.ssh(victim, "systemctl show -p ActiveEnterTimestampMonotonic --value qnet-node")
        == started
    )
    net.wait_advancing([victim])


# ---- d. qnet-ops ----------------------------------------------------------------------------


def table(text: str) -> dict[str, dict[str, str]]:
    """qnet-ops' table: host -> {column: cell}."""
    header, *rows = (line.split() for line in text.splitlines() if line.strip())
    return {row[0]: dict(zip(header, row, strict=False)) for row in rows}


def test_qnet_ops_shows_the_fleet_restarts_a_node_and_fetches_logs_and_snapshots(net, tmp_path):
    ops = [str(BIN / "qnet-ops"), "-i", str(net.inventory)]

    def qnet_ops(*args: str) -> subprocess.CompletedProcess:
        done = run_command([*ops, *args], capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"qnet-ops {' '.join(args)}: {done.stderr}"
        return done

    shown = qnet_ops("status")
    fleet = table(shown.stdout)
    assert set(fleet) == {h.name for h in net.hosts()}, shown.stdout
    for host in net.hosts():
        cells = fleet[host.name]
        assert cells["service"] == "active" and int(cells["height"]) > 0, cells
        assert (cells["type"], cells["version"]) == (
            status(host)["node_type"],
            status(host)["version"],
        ), cells
    print(f"\n{shown.stdout}")

    target = net.validators[2]
    pid_before = net.ssh(target, "systemctl show -p MainPID --value qnet-node").strip()
    height_before = status(target)["height"]
    restarted = table(qnet_ops("restart", target.name).stdout)
    caught_up_s = float(restarted[target.name]["caught_up_s"])
    assert net.ssh(target, "systemctl show -p MainPID --value qnet-node").strip() != pid_before
    print(f"qnet-ops restart {target.name}: caught up after {caught_up_s} s")
    # The restarted node follows the chain again, in step with its peers.
    wait_for(
        lambda: (s := status(target))["height"] > height_before and s["sync_lag_blocks"] == 0,
        30,
        f"{target.name} to commit past height {height_before}",
    )

    logs = qnet_ops("logs", target.name).stdout
    assert logs.startswith(f"== {target.name}\n") and "Started qnet-node.service" in logs, logs

    other = net.validators[3]
    taken = table(qnet_ops("snapshot", other.name, "--dest", str(tmp_path)).stdout)[other.name]
    assert Path(taken["file"]).parent == tmp_path and Path(taken["file"]).is_file(), taken
    assert int(taken["height"]) > 0
    net.wait_advancing(net.validators)
