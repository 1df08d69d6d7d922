"""Snapshot restore trusts nothing in the archive: the genesis it must be of comes from the
data dir or the operator, a refused snapshot changes nothing, and a config.toml in it is
never imported. (Restores of a running node's chain: tests/integration/test_snapshot.py.)"""

import io
import json
import tarfile
from pathlib import Path

import pytest

from qnet import crypto, ledger, snapshot
from qnet.config import write_config
from qnet.genesis import Genesis, make_genesis
from qnet.storage import Storage

VALIDATOR = crypto.KeyPair(b"\x51" * 32)
WALLET = crypto.KeyPair(b"\x52" * 32)


def chain_genesis(chain_id: str) -> Genesis:
    return make_genesis(
        chain_id,
        [(VALIDATOR.node_id, "eu")],
        {crypto.encode_address(WALLET.address): 10**12},
    )


def data_dir(path: Path, genesis: Genesis) -> Path:
    """What a node leaves in its data dir: genesis, node key, a chain database, config."""
    path.mkdir(parents=True)
    genesis.save(path / "genesis.json")
    (path / "node_key").write_text(VALIDATOR.seed.hex() + "\n")
    storage = Storage(path / "chain.db")
    storage.initialise(genesis.chain_id, genesis.hash, ledger.genesis_state(genesis))
    storage.close()
    write_config(path / "config.toml", {"api_port": 7999, "peers": ["10.0.0.1:7380"]})
    return path


