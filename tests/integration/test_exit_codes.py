"""``qnet-node``'s exit status says what an operator (and systemd's
``RestartPreventExitStatus=2 3``) must know: 2 for a configuration or genesis error, with one
line naming the bad key and file; 3 when the node's data cannot be trusted (a damaged chain
database), with a message saying so and to resync. A missing chain.db is not damage: the
node starts afresh from genesis."""

import subprocess
from dataclasses import fields
from pathlib import Path

import pytest

from qnet import crypto
from qnet.config import RULES, NodeConfig
from qnet.localnode import BIN, LocalNode, wait_for

pytestmark = pytest.mark.integration


def run_node(data_dir: Path) -> subprocess.CompletedProcess:
    """``qnet-node`` for a node that must not start: it exits by itself."""
    return subprocess.run(
        [str(BIN / "qnet-node"), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return LocalNode.single(tmp_path / "node", {}).data_dir


def test_every_setting_has_its_type_and_range_checked():
    assert set(RULES) == {f.name for f in fields(NodeConfig)} - {"data_dir"}


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ('api_port = "abc"', 'api_port = "abc": must be an integer from 1 to 65535'),
        ("api_port = 70000", "api_port = 70000: must be an integer from 1 to 65535"),
        ("p2p_port = 1.5", "p2p_port = 1.5: must be an integer"),
        ("mempool_capacity = -1", "mempool_capacity = -1: must be an integer from 1"),
        ("verify_threads = true", "verify_threads = true: must be an integer"),
        ('mempool_ttl_s = "10m"', 'mempool_ttl_s = "10m": must be a number above 0'),
        ('journal = "yes"', 'journal = "yes": must be true or false'),
        ('log_level = "loud"', 'log_level = "loud": must be one of DEBUG'),
        ('node_type = "mega"', 'node_type = "mega": must be one of super, full, light'),
        ('peers = "127.0.0.1:1"', "peers = "),
        ('peers = ["nohost"]', '"nohost" is not'),
        ("empty_block_interval_ms = 5000", "empty_block_interval_ms = 5000 must be below"),
        ('colour = "blue"', "unknown setting(s) colour"),
        ("api_port = ", "config.toml"),  # not TOML at all
    ],
)
def test_a_bad_setting_exits_2_with_one_line_naming_key_and_file(data_dir, line, named):
    config = data_dir / "config.toml"
    key = line.split("=")[0].strip()
    kept = [k for k in config.read_text().splitlines() if k.split("=")[0].strip() != key]
    config.write_text("\n".join([*kept, line]) + "\n")
    done = run_node(data_dir)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert named in done.stderr and str(config) in done.stderr, done.stderr


def test_a_bad_flag_value_is_named_by_its_flag(data_dir):
    done = subprocess.run(
        [str(BIN / "qnet-node"), "--data-dir", str(data_dir), "--api-port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--api-port: api_port = 0: must be an integer from 1 to 65535" in done.stderr


@pytest.fixture
def stopped_chain(tmp_path) -> LocalNode:
    """A node that committed a few blocks and stopped gracefully (its WAL checkpointed)."""
    funded = crypto.KeyPair.generate()
    node = LocalNode.single(tmp_path / "node", {funded.address: 10**12})
    node.start()
    try:
        wait_for(lambda: node.status()["height"] >= 5, 20, "five blocks")
    finally:
        assert node.stop() == 0
    return node


def _overwrite(path: Path, start: int, end: int) -> None:
    with path.open("r+b") as f:
        f.seek(start)
        f.write(bytes((i * 151 + 7) % 256 for i in range(end - start)))


@pytest.mark.parametrize("where", ["middle pages", "header"])
def test_a_damaged_chain_database_exits_3_and_says_to_resync(stopped_chain, where):
    db = stopped_chain.data_dir / "chain.db"
    size = db.stat().st_size
    assert size >= 4 * 4096
    if where == "header":
        _overwrite(db, 0, 100)
    else:
        _overwrite(db, size // 4, 3 * size // 4)
    done = run_node(stopped_chain.data_dir)
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "damaged" in done.stderr and "resync" in done.stderr, done.stderr


def test_without_chain_db_the_node_starts_from_genesis(stopped_chain):
    (stopped_chain.data_dir / "chain.db").unlink()
    stopped_chain.start()
    try:
        assert stopped_chain.status()["height"] >= 0
        assert stopped_chain.get("/health")[0] == 200
    finally:
        assert stopped_chain.stop() == 0
