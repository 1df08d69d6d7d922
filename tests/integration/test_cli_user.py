"""A new user's first session, driven through the installed ``qnet-cli`` only.

Each test gets its own HOME, keystore, data dir and free port, and the node it starts is
stopped afterwards whatever happened (through the CLI, then by pid as a last resort).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qnet.cli import node_running
from qnet.localnode import free_port

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "qnet-cli")
PASSWORD = "correct horse battery staple"
QNC = 10**9
FAUCET_UNITS = 1_000_000 * QNC
MIN_FEE = 1_000  # base units: the default fee, 0.000001 QNC


class User:
    """A shell session: environment variables set once, then commands."""

    def __init__(self, home: Path):
        self.data_dir = home / "chain"
        self.port = free_port()
        self.env = {
            **os.environ,
            "HOME": str(home),
            "QNET_KEYSTORE": str(home / "wallets"),
            "QNET_NODE": f"http://127.0.0.1:{self.port}",
            "QNET_WALLET_PASSWORD": PASSWORD,
        }

    def run(self, *args: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
        env = {**self.env, "QNET_WALLET_PASSWORD": password}
        return subprocess.run(
            [CLI, *args],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"qnet-cli {' '.join(args)}:\n{done.stderr}"
        return done.stdout

    def json(self, *args: str):
        return json.loads(self.ok("--json", *args))

    def fails(self, *args: str, password: str = PASSWORD) -> str:
        """Run a command that must fail: non-zero exit, nothing on stdout, one line on
        stderr. Returns that line."""
        done = self.run(*args, password=password)
        assert done.returncode != 0, f"qnet-cli {' '.join(args)} succeeded:\n{done.stdout}"
        assert done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        return lines[0]

    def balance(self, wallet: str) -> int:
        return int(self.json("wallet", "balance", wallet)["balance"])

    def start_chain(self) -> dict:
        created = self.json(
            "genesis", "init", "--data-dir", str(self.data_dir), "--faucet", "faucet"
        )
        self.json("node", "start", "--data-dir", str(self.data_dir), "--api-port", str(self.port))
        return created


@pytest.fixture
def user(tmp_path):
    session = User(tmp_path)
    yield session
    pidfile = session.data_dir / "node.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text())
        session.run("node", "stop", "--data-dir", str(session.data_dir))
        if node_running(pid):
            os.kill(pid, signal.SIGKILL)


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while node_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_first_session(user):
    data_dir = str(user.data_dir)
    created = user.json("genesis", "init", "--data-dir", data_dir, "--faucet", "faucet")
    assert created["chain_id"] == "qnet-dev"
    (funded,) = created["funded"]
    assert (funded["wallet"], funded["amount"]) == ("faucet", str(FAUCET_UNITS))
    assert created["node_id"].startswith("qnode1")

    started = user.json("node", "start", "--data-dir", data_dir, "--api-port", str(user.port))
    assert started["api_url"] == f"http://127.0.0.1:{user.port}"
    assert started["node_id"] == created["node_id"]
    assert int((user.data_dir / "node.pid").read_text()) == started["pid"]

    alice = user.json("wallet", "create", "alice")["address"]
    bob = user.json("wallet", "create", "bob")["address"]
    listed = user.ok("wallet", "list")
    assert alice in listed and bob in listed and "faucet" in listed

    to_alice = user.json("wallet", "send", "--from", "faucet", "alice", "250.5")
    assert to_alice["status"] == "committed" and to_alice["height"] >= 1
    to_bob = user.json(
        "wallet", "send", "--from", "alice", bob, "100.123456789", "--fee", "0.00001"
    )
    assert to_bob["status"] == "committed" and to_bob["height"] > to_alice["height"]
    assert to_bob["to"] == bob

    assert user.balance("faucet") == FAUCET_UNITS - 250_500_000_000 - MIN_FEE
    assert user.balance("alice") == 250_500_000_000 - 100_123_456_789 - 10_000
    assert user.balance(bob) == 100_123_456_789
    assert "150.376533211 QNC" in user.ok("wallet", "balance", "alice")

    shown = user.ok("node", "status")
    assert created["node_id"] in shown and "qnet-dev" in shown
    status = user.json("node", "status")
    assert status["height"] >= to_bob["height"] and status["mempool_size"] == 0

    verified = user.json("node", "verify", "--data-dir", data_dir)
    # Idle blocks keep coming (empty ones), so the height may have moved but not the state.
    assert verified["ok"] is True and verified["height"] >= status["height"]
    assert verified["state_digest"] == status["state_digest"]
    assert "ok" in user.ok("node", "verify", "--data-dir", data_dir)

    user.ok("node", "stop", "--data-dir", data_dir)
    assert wait_gone(started["pid"])
    assert not (user.data_dir / "node.pid").exists()
    assert "no node answering" in user.fails("node", "status")


def test_refusals_change_nothing(user):
    data_dir = str(user.data_dir)
    user.start_chain()
    assert "already exists" in user.fails("genesis", "init", "--data-dir", data_dir)
    assert "already running" in user.fails(
        "node", "start", "--data-dir", data_dir, "--api-port", str(user.port)
    )
    bob = user.json("wallet", "create", "bob")["address"]
    assert "already exists" in user.fails("wallet", "create", "bob")

    wrong = user.fails("wallet", "send", "--from", "faucet", bob, "1", password="guess")
    assert "wrong password" in wrong
    assert "wrong password" in user.fails("wallet", "export", "faucet", password="guess")
    assert user.balance("faucet") == FAUCET_UNITS
    assert user.json("wallet", "balance", bob)["nonce"] == 0

    user.json("wallet", "send", "--from", "faucet", "bob", "5")
    too_much = user.fails("wallet", "send", "--from", "bob", "faucet", "5")
    assert "insufficient funds" in too_much and "5 QNC" in too_much
    assert "more than 9 decimals" in user.fails(
        "wallet", "send", "--from", "bob", "faucet", "0.0000000001"
    )
    assert user.balance("bob") == 5 * QNC
    assert user.balance("faucet") == FAUCET_UNITS - 5 * QNC - MIN_FEE

    user.ok("node", "stop", "--data-dir", data_dir)
    assert "no node is running" in user.fails("node", "stop", "--data-dir", data_dir)
    assert "no node answering" in user.fails("wallet", "balance", "bob")
