"""``qnet-cli node snapshot`` while a node runs, ``node restore`` into a stopped one, and the
restores it refuses, leaving the data dir as it was."""

import gzip
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from qnet import crypto
from qnet.localnode import LocalNode, wait_for

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "qnet-cli")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "--json", *args], capture_output=True, text=True, timeout=60)


def snapshot(node: LocalNode, out: Path) -> dict:
    done = cli("node", "snapshot", "--data-dir", str(node.data_dir), "--out", str(out))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def fingerprint(data_dir: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(data_dir.iterdir()) if f.is_file()}


def test_snapshot_of_a_running_node_restores_into_a_fresh_data_dir(tmp_path):
    node = LocalNode.single(tmp_path / "node", {})  # an idle chain makes a block a second
    node.start()
    try:
        deadline = time.monotonic() + 20
        while node.status()["height"] < 2:  # idle, the chain still makes a block a second
            assert time.monotonic() < deadline
            time.sleep(0.1)
        taken = snapshot(node, tmp_path / "snap.tar.gz")  # while it keeps committing
        assert taken["height"] >= 2 and taken["node_id"] == node.key.node_id
        again = cli("node", "snapshot", "--data-dir", str(node.data_dir), "--out",
                    str(tmp_path / "snap.tar.gz"))  # fmt: skip
        assert again.returncode != 0 and "never overwritten" in again.stderr
        running = cli("node", "restore", "--data-dir", str(node.data_dir), "--from",
                      str(tmp_path / "snap.tar.gz"))  # fmt: skip
        assert running.returncode != 0 and "stop it first" in running.stderr
    finally:
        node.stop()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "node_key").write_text(node.key.seed.hex())
    (fresh / "config.toml").write_text("api_port = 7999\n")
    unnamed = cli(
        "node", "restore", "--data-dir", str(fresh), "--from", str(tmp_path / "snap.tar.gz")
    )
    assert unnamed.returncode != 0 and "has no genesis.json" in unnamed.stderr
    assert sorted(p.name for p in fresh.iterdir()) == ["config.toml", "node_key"]
    restored = cli("node", "restore", "--data-dir", str(fresh), "--from",
                   str(tmp_path / "snap.tar.gz"), "--genesis",
                   str(node.data_dir / "genesis.json"))  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert (fresh / "config.toml").read_text() == "api_port = 7999\n"
    verified = json.loads(cli("node", "verify", "--data-dir", str(fresh)).stdout)
    assert (verified["height"], verified["state_digest"]) == (
        taken["height"],
        taken["state_digest"],
    )
    assert (fresh / "genesis.json").read_bytes() == (node.data_dir / "genesis.json").read_bytes()


@pytest.mark.parametrize(
    "damage", ["truncated", "not_gzip", "other_chain", "empty", "symlink_member"]
)
def test_a_bad_snapshot_is_refused_and_changes_nothing(tmp_path, damage):
    node = LocalNode.single(tmp_path / "node", {})
    node.start()
    try:
        good = tmp_path / "good.tar.gz"
        snapshot(node, good)
        if damage == "other_chain":
            other = LocalNode.single(tmp_path / "other", {crypto.KeyPair.generate().address: 1})
            other.start()
            try:
                snapshot(other, tmp_path / "bad.tar.gz")
            finally:
                other.stop()
        elif damage == "truncated":
            (tmp_path / "bad.tar.gz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        elif damage == "symlink_member":  # chain.db as a link to a file outside the data dir
            with tarfile.open(good) as tar:
                manifest = tar.extractfile("MANIFEST.json").read()
                genesis = tar.extractfile("genesis.json").read()
            with tarfile.open(tmp_path / "bad.tar.gz", "w:gz") as tar:
                for name, data in (("MANIFEST.json", manifest), ("genesis.json", genesis)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                link = tarfile.TarInfo("chain.db")
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(link)
        elif damage == "not_gzip":
            (tmp_path / "bad.tar.gz").write_bytes(b"not a snapshot at all")
        else:
            (tmp_path / "bad.tar.gz").write_bytes(gzip.compress(b""))
    finally:
        node.stop()
    before = fingerprint(node.data_dir)
    done = cli(
        "node", "restore", "--data-dir", str(node.data_dir), "--from", str(tmp_path / "bad.tar.gz")
    )
    assert done.returncode != 0
    assert "unchanged" in done.stderr, done.stderr
    assert fingerprint(node.data_dir) == before


def test_restore_aside_keeps_a_damaged_chain_and_the_restored_one_verifies(tmp_path):
    node = LocalNode.single(tmp_path / "node", {})
    node.start()
    try:
        wait_for(lambda: node.status()["height"] >= 2, 20, "two blocks")
        taken = snapshot(node, tmp_path / "snap.tar.gz")
    finally:
        node.stop()
    data_dir = node.data_dir
    db = data_dir / "chain.db"
    with open(db, "r+b") as damaged:  # SQLite's header and first pages: unreadable now
        damaged.write(b"\xde\xad" * 4096)
    broken = cli("node", "verify", "--data-dir", str(data_dir))
    assert broken.returncode != 0
    old = {name: (data_dir / name).read_bytes()
           for name in ("chain.db", "chain.db-wal", "chain.db-shm", "consensus.wal")
           if (data_dir / name).exists()}  # fmt: skip
    assert "chain.db" in old
    kept = {name: (data_dir / name).read_bytes() for name in ("node_key", "genesis.json")}
    done = cli("node", "restore", "--data-dir", str(data_dir), "--from",
               str(tmp_path / "snap.tar.gz"), "--aside")  # fmt: skip
    assert done.returncode == 0, done.stderr
    aside = Path(json.loads(done.stdout)["aside"])
    assert aside.parent == data_dir / "aside"
    assert {f.name: f.read_bytes() for f in aside.iterdir()} == old  # moved, byte for byte
    assert not (data_dir / "consensus.wal").exists() and not (data_dir / "chain.db-wal").exists()
    assert {name: (data_dir / name).read_bytes() for name in kept} == kept
    verified = cli("node", "verify", "--data-dir", str(data_dir))
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["height"] == taken["height"]
    again = cli("node", "restore", "--data-dir", str(data_dir), "--from",
                str(tmp_path / "snap.tar.gz"), "--aside")  # fmt: skip
    assert again.returncode == 0, again.stderr
    second = Path(json.loads(again.stdout)["aside"])
    assert second != aside and sorted(p.name for p in (data_dir / "aside").iterdir()) == sorted(
        [aside.name, second.name]
    )  # every restore gets a directory of its own