def fingerprint(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    return {f.name: f.read_bytes() for f in sorted(path.iterdir()) if f.is_file()}


def rewrite(archive: Path, out: Path, replace: dict[str, bytes]) -> Path:
    """A copy of ``archive`` with some members' contents replaced or added."""
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    members.update(replace)
    with tarfile.open(out, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture
def chain_a(tmp_path) -> tuple[Genesis, Path]:
    """Chain A's genesis and a snapshot of a node of it."""
    genesis = chain_genesis("qnet-a")
    source = data_dir(tmp_path / "source", genesis)
    archive = tmp_path / "a.tar.gz"
    snapshot.create(source, archive)
    return genesis, archive


def test_snapshots_hold_no_config(chain_a):
    _, archive = chain_a
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["MANIFEST.json", "chain.db", "genesis.json"]


def test_a_data_dir_without_genesis_needs_one_named(chain_a, tmp_path):
    genesis, archive = chain_a
    fresh = tmp_path / "fresh"
    with pytest.raises(snapshot.SnapshotError, match=r"has no genesis\.json"):
        snapshot.restore(archive, fresh)
    assert not fresh.exists()  # not even created
    fresh.mkdir()
    with pytest.raises(snapshot.SnapshotError, match=r"has no genesis\.json"):
        snapshot.restore(archive, fresh)
    assert fingerprint(fresh) == {}

    named = snapshot.restore(archive, tmp_path / "by-file", genesis=genesis)
    assert Genesis.load(tmp_path / "by-file" / "genesis.json") == genesis
    by_hash = snapshot.restore(archive, tmp_path / "by-hash", genesis_hash=genesis.hash.hex())
    assert Genesis.load(tmp_path / "by-hash" / "genesis.json") == genesis
    assert named["height"] == by_hash["height"] == 0


def test_a_snapshot_of_another_genesis_is_refused_naming_both(chain_a, tmp_path):
    genesis_a, archive = chain_a
    genesis_b = chain_genesis("qnet-b")
    ours = data_dir(tmp_path / "ours", genesis_b)
    before = fingerprint(ours)
    with pytest.raises(snapshot.SnapshotError) as refused:
        snapshot.restore(archive, ours, aside=True)
    assert genesis_a.hash.hex() in str(refused.value)
    assert genesis_b.hash.hex() in str(refused.value)
    assert fingerprint(ours) == before and not (ours / "aside").exists()

    # Named for a data dir without genesis: the same.
    for named in ({"genesis": genesis_b}, {"genesis_hash": genesis_b.hash.hex()}):
        with pytest.raises(snapshot.SnapshotError, match=genesis_b.hash.hex()):
            snapshot.restore(archive, tmp_path / "fresh", **named)
        assert not (tmp_path / "fresh").exists()
    # A named genesis that contradicts the data dir's own is no way around it.
    with pytest.raises(snapshot.SnapshotError, match="ambiguous"):
        snapshot.restore(archive, ours, genesis=genesis_a)
    assert fingerprint(ours) == before


def test_a_snapshot_dressed_as_the_expected_chain_does_not_replay(chain_a, tmp_path):
    """Another chain's database under a manifest and genesis.json of the expected one: the
    replay from the expected genesis refuses it before anything is replaced."""
    genesis_a, good = chain_a
    other = data_dir(tmp_path / "other", chain_genesis("qnet-b"))
    snapshot.create(other, tmp_path / "b.tar.gz")
    with tarfile.open(tmp_path / "b.tar.gz") as tar:
        foreign_db = tar.extractfile("chain.db").read()
    with tarfile.open(good) as tar:
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())
    forged = rewrite(good, tmp_path / "forged.tar.gz", {"chain.db": foreign_db})
    ours = data_dir(tmp_path / "ours", genesis_a)
    before = fingerprint(ours)
    with pytest.raises(snapshot.SnapshotError, match="another genesis"):
        snapshot.restore(forged, ours)
    # The state claimed by the manifest must be the one the chain replays to.
    lying = {**manifest, "state_digest": "00" * 32}
    lied = rewrite(good, tmp_path / "lied.tar.gz", {"MANIFEST.json": json.dumps(lying).encode()})
    with pytest.raises(snapshot.SnapshotError, match="not at the head its manifest says"):
        snapshot.restore(lied, ours)
    # A genesis.json other than the manifest's.
    swapped = rewrite(
        good,
        tmp_path / "swapped.tar.gz",
        {"genesis.json": (other / "genesis.json").read_bytes()},
    )
    with pytest.raises(snapshot.SnapshotError, match="not its manifest's genesis"):
        snapshot.restore(swapped, tmp_path / "fresh", genesis_hash=genesis_a.hash.hex())
    assert fingerprint(ours) == before and not (tmp_path / "fresh").exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: [],
        lambda m: {"chain_id": m["chain_id"]},
        lambda m: {**m, "height": True},
        lambda m: {**m, "height": -1},
        lambda m: {**m, "genesis_hash": "zz" * 32},
        lambda m: {**m, "chain_id": "x" * 65},
        lambda m: {**m, "padding": "x" * 70_000},
    ],
)
def test_a_malformed_manifest_is_refused(chain_a, tmp_path, damage):
    genesis, good = chain_a
    with tarfile.open(good) as tar:
        manifest = damage(json.loads(tar.extractfile("MANIFEST.json").read()))
    bad = rewrite(good, tmp_path / "bad.tar.gz", {"MANIFEST.json": json.dumps(manifest).encode()})
    with pytest.raises(snapshot.SnapshotError, match="not a QNet snapshot"):
        snapshot.restore(bad, tmp_path / "fresh", genesis=genesis)
    assert not (tmp_path / "fresh").exists()


def test_a_config_in_the_snapshot_is_never_imported(chain_a, tmp_path):
    """Archives of earlier versions carry the source node's config.toml: ignored."""
    genesis, good = chain_a
    hostile = b'api_host = "0.0.0.0"\npeers = ["203.0.113.9:7380"]\n'
    old = rewrite(good, tmp_path / "old.tar.gz", {"config.toml": hostile})
    fresh = tmp_path / "fresh"
    snapshot.restore(old, fresh, genesis=genesis)
    assert sorted(p.name for p in fresh.iterdir()) == ["chain.db", "genesis.json"]
    ours = data_dir(tmp_path / "ours", genesis)
    config = (ours / "config.toml").read_bytes()
    snapshot.restore(old, ours)
    assert (ours / "config.toml").read_bytes() == config
