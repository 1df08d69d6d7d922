"""The node: admission, block building and committing around the pure ledger.

Flow: request -> decode -> verify signature (threads) -> mempool -> block builder ->
consensus -> apply -> store -> notify. Consensus is a separate driver (``consensus.py``)
that calls ``build_block`` when it proposes and ``commit`` when a block is final.
"""

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import __version__, crypto, ledger
from .block import Block, BlockError, CommitCertificate, Header, precommit_message, tx_root
from .config import NodeConfig
from .errors import Rejected
from .genesis import Genesis
from .mempool import Mempool
from .metrics import Metrics
from .storage import Storage, StorageError
from .tx import DecodeError, Transaction, decode

log = logging.getLogger("qnet.node")

REJECTED_MEMORY = 100_000  # how many recent rejections the status endpoint remembers


class StateDivergence(RuntimeError):
    """The state computed locally differs from what a committed header says: stop loudly."""


def load_node_key(path: Path) -> crypto.KeyPair:
    try:
        seed = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise StorageError(f"cannot read node key {path}: {exc}") from None
    return crypto.KeyPair(seed)


def write_secret(path: Path, text: str) -> None:
    """Create a file readable by its owner only (never briefly world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class Node:
    def __init__(self, config: NodeConfig, genesis: Genesis, key: crypto.KeyPair):
        self.config = config
        self.genesis = genesis
        self.key = key
        self.chain_id = genesis.chain_id
        self.params = genesis.params
        self.metrics = Metrics()
        self.storage = Storage(config.db_path)
        self.storage.initialise(
            self.chain_id, genesis.hash, ledger.State.from_genesis(genesis.account_balances())
        )
        self.state = self.storage.load_state()
        self.mempool = Mempool(
            config.mempool_shards,
            config.mempool_capacity,
            config.mempool_per_sender,
            config.mempool_ttl_s,
        )
        self.rejected: OrderedDict[bytes, Rejected] = OrderedDict()
        self.work = asyncio.Event()
        self.committed_event = asyncio.Event()
        self._verify_pool = ThreadPoolExecutor(config.verify_threads, "qnet-verify")
        self._store_pool = ThreadPoolExecutor(1, "qnet-store")
        self.started_at = time.time()
        # Set by the network driver: receives transactions admitted through the API, to gossip.
        self.relay: Callable[[list[Transaction]], None] | None = None
        # Set by the network driver: peers, sync lag and round, for the status endpoint.
        self.network_status: Callable[[], dict] = lambda: {
            "peers": 0,
            "sync_lag_blocks": 0,
            "consensus_round": 0,
        }
        self.region = config.region
        m = self.metrics
        m.build_info.info(
            {
                "version": __version__,
                "chain_id": self.chain_id,
                "node_id": key.node_id,
                "node_type": config.node_type,
                "region": config.region,
            }
        )
        m.height.set(self.state.height)
        self._check_head()

    def _check_head(self) -> None:
        if self.state.height == 0:
            return
        got = self.storage.block(self.state.height)
        if got is None or got[0].header.state_digest != self.state.digest:
            raise StateDivergence(f"stored state does not match block {self.state.height}")
        log.info(
            "resumed at height %d, state digest %s", self.state.height, self.state.digest.hex()[:16]
        )

    def close(self) -> None:
        self._verify_pool.shutdown(wait=True)
        self._store_pool.shutdown(wait=True)
        self.storage.close()

    @property
    def validator_powers(self) -> dict[bytes, int]:
        return {v.public_key: v.power for v in self.genesis.validators}

    # ---- admission ---------------------------------------------------------------------
    def refuse(self, tx: Transaction | None, exc: Rejected) -> Rejected:
        self.metrics.rejected.labels(exc.code).inc()
        if tx is not None:
            self.rejected[tx.id] = exc
            self.rejected.move_to_end(tx.id)
            while len(self.rejected) > REJECTED_MEMORY:
                self.rejected.popitem(last=False)
        return exc

    def _precheck(self, tx: Transaction) -> None:
        if tx.chain_id != self.chain_id:
            raise Rejected(
                "wrong_chain", f"transaction is for chain {tx.chain_id!r}, not {self.chain_id!r}"
            )
        if tx.id in self.mempool:
            raise Rejected("duplicate", "transaction is already pending")
        if tx.fee < self.params.min_fee:
            raise Rejected(
                "fee_too_low", f"fee {tx.fee} is below the minimum {self.params.min_fee}"
            )

    async def _verify(self, txs: list[Transaction]) -> list[bool]:
        """Verify signatures on the thread pool; PyNaCl releases the GIL, so they overlap."""
        if not txs:
            return []
        started = time.perf_counter()
        n = self.config.verify_threads
        size = -(-len(txs) // n)
        chunks = [txs[i : i + size] for i in range(0, len(txs), size)]
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(loop.run_in_executor(self._verify_pool, _verify_chunk, c) for c in chunks)
        )
        self.metrics.verify_seconds.observe(time.perf_counter() - started)
        return [ok for chunk in results for ok in chunk]

    async def submit(
        self, txs: list[Transaction | DecodeError], relay: bool = True
    ) -> list[Rejected | None]:
        """Admit decoded transactions in order; returns None or the refusal for each."""
        outcome: list[Rejected | None] = [None] * len(txs)
        to_verify: list[tuple[int, Transaction]] = []
        for i, tx in enumerate(txs):
            if isinstance(tx, DecodeError):
                outcome[i] = self.refuse(None, Rejected("malformed", str(tx)))
                continue
            try:
                self._precheck(tx)
            except Rejected as exc:
                outcome[i] = self.refuse(tx, exc)
            else:
                to_verify.append((i, tx))
        verified = await self._verify([tx for _, tx in to_verify])
        now = time.monotonic()
        admitted: list[Transaction] = []
        for (i, tx), ok in zip(to_verify, verified, strict=True):
            try:
                if not ok:
                    raise Rejected(
                        "bad_signature",
                        "signature does not verify for the transaction's public key",
                    )
                for gone in self.mempool.admit(tx, self.state.account(tx.sender), now):
                    self.refuse(
                        gone.tx, Rejected("mempool_full", "evicted by a higher-fee transaction")
                    )
            except Rejected as exc:
                outcome[i] = self.refuse(tx, exc)
            else:
                admitted.append(tx)
                self.rejected.pop(tx.id, None)
        if admitted:
            self.metrics.admitted.inc(len(admitted))
            self._update_mempool_gauges()
            self.work.set()
            if relay and self.relay is not None:
                self.relay(admitted)
        return outcome

    async def submit_raw(self, raws: list[bytes], relay: bool = True) -> list[Rejected | None]:
        decoded: list[Transaction | DecodeError] = []
        for raw in raws:
            try:
                decoded.append(decode(raw))
            except DecodeError as exc:
                decoded.append(exc)
        return await self.submit(decoded, relay)

    def _update_mempool_gauges(self) -> None:
        self.metrics.mempool_size.set(len(self.mempool))
        self.metrics.mempool_senders.set(self.mempool.sender_count)

    def expire_mempool(self) -> None:
        for entry in self.mempool.expire(time.monotonic()):
            self.refuse(entry.tx, Rejected("expired", "not included before the mempool TTL"))
        self._update_mempool_gauges()

    # ---- blocks ------------------------------------------------------------------------
    def build_block(self, time_ms: int) -> tuple[Block, ledger.Diff]:
        """Select from the mempool, apply to an overlay, sign the header. Changes nothing."""
        started = time.perf_counter()
        candidates = self.mempool.select(self.params.max_block_txs)
        diff, included, refused = ledger.apply_transactions(
            self.state, candidates, self.chain_id, self.params.min_fee
        )
        for tx, exc in refused:  # a sender whose head cannot run blocks its whole queue
            for entry in self.mempool.drop_sender(tx.sender):
                self.refuse(entry.tx, exc)
        header = Header(
            chain_id=self.chain_id,
            height=self.state.height + 1,
            time_ms=max(time_ms, self.state.block_time_ms + 1),
            parent=self.state.block_hash,
            tx_root=tx_root([t.id for t in included]),
            tx_count=len(included),
            state_digest=diff.digest,
            proposer=self.key.public_key,
        )
        block = Block(header, self.key.sign(header.encode()), tuple(included))
        self.metrics.build_seconds.observe(time.perf_counter() - started)
        return block, diff

    async def validate_block(self, block: Block) -> ledger.Diff:
        """Check a block proposed or served by another node against the committed state.

        Signatures of transactions this node admitted were verified at admission; the rest
        are verified on the thread pool before the rules run.
        """
        known = {t.id for t in block.txs if t.id in self.mempool}
        unknown = [t for t in block.txs if t.id not in known]
        if not all(await self._verify(unknown)):
            raise InvalidBlock(f"block {block.header.height} holds a badly signed transaction")
        known.update(t.id for t in unknown)
        return check_block(self.state, block, self.chain_id, self.params.min_fee, known)

    async def apply_certified(self, block: Block, cert: CommitCertificate) -> None:
        """Sync: verify a committed block's certificate and contents, then commit it."""
        check_certificate(block, cert, self.chain_id, self.validator_powers)
        diff = await self.validate_block(block)
        await self.commit(block, cert, diff)

    def sign_precommit(self, height: int, round_: int, block_hash: bytes) -> bytes:
        return self.key.sign(precommit_message(self.chain_id, height, round_, block_hash))

    async def commit(self, block: Block, cert: CommitCertificate, diff: ledger.Diff) -> None:
        """Make the block durable, then merge its state and acknowledge its transactions."""
        h = block.header
        if h.height != self.state.height + 1 or h.parent != self.state.block_hash:
            raise StateDivergence(f"block {h.height} does not extend the head {self.state.height}")
        if diff.digest != h.state_digest:
            raise StateDivergence(
                f"block {h.height}: local state digest {diff.digest.hex()} "
                f"differs from the header's {h.state_digest.hex()}"
            )
        started = time.perf_counter()
        await asyncio.get_running_loop().run_in_executor(
            self._store_pool, self.storage.commit_block, block, cert, diff
        )
        self.state.merge(diff, h.height, block.hash, h.time_ms)
        included = {t.id for t in block.txs}
        for entry in self.mempool.on_committed(
            {t.sender for t in block.txs}, lambda s: self.state.account(s)[1]
        ):
            if entry.tx.id not in included:
                self.refuse(
                    entry.tx,
                    Rejected("stale_nonce", "another transaction with this nonce was committed"),
                )
        m = self.metrics
        m.commit_seconds.observe(time.perf_counter() - started)
        m.height.set(h.height)
        m.blocks.inc()
        m.committed.inc(len(block.txs))
        m.block_txs.observe(len(block.txs))
        self._update_mempool_gauges()
        self.committed_event.set()
        self.committed_event = asyncio.Event()

    # ---- queries -----------------------------------------------------------------------
    def tx_status(self, tx_id: bytes) -> dict | None:
        if tx_id in self.mempool:
            return {"id": tx_id.hex(), "status": "pending"}
        loc = self.storage.tx_location(tx_id)
        if loc is not None:
            return {"id": tx_id.hex(), "status": "committed", "height": loc[0], "index": loc[1]}
        refused = self.rejected.get(tx_id)
        if refused is not None:
            return {
                "id": tx_id.hex(),
                "status": "rejected",
                "reason": refused.code,
                "message": refused.message,
            }
        return None

    def status(self) -> dict:
        s = self.state
        return {
            "node_id": self.key.node_id,
            "node_type": self.config.node_type,
            "region": self.region,
            "version": __version__,
            "chain_id": self.chain_id,
            "genesis_hash": self.genesis.hash.hex(),
            "height": s.height,
            "block_hash": s.block_hash.hex(),
            "block_time_ms": s.block_time_ms,
            "state_digest": s.digest.hex(),
            "mempool_size": len(self.mempool),
            "uptime_s": round(time.time() - self.started_at, 3),
            **self.network_status(),
        }


