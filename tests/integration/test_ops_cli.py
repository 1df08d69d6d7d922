"""``qnet-ops`` reads its hosts from an Ansible inventory and says, per host, what went
wrong; against real hosts: tests/e2e (status across the fleet, restart that catches up)."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qnet.ops import load_hosts

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
