"""Durable chain storage in SQLite (WAL, synchronous=FULL).

A committed block, its indexes (transactions by id, the transactions of each account,
heartbeats), its commit certificate and the state change it makes (accounts, node and epoch
records, counters) are written in one SQLite transaction: after a crash the database holds
either all of a block or none of it, and restart resumes at the last committed block.

The account index and the frame positions in the id index came after the first release: a
database that lacks some of them (made by an earlier version, or by one a rolling upgrade rolled
back to) gets the missing blocks indexed when it is opened, in one transaction with the height
it is complete to (meta ``INDEXED``).
"""

import contextlib
import json
import logging
import sqlite3
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .block import Block, CommitCertificate, Header
from .ledger import EMPTY, Diff, EpochClock, EpochRecord, NodeRecord, State, Supply
from .tx import (
    KIND_TRANSFER,
    DecodeError,
    Transaction,
    decode,
    framed_size,
    read_frame,
    split_batch,
)

log = logging.getLogger("qnet.storage")

INDEXED = "account_txs_height"  # meta: account_txs and frame_offsets hold every block to it
OFFSET = struct.Struct(">I")  # a frame's offset in its block's body, in ``frame_offsets``
PLACE = struct.Struct(">II")  # a transaction's index in its block and OFFSET, in account_txs

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, hash BLOB NOT NULL, header BLOB NOT NULL,
    signature BLOB NOT NULL, body BLOB NOT NULL, certificate BLOB NOT NULL);
