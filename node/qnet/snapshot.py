"""Consistent snapshots of a node's chain, taken while it runs, and their restore.

A snapshot is a tar.gz holding ``MANIFEST.json`` (chain, genesis hash, height, block hash,
state digest, node id, version, time), ``genesis.json`` and ``chain.db``, copied with SQLite's
online backup API: a transaction-consistent copy at one committed block, while the node keeps
committing.

It holds no secret and nothing that must not go back in time: not the node key (restore it
from where keys are kept), not the validator's signing state (a restored validator must not
sign again what it may already have signed; see ``BftConsensus``), not the consensus log. Nor
the node's ``config.toml``: listen addresses, peers and key paths are the operator's, so
restore never takes one from a snapshot (archives of older versions that hold one restore
as if it were not there).

A snapshot may come from anywhere, so restore trusts nothing in it. The genesis it must be
of is the data dir's own, or, for a data dir without one, the one the operator names (a
genesis file or its hash); a snapshot of any other is refused. Restore then checks the
archive against its manifest, replays every block of the copy from that genesis
(certificates and state digests) to the state it stores, rebuilds the copy's account index
from those blocks, and only then swaps it in; the node must be stopped. Until the swap
nothing in the data dir changes. The node key and signing state already in the data dir
stay. It never opens the chain it replaces, so it also repairs a damaged one; with
``aside=True`` that chain (``chain.db`` with its WAL files, and ``consensus.wal``) is moved
into ``<data_dir>/aside/<UTC time>/`` rather than deleted, for a later look.
"""

import io
import json
import os
import re
import shutil
import sqlite3
import struct
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

from . import __version__
from .config import NodeConfig
from .genesis import Genesis
from .node import StateDivergence, load_node_key, replay
from .storage import Storage, StorageError

MANIFEST = "MANIFEST.json"
MEMBERS = {MANIFEST, "genesis.json", "chain.db"}
IGNORED = {"config.toml"}  # written by earlier versions; never read
MANIFEST_FIELDS = {
    "chain_id": str,
    "genesis_hash": str,
    "height": int,
    "block_hash": str,
    "state_digest": str,
}
HASH_HEX = re.compile(r"[0-9a-f]{64}")
MAX_MANIFEST_BYTES = 64 * 1024
# What a restore replaces in the data dir: the chain, its SQLite WAL files, the consensus log.
REPLACED = ("chain.db", "chain.db-wal", "chain.db-shm", "consensus.wal")
ASIDE = "aside"


class SnapshotError(RuntimeError):
    pass


def _copy_database(source: Path, target: Path) -> None:
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()


def _head(db: Path) -> tuple[int, str, str]:
    storage = Storage(db, index=False)  # the copy as it is: a restore rebuilds its indexes
    try:
        state = storage.load_state()
        return state.height, state.block_hash.hex(), state.digest.hex()
    finally:
        storage.close()


def create(data_dir: Path, out: Path) -> dict:
    """Write a snapshot of ``data_dir`` to ``out`` (never overwriting); returns its manifest."""
    config = NodeConfig(data_dir=Path(data_dir).resolve())
    if not config.db_path.exists():
        raise SnapshotError(f"no chain database at {config.db_path}")
    if out.exists():
        raise SnapshotError(f"{out} exists; snapshots are never overwritten")
    genesis = Genesis.load(config.genesis_path)
    with tempfile.TemporaryDirectory(prefix="qnet-snapshot-", dir=out.parent) as tmp:
        copy = Path(tmp) / "chain.db"
        _copy_database(config.db_path, copy)
        height, block_hash, digest = _head(copy)
        manifest = {
            "chain_id": genesis.chain_id,
            "genesis_hash": genesis.hash.hex(),
            "height": height,
            "block_hash": block_hash,
            "state_digest": digest,
            "node_id": load_node_key(config.key_path).node_id,
            "version": __version__,
            "created_ms": int(time.time() * 1000),
        }
        partial = Path(tmp) / "snapshot.tar.gz"
        with tarfile.open(partial, "w:gz") as tar:
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(data), time.time(), 0o644
            tar.addfile(info, io.BytesIO(data))
            tar.add(config.genesis_path, "genesis.json")
            tar.add(copy, "chain.db")
        os.replace(partial, out)
    return manifest


