"""A new user's first session, driven through the installed ``qnet-cli`` only.

Each test gets its own HOME, keystore, data dir and free port, and the node it starts is
stopped afterwards whatever happened (through the CLI, then by pid as a last resort).
"""

import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from qnet import crypto
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
        self.home = home
        self.data_dir = home / "chain"
        self.port = free_port()
        self.env = {
            **os.environ,
            "HOME": str(home),
            "QNET_KEYSTORE": str(home / "wallets"),
            "QNET_NODE": f"http://127.0.0.1:{self.port}",
            "QNET_WALLET_PASSWORD": PASSWORD,
        }

    def run(
        self, *args: str, password: str = PASSWORD, stdin: str | None = None
    ) -> subprocess.CompletedProcess:
        """``stdin``: the text piped in (none by default)."""
        env = {**self.env, "QNET_WALLET_PASSWORD": password}
        return subprocess.run(
            [CLI, *args],
            env=env,
            capture_output=True,
            text=True,
            **({"stdin": subprocess.DEVNULL} if stdin is None else {"input": stdin + "\n"}),
            timeout=120,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, f"qnet-cli {' '.join(args)}:\n{done.stderr}"
        return done.stdout

    def json(self, *args: str, stdin: str | None = None):
        return json.loads(self.ok("--json", *args, stdin=stdin))

    def fails(self, *args: str, password: str = PASSWORD, stdin: str | None = None) -> str:
        """Run a command that must fail: non-zero exit, nothing on stdout, one line on
        stderr. Returns that line."""
        done = self.run(*args, password=password, stdin=stdin)
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


# ---- wallets that move: files and recovery phrases ---------------------------------------


def test_a_wallet_moves_by_file_and_by_phrase(user, tmp_path):
    created = user.json("wallet", "create", "alice")
    address, phrase = created["address"], created["phrase"]
    assert len(phrase.split(" ")) == 24

    backup = tmp_path / "alice-backup.json"
    exported = user.json("wallet", "export", "alice", "--file", str(backup))
    assert (exported["address"], exported["path"]) == (address, str(backup))
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert "seed" not in backup.read_text() and json.loads(backup.read_text())["address"] == address
    assert "already exists; refusing to overwrite" in user.fails(
        "wallet", "export", "alice", "--file", str(backup)
    )
    assert user.json("wallet", "import", "by-file", "--file", str(backup))["address"] == address

    shown = user.run("wallet", "export", "alice", "--phrase")
    assert shown.stdout == phrase + "\n"
    assert "recovery phrase controls the wallet's funds" in shown.stderr
    assert (
        user.json("wallet", "import", "by-phrase", "--phrase", stdin=phrase)["address"] == address
    )
    listed = user.json("wallet", "list")
    assert {w["name"]: w["address"] for w in listed} == {
        "alice": address, "by-file": address, "by-phrase": address,
    }  # fmt: skip
    # the imported file was sealed again: a fresh salt, the same password
    stored = json.loads((user.home / "wallets" / "by-file.json").read_text())
    assert stored["name"] == "by-file" and stored["salt"] != json.loads(backup.read_text())["salt"]


def test_wallet_imports_refuse_bad_input_and_write_nothing(user, tmp_path):
    user.json("wallet", "create", "alice")
    good = tmp_path / "alice.json"
    user.json("wallet", "export", "alice", "--file", str(good))
    doc = json.loads(good.read_text())
    wallets = user.home / "wallets"
    before = sorted(p.name for p in wallets.iterdir())

    wrong = user.fails("wallet", "import", "bob", "--file", str(good), password="guess")
    assert wrong == f"Error: wrong password for wallet file {good}"

    tampered = tmp_path / "tampered.json"
    other = crypto.encode_address(crypto.KeyPair.generate().address)
    tampered.write_text(json.dumps({**doc, "address": other}))
    assert "stored address does not match its key" in user.fails(
        "wallet", "import", "bob", "--file", str(tampered)
    )

    malformed = tmp_path / "malformed.json"
    for content, message in (
        ("{not json", "is not a wallet file"),
        (json.dumps({k: v for k, v in doc.items() if k != "nonce"}), "missing nonce"),
    ):
        malformed.write_text(content)
        assert message in user.fails("wallet", "import", "bob", "--file", str(malformed))
    assert "checksum does not match" in user.fails(
        "wallet", "import", "bob", "--phrase", stdin=" ".join(["abandon"] * 24)
    )
    assert "give --phrase or --file" in user.fails(
        "wallet", "import", "bob", "--phrase", "--file", str(good)
    )
    assert "already exists" in user.fails("wallet", "import", "alice", "--file", str(good))
    assert sorted(p.name for p in wallets.iterdir()) == before


class Terminal:
    """``qnet-cli`` with a person at the keyboard: stdin is a pseudo-terminal (no echo),
    stdout and stderr are pipes read as the words come."""

    def __init__(self, user: User, *args: str):
        master, slave = os.openpty()
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.proc = subprocess.Popen(
            [CLI, *args], env=user.env, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        os.close(slave)
        self.keyboard = master
        self.streams = {"stdout": self.proc.stdout, "stderr": self.proc.stderr}
        self.text = {"stdout": "", "stderr": ""}
        self.read_to = {"stdout": 0, "stderr": 0}

    def expect(self, stream: str, pattern: str, timeout: float = 30) -> re.Match:
        """The next match of ``pattern`` in what ``stream`` shows, waiting for it."""
        deadline = time.monotonic() + timeout
        while not (found := re.compile(pattern).search(self.text[stream], self.read_to[stream])):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {pattern!r} on {stream} in {timeout} s: {self.text}"
            ready, _, _ = select.select(list(self.streams.values()), [], [], remaining)
            for name, pipe in self.streams.items():
                if pipe in ready:
                    chunk = os.read(pipe.fileno(), 65536)
                    assert chunk or name != stream, f"{stream} closed: {self.text}"
                    self.text[name] += chunk.decode()
        self.read_to[stream] = found.end()
        return found

    def type(self, line: str) -> None:
        os.write(self.keyboard, line.encode() + b"\n")

    def close(self) -> int:
        """Wait for it to end (killed after 30 s), then hang up; its exit status."""
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        finally:
            os.close(self.keyboard)
        self.text["stdout"] += out.decode()
        self.text["stderr"] += err.decode()
        return self.proc.returncode


def grid_words(grid: str) -> list[str]:
    """The 24 words of a numbered phrase grid, in order."""
    numbered = dict(re.findall(r"(\d+) ([a-z]+)", grid))
    return [numbered[str(i)] for i in range(1, 25)]


def test_create_at_a_terminal_asks_for_two_words_before_saving(user):
    grid = r"(?:\s*\d+ [a-z]+){24}\n"
    terminal = Terminal(user, "wallet", "create", "alice")
    try:
        terminal.expect("stderr", "shown only this once")
        words = grid_words(terminal.expect("stdout", grid).group())
        terminal.expect("stderr", "Press Enter once you have written the words down")
        terminal.type("")
        first = int(terminal.expect("stderr", r"Word #(\d+): ").group(1))
        terminal.type("zoo" if words[first - 1] != "zoo" else "abandon")  # a wrong word
        second = int(terminal.expect("stderr", r"Word #(\d+): ").group(1))
        assert second > first
        terminal.type(words[second - 1])
        terminal.expect("stderr", f"Word #{first} is not right. The recovery phrase again:")
        assert grid_words(terminal.expect("stdout", grid).group()) == words
        assert not (user.home / "wallets" / "alice.json").exists()  # nothing until confirmed

        terminal.expect("stderr", "Press Enter")
        terminal.type("")
        for _ in range(2):
            position = int(terminal.expect("stderr", r"Word #(\d+): ").group(1))
            terminal.type(f"  {words[position - 1].upper()} ")
        terminal.expect("stdout", r"address +(qnc1\w+)")
    finally:
        assert terminal.close() == 0, terminal.text
    assert not re.search("^phrase", terminal.text["stdout"], re.MULTILINE)  # shown once: the grid
    address = user.json("wallet", "list")[0]["address"]
    assert f"address  {address}" in terminal.text["stdout"]
    imported = user.json("wallet", "import", "again", "--phrase", stdin=" ".join(words))
    assert imported["address"] == address


def test_create_at_a_terminal_aborted_leaves_no_wallet(user):
    terminal = Terminal(user, "wallet", "create", "alice")
    terminal.expect("stderr", "Press Enter")
    os.write(terminal.keyboard, b"\x04")  # Ctrl-D: end of input
    assert terminal.close() != 0
    assert "Aborted" in terminal.text["stderr"]
    assert not (user.home / "wallets").exists() or not list((user.home / "wallets").iterdir())
