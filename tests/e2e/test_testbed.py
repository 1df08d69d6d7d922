"""The testbed hosts are what Ansible will meet: real hosts with systemd, sshd and addresses."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import testbed as tb
from qnet.localnode import wait_for

CLI = [sys.executable, tb.__file__]


def reach(peer: str, timeout: float = 3) -> str:
    """A shell command, run on a host, that prints the banner of ``peer``'s sshd."""
    connect = f"socket.create_connection(('{peer}', 22), {timeout})"
    return f'python3 -c "import socket; print({connect}.recv(64).decode().strip())"'


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie is dead, only not yet reaped


def test_every_host_boots_with_systemd_as_pid_1(testbed):
    for host in testbed.hosts:
        out = testbed.ssh(host, "cat /proc/1/comm; hostname; systemctl is-system-running")
        init, name, state = out.stdout.split()
        failed = testbed.ssh(host, "systemctl --failed --no-legend").stdout
        assert (init, name, state) == ("systemd", host.name, "running"), failed
        assert testbed.alive(host) and testbed.leader(host) is not None


def test_hosts_have_their_own_addresses_and_reach_each_other(testbed):
    hosts = testbed.hosts
    assert len({h.address for h in hosts}) == len(hosts) >= 2
    for host, peer in zip(hosts, [*hosts[1:], hosts[0]], strict=True):
        out = testbed.ssh(host, f"ip -4 -o addr show dev eth0 && ip route && {reach(peer.name)}")
        assert out.returncode == 0, out.stderr
        assert f"inet {host.address}/24" in out.stdout
        assert "default" not in out.stdout  # traffic stays on the bridge
        assert out.stdout.splitlines()[-1].startswith("SSH-2.0-OpenSSH"), out.stdout


def test_a_cut_host_is_unreachable_until_healed(testbed):
    victim, other = testbed.hosts[-1], testbed.hosts[0]
    testbed.cut(victim)
    try:
        assert testbed.ssh(other, reach(victim.name, timeout=1)).returncode != 0
        with pytest.raises(OSError):
            socket.create_connection((victim.address, 22), timeout=1)
    finally:
        testbed.heal(victim)
    wait_for(lambda: testbed.ssh(other, reach(victim.name)).returncode == 0, 10, "the heal")
    assert testbed.ssh(victim, "hostname").stdout.strip() == victim.name


def test_a_killed_host_is_gone_at_once_and_boots_again(testbed):
    victim = testbed.hosts[-1]
    systemd = testbed.leader(victim)
    testbed.kill(victim)
    assert not testbed.alive(victim)
    assert not running(systemd)
    with pytest.raises(ConnectionRefusedError):  # its namespace is there, nothing listens
        socket.create_connection((victim.address, 22), timeout=1)
    testbed.start(victim)
    assert testbed.ssh(victim, "systemctl is-system-running").stdout.strip() == "running"