def _checked_manifest(manifest: object) -> dict:
    """The manifest if it has every field restore and its callers read, of the right type."""
    if not isinstance(manifest, dict):
        raise ValueError("its manifest is not an object")
    for name, kind in MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(name), kind) or isinstance(manifest[name], bool):
            raise ValueError(f"its manifest has no valid {name!r}")
    for name in ("genesis_hash", "block_hash", "state_digest"):
        if not HASH_HEX.fullmatch(manifest[name]):
            raise ValueError(f"its manifest's {name} is not 64 lowercase hex digits")
    if manifest["height"] < 0 or not 0 < len(manifest["chain_id"].encode()) <= 64:
        raise ValueError("its manifest's height or chain id is out of range")
    return manifest


def read_manifest(archive: Path) -> dict:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.extractfile(MANIFEST)
            if member is None:
                raise KeyError(MANIFEST)
            data = member.read(MAX_MANIFEST_BYTES + 1)
            if len(data) > MAX_MANIFEST_BYTES:
                raise ValueError(f"its manifest is over {MAX_MANIFEST_BYTES} bytes")
            return _checked_manifest(json.loads(data))
    except (OSError, EOFError, zlib.error, tarfile.TarError, KeyError, ValueError) as exc:
        raise SnapshotError(f"{archive} is not a QNet snapshot: {exc}") from None


def expected_genesis_hash(
    data_dir: Path, genesis: Genesis | None = None, genesis_hash: str | None = None
) -> tuple[str, Genesis | None]:
    """The hash of the genesis a snapshot restored into ``data_dir`` must be of, and that
    genesis if it is at hand: the data dir's own ``genesis.json``, else the one the operator
    names (``genesis``, or just its hash). A snapshot's own genesis is never the reference:
    anyone can write one. Names that disagree with each other are refused."""
    path = NodeConfig(data_dir=Path(data_dir).resolve()).genesis_path
    ours = Genesis.load(path) if path.exists() else None
    if genesis_hash is not None:
        if not HASH_HEX.fullmatch(genesis_hash.lower()):
            raise SnapshotError(f"{genesis_hash!r} is not a genesis hash (64 hex digits)")
        genesis_hash = genesis_hash.lower()
    named = [
        (what, value)
        for what, value in (
            (str(path), ours and ours.hash.hex()),
            ("the genesis given", genesis and genesis.hash.hex()),
            ("the genesis hash given", genesis_hash),
        )
        if value is not None
    ]
    if not named:
        raise SnapshotError(
            f"{data_dir} has no genesis.json: name the chain's genesis (a file or its hash) to "
            "restore into it; a snapshot's own genesis is not trusted"
        )
    if len({value for _, value in named}) > 1:
        raise SnapshotError(
            "the expected genesis is ambiguous: " + ", ".join(f"{w} is {v}" for w, v in named)
        )
    return named[0][1], ours or genesis


def _set_aside(data_dir: Path) -> Path | None:
    """Move the chain files of ``data_dir`` (those of REPLACED that exist) into a new
    ``aside/<UTC time>/`` directory of it; that directory, or None if there was nothing."""
    present = [data_dir / name for name in REPLACED if (data_dir / name).exists()]
    if not present:
        return None
    when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (data_dir / ASIDE).mkdir(mode=0o700, exist_ok=True)
    for attempt in range(100):
        target = data_dir / ASIDE / (when if attempt == 0 else f"{when}-{attempt}")
        try:
            target.mkdir(mode=0o700)
            break
        except FileExistsError:
            continue
    else:
        raise SnapshotError(f"cannot make a new directory in {data_dir / ASIDE}")
    for path in present:  # the same file system: renames, not copies
        os.replace(path, target / path.name)
    return target


