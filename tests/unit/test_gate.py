"""``qnet.gate``, the forced command of the recovery key: exactly the commands of
``qnet.ops``' recovery functions pass (test_ops_commands drives those functions through it);
injections and near misses are refused with 126 and one line naming them."""

import os
import pwd
import subprocess
import sys

import pytest

from qnet import gate, ops

LAYOUT = ops.NodeLayout("/opt/qnet", "/var/lib/qnet", 7370, "qnet")
NAME = "qt-1-20250601T120000Z-0a1b2c.tar.gz"
CLI = "/opt/qnet/current/bin/qnet-cli"
SNAP = f"/var/lib/qnet/snapshots/{NAME}"
GATE_FLAGS = ["--home", "/opt/qnet", "--data-dir", "/var/lib/qnet", "--api-port", "7370"]


def passes(command: str) -> bool:
    return gate.admit(LAYOUT, command) is not None


@pytest.mark.parametrize(
    "command",
    [
        "systemctl is-active qnet-node",
        "systemctl stop qnet-node",
        "systemctl start qnet-node",
        "systemctl restart qnet-node",
        f"{CLI} --json --node http://127.0.0.1:7370 node status",
        "journalctl -u qnet-node -n 50 --no-pager -o short-iso",
        "runuser -u qnet -- mkdir -p -m 0700 /var/lib/qnet/snapshots",
        f"runuser -u qnet -- {CLI} --json node snapshot --data-dir /var/lib/qnet --out {SNAP}",
        f"runuser -u qnet -- {CLI} --json node restore --data-dir /var/lib/qnet --from {SNAP} "
        "--aside",
        f"runuser -u qnet -- cat {SNAP}",
        f"runuser -u qnet -- dd of={SNAP} status=none",
        f"runuser -u qnet -- rm -f {SNAP}",
        f"'runuser' '-u' 'qnet' '--' 'rm' '-f' '{SNAP}'",  # quoting is the shell's business
        "systemctl reset-failed qnet-node",
    ],
)
def test_the_commands_ops_sends_pass(command):
    assert passes(command)


@pytest.mark.parametrize(
    "command",
    [
        "",
        "   ",
        "systemctl restart qnet-node; rm -rf /",
        "systemctl restart qnet-node && rm -rf /",
        "systemctl restart qnet-node $(rm -rf /)",
        "systemctl restart 'qnet-node; rm -rf /'",
        "systemctl restart sshd",
        "systemctl restart qnet-node extra",
        "systemctl disable qnet-node",
        "systemctl",
        "sudo -n systemctl restart qnet-node",
        "/bin/systemctl restart qnet-node",
        "bash -c 'systemctl restart qnet-node'",
        f"{CLI} --json --node http://127.0.0.1:7371 node status",
        f"{CLI} --json --node http://evil.example:7370 node status",
        f"{CLI} --json node status",
        f"{CLI} --json --node http://127.0.0.1:7370 tx send",
        "journalctl -u qnet-node -n 50 --no-pager -o short-iso -f",
        "journalctl -u sshd -n 50 --no-pager -o short-iso",
        "journalctl -u qnet-node -n 0 --no-pager -o short-iso",
        "journalctl -u qnet-node -n -5 --no-pager -o short-iso",
        "journalctl -u qnet-node -n 5x --no-pager -o short-iso",
        "journalctl -u qnet-node -n 99999999 --no-pager -o short-iso",
        "cat /var/lib/qnet/snapshots/../../../etc/shadow",
        "cat /var/lib/qnet/snapshots/..tar.gz",
        "cat /var/lib/qnet/snapshots/a..b.tar.gz",
        "cat /var/lib/qnet/snapshots/sub/x.tar.gz",
        "cat /var/lib/qnet/snapshots/.hidden.tar.gz",
        "cat /var/lib/qnet/snapshots/x.tar",
        "cat '/var/lib/qnet/snapshots/x.tar.gz\n'",
        "cat /var/lib/qnet/node_key",
        "cat /var/lib/other/snapshots/x.tar.gz",
        "cat /var/lib/qnet/snapshots//x.tar.gz",
        f"cat {SNAP} /var/lib/qnet/node_key",
        f"cat {SNAP}",  # as root: the node's user owns the directory and could plant a link
        f"rm -f {SNAP}",
        f"rm -rf {SNAP}",
        f"rm -f {SNAP} /var/lib/qnet/chain.db",
        "rm -f /var/lib/qnet/snapshots",
        f"dd of={SNAP} status=none",  # as root, not as the node's user
        f"runuser -u root -- dd of={SNAP} status=none",
        f"runuser -u qnet -- dd of={SNAP}",
        "runuser -u qnet -- dd of=/var/lib/qnet/chain.db status=none",
        "runuser -u qnet -- mkdir -p -m 0700 /var/lib/qnet/elsewhere",
        f"runuser -u qnet -- {CLI} --json node restore --data-dir /var/lib/qnet --from {SNAP}",
        f"runuser -u qnet -- {CLI} --json node restore --data-dir /tmp/x --from {SNAP} --aside",
        f"runuser -u qnet -- {CLI} --json node snapshot --data-dir /var/lib/qnet --out "
        f"/var/lib/qnet/snapshots/a.tar.gz --from /var/lib/qnet/snapshots/b.tar.gz",
        "systemctl restart 'qnet-node",  # unbalanced quote
    ],
)
def test_injections_and_near_misses_are_refused(command):
    assert not passes(command)


def run_gate(
    command: str | None, data_dir: str = "/var/lib/qnet", user: str = "qnet"
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SSH_ORIGINAL_COMMAND"}
    if command is not None:
        env["SSH_ORIGINAL_COMMAND"] = command
    flags = [*GATE_FLAGS[:3], data_dir, *GATE_FLAGS[4:], "--user", user]
    return subprocess.run(
        [sys.executable, "-m", "qnet.gate", *flags], env=env, capture_output=True, timeout=30
    )


@pytest.mark.parametrize("command", [None, "", "systemctl restart qnet-node; rm -rf /"])
def test_the_gate_exits_126_with_one_line_naming_what_it_refused(command):
    done = run_gate(command)
    assert done.returncode == 126 and done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qnet.gate: refused: ")
    assert (command or "(no command)") in lines[0]


def test_the_gate_execs_an_allowed_command_without_a_shell(tmp_path):
    (tmp_path / "snapshots").mkdir()
    (tmp_path / "snapshots" / NAME).write_bytes(b"\x00snapshot bytes\xff")
    me = pwd.getpwuid(os.getuid()).pw_name  # the node's user here: runuser needs root
    read = f"runuser -u {me} -- cat {tmp_path}/snapshots/{NAME}"
    done = run_gate(read, data_dir=str(tmp_path), user=me)
    assert (done.returncode, done.stdout) == (0, b"\x00snapshot bytes\xff"), done.stderr
    beside = run_gate(read, user=me)  # another data dir than the gate's
    assert beside.returncode == 126


def test_the_gate_and_ops_agree_on_a_data_dir_written_with_a_slash():
    slashed = ops.NodeLayout("/opt/qnet/", "/var/lib/qnet/", 7370, "qnet")
    assert gate.allowed(slashed, ops.snapshot_argv(LAYOUT, NAME))
    assert gate.allowed(LAYOUT, ops.restore_argv(slashed, NAME))
