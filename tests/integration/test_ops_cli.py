"""``qnet-ops`` reads its hosts from an Ansible inventory and says, per host, what went
wrong; against real hosts: tests/e2e (status across the fleet, restart that catches up)."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qnet.ops import group_addresses, load_hosts

OPS = str(Path(sys.executable).parent / "qnet-ops")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when we return: connections are refused


@pytest.fixture
def inventory(tmp_path) -> Path:
    port = closed_port()
    local = {
        "ansible_host": "127.0.0.1",
        "ansible_port": port,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": "/nonexistent/key",
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
    }
    data = {
        "all": {
            "children": {
                "genesis": {"hosts": {"v1": local, "v2": {**local, "qnet_api_port": 7380}}},
                "full": {"hosts": {"f1": local}},
                "monitoring": {"hosts": {"m1": local}},
                "region_eu": {"hosts": {"v1": None, "f1": None}},
                "region_na": {"hosts": {"v2": None}},
            }
        }
    }
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_node_hosts_come_from_the_inventory_groups(inventory):
    hosts = {h.name: h for h in load_hosts(str(inventory))}
    assert set(hosts) == {"v1", "v2", "f1"}  # the monitoring host runs no node
    assert (hosts["v1"].node_type, hosts["v1"].region) == ("super", "eu")
    assert (hosts["f1"].node_type, hosts["f1"].region) == ("full", "eu")
    assert (hosts["v2"].region, hosts["v2"].api_port) == ("na", 7380)
    assert hosts["v1"].check_host_key is False and hosts["v1"].key_file == "/nonexistent/key"
    assert {h.name for h in load_hosts(str(inventory), "region_eu")} == {"v1", "f1"}


def test_a_groups_hosts_come_with_the_address_ansible_reaches_them_at(inventory):
    assert group_addresses(str(inventory), "monitoring") == {"m1": "127.0.0.1"}
    assert group_addresses(str(inventory), "region_eu") == {"v1": "127.0.0.1", "f1": "127.0.0.1"}
    assert group_addresses(str(inventory), "loadgen") == {}


def test_every_unreachable_host_gets_its_own_error(inventory):
    done = subprocess.run(
        [OPS, "-i", str(inventory), "--json", "status"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["hosts"] == []
    assert set(report["errors"]) == {"v1", "v2", "f1"}
    assert all("unreachable" in message for message in report["errors"].values())
    table = subprocess.run(
        [OPS, "-i", str(inventory), "restart", "f1"], capture_output=True, text=True, timeout=120
    )
    assert table.returncode == 1 and table.stderr.count("error: f1") == 1


def test_a_bad_inventory_is_one_clear_error(tmp_path):
    (tmp_path / "empty.yml").write_text("all:\n  hosts:\n    lonely: {}\n")
    done = subprocess.run(
        [OPS, "-i", str(tmp_path / "empty.yml"), "status"], capture_output=True, text=True
    )
    assert done.returncode == 1 and "no node hosts" in done.stderr


@pytest.mark.parametrize(
    "args",
    [["stop"], ["restart"], ["start"], ["-l", "region_eu", "restart"], ["--json", "stop"]],
)
def test_changing_nodes_needs_host_names_or_all_and_touches_nothing_without(inventory, args):
    command, flags = args[-1], args[:-1]
    done = subprocess.run(
        [OPS, "-i", str(inventory), *flags, command], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "name the hosts" in done.stderr and "--all" in done.stderr
    assert "unreachable" not in done.stderr and done.stdout == ""


def test_stop_all_goes_host_by_host_and_stops_at_the_first_failure(inventory):
    done = subprocess.run(
        [OPS, "-i", str(inventory), "--json", "stop", "--all"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["hosts"] == [] and list(report["errors"]) == ["v1"]
    assert report["not_done"] == ["v2", "f1"]  # never tried after v1 failed
    table = subprocess.run(
        [OPS, "-i", str(inventory), "-l", "region_eu", "restart", "--all"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert table.returncode == 1
    assert "[1/2] restart v1: failed" in table.stderr
    assert "not done (stopped at the first failure): f1" in table.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["resync", "v1"], "--from FILE or --source HOST2"),
        (["resync", "v1", "--source", "v1"], "another host"),
        (["resync", "nosuch", "--source", "v1"], "nosuch is not a node host"),
        (["resync", "v1", "v2", "--source", "f1"], "unexpected extra argument"),
    ],
)
def test_resync_is_for_one_named_host_with_one_source(inventory, args, message):
    done = subprocess.run(
        [OPS, "-i", str(inventory), *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_resync_from_a_file_that_is_no_snapshot_fails_before_any_host_is_touched(
    inventory, tmp_path
):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a snapshot")
    done = subprocess.run(
        [OPS, "-i", str(inventory), "--json", "resync", "f1", "--from", str(junk)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    errors = json.loads(done.stdout)["errors"]
    assert "not a QNet snapshot" in errors["f1"] and "unreachable" not in errors["f1"]