def _extract(archive: Path, staged: Path) -> None:
    """The snapshot's MEMBERS into ``staged``, member by member and regular files only: no
    links, devices or modes come out of an archive (extractall's filter= needs Python 3.11.4;
    Debian 12 has 3.11.2). What IGNORED names is not read at all."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            if (
                len(set(names)) != len(names)
                or not set(names) <= MEMBERS | IGNORED
                or not {"chain.db", "genesis.json"} <= set(names)
            ):
                raise SnapshotError(f"{archive} holds unexpected members: {sorted(names)}")
            for member in members:
                if member.name in IGNORED:
                    continue
                source = tar.extractfile(member) if member.isfile() else None
                if source is None:
                    raise SnapshotError(f"{archive}: {member.name} is not a regular file")
                with source, open(staged / member.name, "wb") as target:
                    shutil.copyfileobj(source, target)
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        raise SnapshotError(f"{archive} cannot be read: {exc}") from None


def restore(
    archive: Path,
    data_dir: Path,
    aside: bool = False,
    genesis: Genesis | None = None,
    genesis_hash: str | None = None,
) -> dict:
    """Replace ``data_dir``'s chain with the snapshot's after checking it against the expected
    genesis (see ``expected_genesis_hash``; ``genesis`` or ``genesis_hash`` name it for a data
    dir without one, which then gets it); returns the manifest, with ``"aside"`` (the
    directory the old chain went to, or None) when ``aside``.

    Everything that depends on the snapshot's content is checked before the first change to
    the data dir: a refused snapshot leaves it as it was. The caller makes sure the node is
    stopped."""
    config = NodeConfig(data_dir=Path(data_dir).resolve())
    expected, reference = expected_genesis_hash(config.data_dir, genesis, genesis_hash)
    manifest = read_manifest(archive)
    if manifest["genesis_hash"] != expected:
        raise SnapshotError(
            f"the snapshot is of chain {manifest['chain_id']!r} with genesis "
            f"{manifest['genesis_hash']}, not of the expected genesis {expected}"
        )
    created = not config.data_dir.exists()
    config.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".restore-", dir=config.data_dir) as tmp:
            staged = Path(tmp)
            _extract(archive, staged)
            if Genesis.load(staged / "genesis.json").hash.hex() != expected:
                raise SnapshotError("the snapshot's genesis.json is not its manifest's genesis")
            reference = reference or Genesis.load(staged / "genesis.json")
            _verify(staged / "chain.db", reference, manifest)
            install = not config.genesis_path.exists()
            if install:
                reference.save(staged / "genesis.json")
            # From here on only renames and unlinks within the data dir's file system.
            if aside:
                moved = _set_aside(config.data_dir)
                manifest = {**manifest, "aside": None if moved is None else str(moved)}
            else:
                for stale in ("chain.db-wal", "chain.db-shm", "consensus.wal"):
                    (config.data_dir / stale).unlink(missing_ok=True)
            if install:
                os.replace(staged / "genesis.json", config.genesis_path)
            os.replace(staged / "chain.db", config.db_path)
    except BaseException:
        if created:
            shutil.rmtree(config.data_dir, ignore_errors=True)
        raise
    return manifest


def _verify(db: Path, genesis: Genesis, manifest: dict) -> None:
    """The staged chain replays from ``genesis`` (every certificate and state digest) to the
    state it stores, at the height and state digest of the manifest."""
    try:
        # Its account index is derived data a crafted database could fake: made anew from
        # the blocks, which the replay below checks.
        storage = Storage(db, rebuild_index=True)
    except (StorageError, sqlite3.Error, struct.error, ValueError) as exc:
        raise SnapshotError(f"the snapshot's chain database cannot be opened: {exc}") from None
    try:
        if storage.get_meta("genesis_hash") != genesis.hash.hex():
            raise SnapshotError("the snapshot's chain database is of another genesis")
        state = replay(storage, genesis)
        stored = storage.load_state()
    except StateDivergence as exc:
        raise SnapshotError(f"the snapshot's chain does not replay: {exc}") from None
    except (StorageError, sqlite3.Error, struct.error, ValueError, TypeError, KeyError) as exc:
        # What a crafted database makes the decoders raise, as a refusal, not a traceback.
        raise SnapshotError(f"the snapshot's chain database is not readable: {exc}") from None
    finally:
        storage.close()
    head = (stored.height, stored.block_hash.hex(), stored.digest.hex())
    if head != (manifest["height"], manifest["block_hash"], manifest["state_digest"]):
        raise SnapshotError("the snapshot's chain is not at the head its manifest says")
    if (state.height, state.block_hash, state.digest) != (
        stored.height,
        stored.block_hash,
        stored.digest,
    ):
        raise SnapshotError("the snapshot's stored state differs from its replayed chain")