def _verify_chunk(txs: list[Transaction]) -> list[bool]:
    return [t.verify_signature() for t in txs]


class InvalidBlock(ValueError):
    """A block or certificate from elsewhere that breaks a rule; it is refused, not applied."""


def check_certificate(
    block: Block, cert: CommitCertificate, chain_id: str, powers: dict[bytes, int]
) -> None:
    if cert.block_hash != block.hash or cert.height != block.header.height:
        raise InvalidBlock(f"block {block.header.height}: certificate is for another block")
    try:
        cert.verify(chain_id, powers)
    except BlockError as exc:
        raise InvalidBlock(f"block {block.header.height}: {exc}") from None


def check_block(
    state: ledger.State,
    block: Block,
    chain_id: str,
    min_fee: int,
    verified: set[bytes] | frozenset = frozenset(),
) -> ledger.Diff:
    """Every rule a block must pass on top of ``state``; returns its diff, changes nothing.

    Signatures of transactions whose ids are in ``verified`` were checked before (once per
    node); the others are checked here.
    """
    h = block.header
    if h.chain_id != chain_id:
        raise InvalidBlock(f"block {h.height} is for chain {h.chain_id!r}")
    if h.height != state.height + 1 or h.parent != state.block_hash:
        raise InvalidBlock(f"block {h.height} does not extend block {state.height}")
    if h.time_ms <= state.block_time_ms:
        raise InvalidBlock(f"block {h.height} is not later than its parent")
    try:
        block.verify_shape()
    except BlockError as exc:
        raise InvalidBlock(str(exc)) from None
    if not all(t.verify_signature() for t in block.txs if t.id not in verified):
        raise InvalidBlock(f"block {h.height} holds a badly signed transaction")
    diff, _included, refused = ledger.apply_transactions(state, list(block.txs), chain_id, min_fee)
    if refused:
        raise InvalidBlock(f"block {h.height}: {refused[0][1].message}")
    if diff.digest != h.state_digest:
        raise InvalidBlock(
            f"block {h.height}: state digest {diff.digest.hex()[:16]} differs "
            f"from the header's {h.state_digest.hex()[:16]}"
        )
    return diff


def replay(storage: Storage, genesis: Genesis) -> ledger.State:
    """Re-apply every stored block from genesis, checking certificates and state digests."""
    state = ledger.State.from_genesis(genesis.account_balances())
    powers = {v.public_key: v.power for v in genesis.validators}
    for block, cert in storage.iter_blocks():
        try:
            check_certificate(block, cert, genesis.chain_id, powers)
            diff = check_block(state, block, genesis.chain_id, genesis.params.min_fee)
        except InvalidBlock as exc:
            raise StateDivergence(f"stored chain does not replay: {exc}") from None
        state.merge(diff, block.header.height, block.hash, block.header.time_ms)
    return state