def ansible(*args: str, home: Path) -> dict[str, dict]:
    """Run ansible; the one-line result of each host, by host."""
    env = {**os.environ, "ANSIBLE_HOME": str(home), "ANSIBLE_NOCOLOR": "1", "LC_ALL": "C.UTF-8"}
    exe = Path(sys.executable).parent / "ansible"
    out = subprocess.run([exe, *args, "-o"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    found = re.findall(r"^(\S+) \| SUCCESS => (.*)$", out.stdout, re.MULTILINE)
    return {host: json.loads(result) for host, result in found}


def test_ansible_reaches_every_host_through_the_inventory(testbed, tmp_path):
    inventory = str(testbed.inventory_path)
    names = sorted(h.name for h in testbed.hosts)
    pings = ansible("-i", inventory, "all", "-m", "ping", home=tmp_path)
    assert sorted(pings) == names
    assert all(p["ping"] == "pong" for p in pings.values())
    facts = ansible(
        "-i", inventory, "all", "-m", "setup", "-a", "filter=ansible_service_mgr", home=tmp_path
    )
    assert {f["ansible_facts"]["ansible_service_mgr"] for f in facts.values()} == {"systemd"}


def test_an_inventory_with_groups_reaches_each_group(testbed, tmp_path):
    first, second = testbed.hosts[0].name, testbed.hosts[1].name
    inventory = testbed.write_inventory(
        tmp_path / "inventory.yml", {"genesis": [first, second], "region_eu": [second]}
    )
    assert sorted(ansible("-i", str(inventory), "genesis", "-m", "ping", home=tmp_path)) == [
        first,
        second,
    ]
    assert list(ansible("-i", str(inventory), "region_eu", "-m", "ping", home=tmp_path)) == [second]
    with pytest.raises(ValueError, match="without variables"):
        testbed.write_inventory(tmp_path / "bad.yml", {"genesis": ["nohost"]})


# A testbed of its own, on its own subnet, run through the command line like an operator does.
NAME, SUBNET = "qtbd", "10.77.1"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)


def processes(name: str) -> set[int]:
    """Every process of the testbed ``name``, which another process brought up."""
    bed = tb.Testbed.attach(name)
    return {pid for host in bed.hosts for pid in bed.processes(host)}


def leftovers(name: str, pids: set[int]) -> list[str]:
    """What of the testbed ``name`` is still there."""
    found = [f"process {p}" for p in sorted(pids) if running(p)]
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {n}" for n in namespaces.split() if n.startswith(f"{name}-")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"link {x}" for x in re.findall(r"^\d+: ([^:@]+)", links, re.M) if name in x]
    state = tb.STATE_ROOT / name
    mounts = Path("/proc/mounts").read_text().splitlines()
    found += [f"mount {m}" for m in mounts if str(state) in m]
    found += [f"state {state}"] if state.exists() else []
    found += [f"cgroup {c}" for c in tb.CGROUP_ROOTS if (c / "qnet-testbed" / name).exists()]
    return found


def test_down_from_another_process_leaves_nothing(can_boot):
    try:
        up = cli("up", "--hosts", "2", "--name", NAME, "--subnet", SUBNET)
        assert up.returncode == 0, up.stdout + up.stderr
        status = cli("status", "--name", NAME)
        rows = rf"^({NAME}-\d)\s+{re.escape(SUBNET)}\.\d+\s+up "
        assert re.findall(rows, status.stdout, re.M) == [
            f"{NAME}-1",
            f"{NAME}-2",
        ], status.stdout
        pids = processes(NAME)
        assert len(pids) > 10  # two nspawns, two systemds and their services
        down = cli("down", "--name", NAME)
        assert down.returncode == 0, down.stderr
        assert leftovers(NAME, pids) == []
        assert cli("status", "--name", NAME).returncode == 1
    finally:
        cli("down", "--name", NAME)


def test_down_after_up_died_halfway_leaves_nothing(can_boot):
    state = tb.STATE_ROOT / NAME / "state.json"

    def booting() -> bool:
        with_pids = state.exists() and any(h["pid"] for h in json.loads(state.read_text())["hosts"])
        return with_pids or up.poll() is not None

    up = subprocess.Popen(
        [*CLI, "up", "--hosts", "3", "--name", NAME, "--subnet", SUBNET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(booting, 120, "the first host to start")
        up.kill()
        assert up.wait() == -9, "up finished before it could be killed"
        wait_for(lambda: processes(NAME), 10, "a host's processes")  # up is gone, they go on
        pids = processes(NAME)
        down = cli("down", "--name", NAME)
        assert down.returncode == 0, down.stderr
        assert leftovers(NAME, pids) == []
        assert cli("down", "--name", NAME).returncode == 0  # nothing left to do is no error
    finally:
        up.kill()
        up.wait()
        cli("down", "--name", NAME)


def test_an_exception_inside_the_testbed_leaves_nothing(can_boot):
    with pytest.raises(RuntimeError, match="a test failed"), tb.Testbed(2, NAME, SUBNET) as bed:
        pids = {pid for host in bed.hosts for pid in bed.processes(host)}
        assert bed.ssh(bed.hosts[1], "hostname").stdout.strip() == f"{NAME}-2"
        raise RuntimeError("a test failed")
    assert leftovers(NAME, pids) == []


def test_an_up_that_fails_removes_what_it_made(can_boot, monkeypatch):
    monkeypatch.setattr(tb, "BOOT_TIMEOUT", 0.01)  # no host boots that fast
    bed = tb.Testbed(2, NAME, SUBNET)
    with pytest.raises(tb.TestbedError):
        bed.up()
    assert leftovers(NAME, set()) == []  # a cgroup goes only once its processes are gone


def test_up_reclaims_a_testbed_whose_run_was_killed_and_refuses_a_live_one(can_boot):
    """After a crash of the controller (every process gone, links, mounts and state left), the
    next ``up`` removes the remains instead of refusing; a testbed that runs is never touched."""
    try:
        up = cli("up", "--hosts", "1", "--name", NAME, "--subnet", SUBNET)
        assert up.returncode == 0, up.stdout + up.stderr
        again = cli("up", "--hosts", "1", "--name", NAME, "--subnet", SUBNET)
        assert again.returncode != 0 and "is up already" in again.stderr + again.stdout
        pids = processes(NAME)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not any(running(p) for p in pids), 30, "the killed host's processes")
        assert leftovers(NAME, pids)  # the links, mounts and state of the killed run
        up = cli("up", "--hosts", "1", "--name", NAME, "--subnet", SUBNET)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "removing the remains of a killed run" in up.stdout
        assert cli("status", "--name", NAME).returncode == 0
        pids = processes(NAME)
        assert cli("down", "--name", NAME).returncode == 0
        assert leftovers(NAME, pids) == []
    finally:
        cli("down", "--name", NAME)