-- tx_index is as the first release wrote it, so that a node rolled back to it still commits.
CREATE TABLE IF NOT EXISTS tx_index (
    id BLOB PRIMARY KEY, height INTEGER NOT NULL, idx INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS accounts (
    address BLOB PRIMARY KEY, balance INTEGER NOT NULL, nonce INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (node_key BLOB PRIMARY KEY, record BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epochs (epoch INTEGER PRIMARY KEY, record BLOB NOT NULL);
-- Which epochs each node was eligible in: an index for the API, like tx_index, derived from
-- the blocks; the ledger itself needs only the node and epoch records.
CREATE TABLE IF NOT EXISTS heartbeats (
    node_key BLOB NOT NULL, epoch INTEGER NOT NULL, PRIMARY KEY (node_key, epoch)) WITHOUT ROWID;
-- The transactions that touch each account, for the API's account history: a row per
-- account and block (``BlockIndex``), whose ``places`` (``PLACE`` each, ascending) say where
-- they are in the block, so that a page of history reads its own transactions, not their
-- blocks. A row per account and block rather than per transaction: a block of a load test
-- (thousands of transactions from a few thousand senders, to one address) inserts a few
-- thousand rows instead of twice as many as it has transactions.
CREATE TABLE IF NOT EXISTS account_txs (
    address BLOB NOT NULL, height INTEGER NOT NULL, places BLOB NOT NULL,
    PRIMARY KEY (address, height)) WITHOUT ROWID;
-- Where each transaction's frame starts in its block's body (``OFFSET`` each, in block
-- order), so that a transaction found by id in tx_index is read alone, not its whole block.
CREATE TABLE IF NOT EXISTS frame_offsets (height INTEGER PRIMARY KEY, offsets BLOB NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class BlockIndex:
    """What a block adds to the indexes: ``tx_index`` rows (id, height, index),
    ``account_txs`` rows (address, height, places) — the places of the transactions each
    address sent and of the transfers to it from another — and its ``frame_offsets`` row."""

    ids: list[tuple[bytes, int, int]]
    accounts: list[tuple[bytes, int, bytes]]
    offsets: tuple[int, bytes]

    @classmethod
    def of(cls, height: int, txs: Sequence[Transaction]) -> "BlockIndex":
        ids, places, offsets = [], {}, []
        pos = 0
        for idx, t in enumerate(txs):
            ids.append((t.id, height, idx))
            place = PLACE.pack(idx, pos)
            places.setdefault(t.sender, []).append(place)
            if t.kind == KIND_TRANSFER and t.to != t.sender:
                places.setdefault(t.to, []).append(place)
            offsets.append(pos)
            pos += framed_size(t)
        # In key order: each B-tree page is visited once.
        accounts = sorted((address, height, b"".join(p)) for address, p in places.items())
        return cls(ids, accounts, (height, struct.pack(f">{len(offsets)}I", *offsets)))

    def write(self, cur, replace_ids: bool = False) -> None:
        verb = "INSERT OR REPLACE" if replace_ids else "INSERT"
        cur.executemany(f"{verb} INTO tx_index VALUES (?,?,?)", self.ids)
        cur.executemany("INSERT INTO account_txs VALUES (?,?,?)", self.accounts)
        cur.execute("INSERT OR REPLACE INTO frame_offsets VALUES (?,?)", self.offsets)


@dataclass(frozen=True, slots=True)
class CommittedTx:
    """A committed transaction with where it is: its block's height and time, its index."""

    height: int
    index: int
    time_ms: int
    tx: Transaction

    def to_json(self) -> dict:
        return {
            "id": self.tx.id.hex(),
            "status": "committed",
            "height": self.height,
            "index": self.index,
            "time_ms": self.time_ms,
            **self.tx.to_json(),
        }


class StorageError(RuntimeError):
    pass


class DamagedStorage(StorageError):
    """The chain database is unreadable, fails its integrity check or holds a state that
    does not add up: its data cannot be trusted (resync the node)."""


_DAMAGE_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _one_line(problems: list[str], limit: int = 300) -> str:
    text = "; ".join(line for p in problems for line in p.splitlines() if line.strip())
    return text if len(text) <= limit else text[:limit] + "…"


@contextlib.contextmanager
def _damage_reported(path: Path):
    """SQLite's "database disk image is malformed" and "file is not a database" as
    DamagedStorage naming the file; other SQLite errors (cannot open, locked) as they are."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _DAMAGE_CODES:
            raise DamagedStorage(f"chain database {path} is damaged: {exc}") from None
        raise


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
    except BaseException:
        conn.close()
        raise
    return conn


class Storage:
    """One writer connection (used from one thread at a time) and one reader connection."""

    def __init__(self, path: Path, rebuild_index: bool = False, index: bool = True):
        """Open (or create) the database at ``path`` and complete its indexes; with
        ``rebuild_index``, they are made anew from the blocks (whatever a database of unknown
        origin holds in them). Without ``index``, an existing database is opened as it is and
        nothing is written (for reading beside a running node; its indexes may be incomplete)."""
        self.path = Path(path)
        with _damage_reported(self.path):
            self._writer = _connect(self.path)
            try:
                self._check_integrity()
                if index:
                    self._writer.executescript(SCHEMA)
                    self._index_accounts(rebuild_index)
                self._reader = _connect(self.path)
            except BaseException:
                self._writer.close()
                raise
        self._read_lock = threading.Lock()

    def _index_accounts(self, rebuild: bool) -> None:
        """Index the blocks above the height meta ``INDEXED`` records (all of them if there is
        none, or with ``rebuild``), in one transaction that records the head. A node rolled
        back to the first release writes tx_index and not the rest, and leaves ``INDEXED``
        behind: the blocks it committed are indexed here when a later version opens them."""
        if self._index_gap(self._writer, rebuild) is None:
            return
        started, rows = time.monotonic(), 0
        with self._transaction(self._writer) as cur:
            gap = self._index_gap(cur, rebuild)  # again, now that no one else writes
            if gap is None:
                return
            first, head = gap
            if first == 1:
                for table in ("account_txs", "frame_offsets", "tx_index"):
                    cur.execute(f"DELETE FROM {table}")
            for height in range(first, head + 1):
                index = BlockIndex.of(height, self._backfill_txs(cur, height, head))
                index.write(cur, replace_ids=True)
                rows += len(index.ids) + len(index.accounts)
            self._put_meta(cur, {INDEXED: str(head)})
        if first <= head:
            log.info(
                "account index: blocks %d to %d indexed (%d rows) in %.1f s",
                first,
                head,
                rows,
                time.monotonic() - started,
            )

    def _backfill_txs(self, cur, height: int, head: int) -> list[Transaction]:
        """The transactions of stored block ``height``; a block missing or unreadable below
        the head is damage."""
        row = cur.execute("SELECT body FROM blocks WHERE height=?", (height,)).fetchone()
        if row is None:
            raise DamagedStorage(
                f"chain database {self.path} is damaged: no block {height} below its head {head}"
            )
        try:
            return [decode(raw) for raw in split_batch(row[0])]
        except (DecodeError, ValueError, struct.error) as exc:
            raise DamagedStorage(
                f"chain database {self.path} is damaged: the body of block {height} is not "
                f"readable ({exc})"
            ) from None

    def _index_gap(self, cur, rebuild: bool) -> tuple[int, int] | None:
        """The first and last height the account index lacks; None if it lacks none or the
        database holds no chain yet (``initialise`` records the empty index)."""
        head = self._meta(cur, "height")
        if head is None:
            return None
        done = None if rebuild else self._meta(cur, INDEXED)
        first = 1 if done is None else int(done) + 1
        return (first, int(head)) if done is None or first <= int(head) else None

    def _check_integrity(self) -> None:
        """SQLite's quick check of every page at open: damage found now stops the node
        before it builds on it."""
        problems = [row[0] for row in self._writer.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise DamagedStorage(f"chain database {self.path} is damaged: {_one_line(problems)}")

    def close(self) -> None:
        self._writer.close()
        self._reader.close()

    # ---- meta --------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with _damage_reported(self.path):
            return self._meta(self._writer, key)

    @staticmethod
    def _meta(cur, key: str) -> str | None:
        row = cur.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def initialise(self, chain_id: str, genesis_hash: bytes, state: State) -> None:
        """Record genesis once; refuses a data dir that belongs to another chain."""
        existing = self.get_meta("genesis_hash")
        if existing is not None:
            if existing != genesis_hash.hex():
                raise StorageError(
                    f"data dir {self.path.parent} belongs to another genesis "
                    f"({existing[:16]}…), not {genesis_hash.hex()[:16]}…"
                )
            return
        with self._transaction(self._writer) as cur:
            cur.executemany(
                "INSERT INTO accounts VALUES (?,?,?)",
                [(a, b, n) for a, (b, n) in state.accounts.items()],
            )
            self._put_records(cur, state.nodes, state.epochs)
            self._put_meta(cur, {"chain_id": chain_id, "genesis_hash": genesis_hash.hex()})
            self._put_head(
                cur,
                state.height,
                state.block_hash,
                state.block_time_ms,
                state.supply,
                state.clock,
                state.accumulator,
            )

    def load_state(self) -> State:
        with _damage_reported(self.path):
            state = self._load_state()
        if state.accumulator != int(self.get_meta("accumulator")):
            raise DamagedStorage(
                f"chain database {self.path} is damaged: its state entries do not match "
                "the stored accumulator"
            )
        return state

    def _load_state(self) -> State:
        accounts = {
            a: (b, n)
            for a, b, n in self._writer.execute("SELECT address, balance, nonce FROM accounts")
        }
        nodes = {
            k: NodeRecord.decode(r)
            for k, r in self._writer.execute("SELECT node_key, record FROM nodes")
        }
        epochs = {
            e: EpochRecord.decode(r)
            for e, r in self._writer.execute("SELECT epoch, record FROM epochs")
        }
        return State(
            accounts,
            Supply(**json.loads(self.get_meta("supply"))),
            int(self.get_meta("height")),
            bytes.fromhex(self.get_meta("block_hash")),
            int(self.get_meta("block_time_ms")),
            nodes,
            epochs,
            EpochClock(**json.loads(self.get_meta("clock"))),
        )

    # ---- commit ------------------------------------------------------------------------
    def commit_block(self, block: Block, cert: CommitCertificate, diff: Diff) -> None:
        h = block.header
        with self._transaction(self._writer) as cur:
            cur.execute(
                "INSERT INTO blocks VALUES (?,?,?,?,?,?)",
                (h.height, block.hash, h.encode(), block.signature, block.body(), cert.encode()),
            )
            BlockIndex.of(h.height, block.txs).write(cur)
            gone = [(a,) for a, acc in diff.accounts.items() if acc == EMPTY]
            cur.executemany("DELETE FROM accounts WHERE address=?", gone)
            cur.executemany(
                "INSERT OR REPLACE INTO accounts VALUES (?,?,?)",
                [(a, b, n) for a, (b, n) in diff.accounts.items() if (b, n) != EMPTY],
            )
            self._put_records(cur, diff.nodes, diff.epochs)
            cur.executemany("INSERT INTO heartbeats VALUES (?,?)", diff.heartbeats)
            self._put_head(
                cur, h.height, block.hash, h.time_ms, diff.supply, diff.clock, diff.accumulator
            )

    @staticmethod
    def _put_records(cur, nodes: dict[bytes, NodeRecord], epochs: dict[int, EpochRecord]) -> None:
        cur.executemany(
            "INSERT OR REPLACE INTO nodes VALUES (?,?)",
            [(k, r.encode()) for k, r in nodes.items()],
        )
        cur.executemany(
            "INSERT OR REPLACE INTO epochs VALUES (?,?)",
            [(e, r.encode()) for e, r in epochs.items()],
        )

    def _put_head(self, cur, height, block_hash, time_ms, supply, clock, accumulator) -> None:
        self._put_meta(
            cur,
            {
                "height": str(height),
                "block_hash": block_hash.hex(),
                "block_time_ms": str(time_ms),
                "supply": json.dumps(asdict(supply)),
                "clock": json.dumps(asdict(clock)),
                "accumulator": str(accumulator),
                INDEXED: str(height),  # its rows are written with the block's
            },
        )

    @staticmethod
    def _put_meta(cur, values: dict[str, str]) -> None:
        cur.executemany("INSERT OR REPLACE INTO meta VALUES (?,?)", list(values.items()))

    class _transaction:
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn.cursor()

        def __exit__(self, exc_type, exc, tb):
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")

    # ---- reads (API thread) ------------------------------------------------------------
    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._read_lock, _damage_reported(self.path):
            return self._reader.execute(sql, args).fetchall()

    def block(self, height: int) -> tuple[Block, CommitCertificate] | None:
        rows = self._read(
            "SELECT header, signature, body, certificate FROM blocks WHERE height=?", (height,)
        )
        if not rows:
            return None
        header, signature, body, cert = rows[0]
        return Block.from_parts(header, signature, body), CommitCertificate.decode(cert)

    def encoded_block(self, height: int) -> tuple[bytes, bytes] | None:
        """(``Block.encode()`` bytes, certificate bytes) straight from disk, for sync."""
        rows = self._read(
            "SELECT header, signature, body, certificate FROM blocks WHERE height=?", (height,)
        )
        if not rows:
            return None
        header, signature, body, cert = rows[0]
        return Block.encode_parts(header, signature, body), cert

    def encoded_header(self, height: int) -> tuple[bytes, bytes] | None:
        """(header bytes, certificate bytes): what a light node needs of a block."""
        rows = self._read("SELECT header, certificate FROM blocks WHERE height=?", (height,))
        return (rows[0][0], rows[0][1]) if rows else None

    def headers(self, first: int, last: int) -> list[Header]:
        rows = self._read(
            "SELECT header FROM blocks WHERE height BETWEEN ? AND ? ORDER BY height", (first, last)
        )
        return [Header.decode(r[0]) for r in rows]

    def heartbeat_epochs(self, node_key: bytes, first: int) -> list[int]:
        """Epochs from ``first`` on in which the node's heartbeat is on chain, ascending."""
        rows = self._read(
            "SELECT epoch FROM heartbeats WHERE node_key=? AND epoch>=? ORDER BY epoch",
            (node_key, first),
        )
        return [r[0] for r in rows]

    def tx_location(self, tx_id: bytes) -> tuple[int, int] | None:
        rows = self._read("SELECT height, idx FROM tx_index WHERE id=?", (tx_id,))
        return rows[0] if rows else None

    def committed_tx(self, tx_id: bytes) -> CommittedTx | None:
        """A committed transaction by its id (its frame alone is read from its block)."""
        with self._read_lock, _damage_reported(self.path):
            rows = self._reader.execute(
                "SELECT t.height, t.idx, substr(o.offsets, t.idx * ? + 1, ?), b.header "
                "FROM tx_index t JOIN frame_offsets o ON o.height = t.height "
                "JOIN blocks b ON b.height = t.height WHERE t.id=?",
                (OFFSET.size, OFFSET.size, tx_id),
            ).fetchall()
            found = [(h, i, OFFSET.unpack(offset)[0], header) for h, i, offset, header in rows]
            return next(iter(self._read_frames(found)), None)

    def account_txs(self, address: bytes, before: tuple[int, int], limit: int) -> list[CommittedTx]:
        """Up to ``limit`` committed transactions that touch ``address``, newest first, among
        those before ``before`` (a height and an index in its block)."""
        found = []  # height, index, pos, header
        with self._read_lock, _damage_reported(self.path):
            rows = self._reader.execute(
                "SELECT a.height, a.places, b.header FROM account_txs a "
                "JOIN blocks b ON b.height = a.height WHERE a.address=? AND a.height<=? "
                "ORDER BY a.height DESC LIMIT ?",
                (address, before[0], limit + 1),  # the first may hold none before ``before``
            )
            with contextlib.closing(rows):  # read row by row: a busy address's are large
                for height, places, header in rows:
                    at = len(places)
                    while at and len(found) < limit:  # newest first
                        at -= PLACE.size
                        idx, pos = PLACE.unpack_from(places, at)
                        if (height, idx) < before:
                            found.append((height, idx, pos, header))
                    if len(found) == limit:
                        break
            return self._read_frames(found)

    def _read_frames(self, found: list[tuple[int, int, int, bytes]]) -> list[CommittedTx]:
        """The transactions at (height, index, pos, header): each read as its one frame of its
        block's body. The caller holds the read lock."""
        raws = []
        for height, _, pos, _ in found:  # blocks never change: no need of one snapshot
            with self._reader.blobopen("blocks", "body", height, readonly=True) as body:
                body.seek(pos)
                raws.append(read_frame(body.read))
        return [
            CommittedTx(height, idx, Header.decode(header).time_ms, decode(raw))
            for (height, idx, _, header), raw in zip(found, raws, strict=True)
        ]

    def iter_blocks(self):
        """Every stored block with its certificate, in height order (for replay)."""
        height = 1
        while (got := self.block(height)) is not None:
            yield got
            height += 1
