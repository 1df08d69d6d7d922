"""Consistent snapshots of a node's chain, taken while it runs, and their restore.

A snapshot is a tar.gz holding ``MANIFEST.json`` (chain, genesis hash, height, block hash,
state digest, node id, version, time), ``genesis.json``, ``config.toml`` if there is one, and
``chain.db``, copied with SQLite's online backup API: a transaction-consistent copy at one
committed block, while the node keeps committing.

It holds no secret and nothing that must not go back in time: not the node key (restore it
from where keys are kept), not the validator's signing state (a restored validator must not
sign again what it may already have signed; see ``BftConsensus``), not the consensus log.

Restore refuses a snapshot of another chain, checks the archive against its manifest,
replays every block of the copy from genesis (certificates and state digests), and only then
swaps it in; the node must be stopped. The node key and signing state already in the data dir
stay. It never opens the chain it replaces, so it also repairs a damaged one; with
``aside=True`` that chain (``chain.db`` with its WAL files, and ``consensus.wal``) is moved
into ``<data_dir>/aside/<UTC time>/`` rather than deleted, for a later look.
"""

import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

from . import __version__
from .config import NodeConfig
from .genesis import Genesis
from .node import StateDivergence, load_node_key, replay
from .storage import Storage

MANIFEST = "MANIFEST.json"
MEMBERS = {MANIFEST, "genesis.json", "config.toml", "chain.db"}
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
    storage = Storage(db)
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
            config_file = config.data_dir / "config.toml"
            if config_file.exists():
                tar.add(config_file, "config.toml")
            tar.add(copy, "chain.db")
        os.replace(partial, out)
    return manifest


def read_manifest(archive: Path) -> dict:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.extractfile(MANIFEST)
            if member is None:
                raise KeyError(MANIFEST)
            return json.loads(member.read())
    except (OSError, EOFError, zlib.error, tarfile.TarError, KeyError, ValueError) as exc:
        raise SnapshotError(f"{archive} is not a QNet snapshot: {exc}") from None


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


def restore(archive: Path, data_dir: Path, aside: bool = False) -> dict:
    """Replace ``data_dir``'s chain with the snapshot's after checking it; returns the
    manifest, with ``"aside"`` (the directory the old chain went to, or None) when ``aside``.
    The caller makes sure the node is stopped."""
    config = NodeConfig(data_dir=Path(data_dir).resolve())
    manifest = read_manifest(archive)
    if config.genesis_path.exists():
        ours = Genesis.load(config.genesis_path)
        if ours.hash.hex() != manifest["genesis_hash"]:
            raise SnapshotError(
                f"the snapshot is of chain {manifest['chain_id']} (genesis "
                f"{manifest['genesis_hash'][:16]}), {config.data_dir} of {ours.chain_id} "
                f"(genesis {ours.hash.hex()[:16]})"
            )
    config.data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".restore-", dir=config.data_dir) as tmp:
        staged = Path(tmp)
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = tar.getmembers()
                names = {m.name for m in members}
                if not names <= MEMBERS or not {"chain.db", "genesis.json"} <= names:
                    raise SnapshotError(f"{archive} holds unexpected members: {sorted(names)}")
                # Member by member, regular files only: no links, devices or modes come out
                # of an archive (extractall's filter= needs Python 3.11.4; Debian 12 has 3.11.2).
                for member in members:
                    source = tar.extractfile(member) if member.isfile() else None
                    if source is None:
                        raise SnapshotError(f"{archive}: {member.name} is not a regular file")
                    with source, open(staged / member.name, "wb") as target:
                        shutil.copyfileobj(source, target)
        except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
            raise SnapshotError(f"{archive} cannot be read: {exc}") from None
        genesis = Genesis.load(staged / "genesis.json")
        if genesis.hash.hex() != manifest["genesis_hash"]:
            raise SnapshotError("the snapshot's genesis.json does not match its manifest")
        storage = Storage(staged / "chain.db")
        try:
            state = replay(storage, genesis)
            stored = storage.load_state()
        except StateDivergence as exc:
            raise SnapshotError(f"the snapshot's chain does not replay: {exc}") from None
        finally:
            storage.close()
        if (stored.height, stored.digest.hex()) != (manifest["height"], manifest["state_digest"]):
            raise SnapshotError("the snapshot's chain is not at the height its manifest says")
        if state.digest != stored.digest:
            raise SnapshotError("the snapshot's stored state differs from its replayed chain")
        if aside:
            moved = _set_aside(config.data_dir)
            manifest = {**manifest, "aside": None if moved is None else str(moved)}
        else:
            for stale in ("chain.db-wal", "chain.db-shm", "consensus.wal"):
                (config.data_dir / stale).unlink(missing_ok=True)
        for name in ("genesis.json", "config.toml"):
            if (staged / name).exists() and not (config.data_dir / name).exists():
                shutil.copy2(staged / name, config.data_dir / name)
        os.replace(staged / "chain.db", config.db_path)
    return manifest
