"""The node: admission, block building and committing around the pure ledger.

Flow: request -> decode -> cheap checks -> verify signature (threads, once per node) ->
mempool -> block builder -> consensus -> apply -> store -> notify. Consensus is a separate
driver (``consensus.py``) that calls ``build_block`` when it proposes and ``commit`` when a
block is final.
"""

import asyncio
import logging
import math
import os
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

from . import __version__, crypto, ledger
from .amounts import format_qnc
from .block import Block, BlockError, CommitCertificate, Header, precommit_message, tx_root
from .config import NodeConfig
from .errors import Rejected
from .genesis import NODE_TYPES, REGIONS, Genesis
from .journal import Journal, read_journal
from .mempool import BatchCheck, Mempool
from .metrics import Metrics
from .storage import Storage, StorageError
from .tx import (
    KIND_ACTIVATE,
    KIND_HEARTBEAT,
    DecodeError,
    Transaction,
    decode,
    framed_size,
    make_heartbeat,
)
from .wire import HeartbeatView

log = logging.getLogger("qnet.node")

REJECTED_MEMORY = 100_000  # how many recent rejections the status endpoint remembers
VERIFIED_MEMORY = 100_000  # ids of transactions whose signatures verified, beyond the mempool
ARRIVALS_KEPT = 1_024  # recent blocks whose arrival time the node remembers


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
        self.rules = ledger.Rules.from_genesis(genesis)
        self.network = self.rules.network  # what this node signs for and verifies against
        self.metrics = Metrics(config.data_dir)
        self.storage = Storage(config.db_path)
        self.storage.initialise(self.chain_id, genesis.hash, ledger.genesis_state(genesis))
        self.state = self.storage.load_state()
        self.mempool = Mempool(
            config.mempool_shards,
            config.mempool_capacity,
            config.mempool_per_sender,
            config.mempool_ttl_s,
        )
        # Accepted transactions, on disk before the API says so (None: journal = false).
        self.journal = (
            Journal(config.journal_path, self.mempool, self._journal_synced)
            if config.journal
            else None
        )
        self.stopping = False  # set when a graceful stop begins: admit nothing more
        self.rejected: OrderedDict[bytes, Rejected] = OrderedDict()
        # Transactions whose signatures verified here, most recent last: a signature is
        # verified once per node, whether it came to admission or in a block first.
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        # Done when the batch admitted last (in the order of their cheap checks) is through:
        # batches are admitted in that order, whichever's signatures verify first.
        self._admitted_last: asyncio.Future | None = None
        self.work = asyncio.Event()
        self.committed_event = asyncio.Event()
        self._verify_pool = ThreadPoolExecutor(config.verify_threads, "qnet-verify")
        self._store_pool = ThreadPoolExecutor(1, "qnet-store")
        self.started_at = time.time()
        # Set by the network driver: receives newly admitted transactions to gossip, with the
        # node id of the peer they came from (None: through the API).
        self.relay: Callable[[list[Transaction], str | None], None] | None = None
        # When this node learnt of each recent committed block: (height, unix ms).
        self.arrivals: deque[tuple[int, int]] = deque(maxlen=ARRIVALS_KEPT)
        # Set by the network driver: the connected peers, for ``network peers``.
        self.network_peers: Callable[[], list[dict]] = list
        # Set by the network driver: peers, sync lag and round, for the status endpoint.
        self.network_status: Callable[[], dict] = lambda: {
            "peers": 0,
            "sync_lag_blocks": 0,
            "consensus_round": 0,
        }
        self.region = config.region
        self.region_rtt_ms: dict[str, float] | None = None  # measured by --region=auto
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
        m.head_time.set(self.state.block_time_ms / 1000)
        m.mempool_capacity.set(config.mempool_capacity)
        self._validator_ids = tuple((v.public_key, v.node_id) for v in genesis.validators)
        for _, node_id in self._validator_ids:  # zeroes from the start: rates see every one
            m.missed_precommits.labels(node_id)
        self._update_ledger_gauges()
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

    async def aclose(self) -> None:
        """Close after a stop: the journal once a write under way is done, then the rest."""
        if self.journal is not None:
            await self.journal.close()
        self.close()

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

    def epoch_now(self) -> int:
        """The epoch the next block will be in, by this node's clock."""
        return max(self.state.epoch, self.rules.epoch_of(int(time.time() * 1000)))

    def _precheck(self, tx: Transaction, view: ledger.Overlay, batch: BatchCheck) -> None:
        """The cheap checks, before the signature is verified: refuse early what cannot pass
        in the next block (``view``; the block path checks again): chain, duplicates, size,
        fee and the rules of the kind, then the mempool's (``batch``): nonce window, funds
        with the fee, per-sender limits, one heartbeat per node and epoch, room."""
        if tx.chain_id != self.chain_id:
            raise Rejected(
                "wrong_chain", f"transaction is for chain {tx.chain_id!r}, not {self.chain_id!r}"
            )
        if not self.rules.block_limits.fits(1, framed_size(tx)):
            raise Rejected(
                "malformed",
                f"transaction of {len(tx.raw)} bytes does not fit in a block "
                f"(max_block_bytes {self.params.max_block_bytes})",
            )
        ledger.check_fee(tx, self.rules)
        ledger.check_kind(view, tx, self.rules)
        batch.check(tx, self.state.account(tx.sender))

    def _signature_known(self, tx_id: bytes) -> bool:
        return tx_id in self.mempool or tx_id in self._verified

    async def _verify(self, txs: list[Transaction]) -> list[bool]:
        """Verify signatures on the thread pool (PyNaCl releases the GIL, so they overlap),
        except those verified here before; remembers those that verify."""
        todo = [t for t in txs if not self._signature_known(t.id)]
        if not todo:
            return [True] * len(txs)
        started = time.perf_counter()
        n = self.config.verify_threads
        size = -(-len(todo) // n)
        chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(
                loop.run_in_executor(self._verify_pool, _verify_chunk, self.network, c)
                for c in chunks
            )
        )
        self.metrics.verify_seconds.observe(time.perf_counter() - started)
        failed = set()
        for t, ok in zip(todo, (ok for chunk in results for ok in chunk), strict=True):
            if ok:
                self._verified[t.id] = None
                self._verified.move_to_end(t.id)
            else:
                failed.add(t.id)
        while len(self._verified) > VERIFIED_MEMORY:
            self._verified.popitem(last=False)
        return [t.id not in failed for t in txs]

    @property
    def height(self) -> int:
        return self.state.height

    async def submit(
        self,
        txs: list[Transaction | DecodeError],
        relay: bool = True,
        source: str | None = None,
    ) -> list[Rejected | None]:
        """Admit decoded transactions in order; returns None or the refusal for each.
        Admitted ones are handed to the network to gossip if ``relay``, with ``source``,
        the peer they came from. Those that did not come from a peer are journaled before
        this returns: accepted means kept, across a crash too (the peer that accepted the
        others journaled them). Raises JournalError if they could not be made durable."""
        outcome, admitted = await self._admit(txs, relay, source)
        if source is None and self.journal is not None:
            await self.journal.append(admitted)
        return outcome

    async def _admit(
        self, txs: list[Transaction | DecodeError], relay: bool, source: str | None
    ) -> tuple[list[Rejected | None], list[Transaction]]:
        outcome: list[Rejected | None] = [None] * len(txs)
        to_verify: list[tuple[int, Transaction]] = []
        # What passed the cheap checks is in flight (later batches' cheap checks count it)
        # until admitted or refused below, after every batch checked before this one; the
        # flight ends whatever happens.
        flying: list[Transaction] = []
        before = self._admitted_last
        done = self._admitted_last = asyncio.get_running_loop().create_future()
        try:
            view = ledger.begin_block(self.state, self.rules, self.epoch_now())
            batch = self.mempool.batch_check()
            for i, tx in enumerate(txs):
                if isinstance(tx, DecodeError):
                    outcome[i] = self.refuse(None, Rejected("malformed", str(tx)))
                    continue
                try:
                    self._precheck(tx, view, batch)
                except Rejected as exc:
                    outcome[i] = self.refuse(tx, exc)
                else:
                    to_verify.append((i, tx))
                    flying.append(tx)
            verified = await self._verify(flying)
            if before is not None and flying:  # a batch refused whole waits for no other
                await asyncio.shield(before)
            return outcome, self._admit_verified(to_verify, verified, outcome, relay, source)
        finally:
            self.mempool.release(flying)
            if before is None or before.done():
                done.set_result(None)
            else:  # cancelled while waiting: whoever comes next still waits for ``before``
                before.add_done_callback(lambda _: done.set_result(None))

    def _admit_verified(
        self,
        to_verify: list[tuple[int, Transaction]],
        verified: list[bool],
        outcome: list[Rejected | None],
        relay: bool,
        source: str | None,
    ) -> list[Transaction]:
        now = time.monotonic()
        admitted: list[Transaction] = []
        for (i, tx), ok in zip(to_verify, verified, strict=True):
            try:
                if not ok:
                    raise Rejected("bad_signature", _bad_signature_message(tx, self.network))
                for gone in self.mempool.admit(tx, self.state.account(tx.sender), now):
                    self.refuse(gone.tx, _displaced(gone.tx, tx))
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
                self.relay(admitted, source)
        return admitted

    async def restore_journal(self) -> None:
        """At start, before the API serves: re-admit what the journal holds (accepted before
        a stop or a crash) through the usual checks, then rewrite it to hold only what is
        pending. Committed and now invalid transactions are dropped and counted in the log;
        the invalid ones are reported rejected by the transaction status."""
        path = self.config.journal_path
        records = read_journal(path).records
        txs: list[Transaction | DecodeError] = []
        committed = 0
        for raw in records:
            try:
                tx = decode(raw)
            except DecodeError as exc:
                txs.append(exc)
                continue
            if self.storage.tx_location(tx.id) is None:
                txs.append(tx)
            else:
                committed += 1
        outcome, admitted = await self._admit(txs, relay=False, source=None)
        if records:
            refused = Counter(o.code for o in outcome if o is not None)
            log.info(
                "journal: %d transactions, %d re-admitted, %d already committed, %d refused%s",
                len(records),
                len(admitted),
                committed,
                refused.total(),
                "".join(f", {n} {code}" for code, n in sorted(refused.items())),
            )
        if self.journal is not None:
            await self.journal.rewrite_with([tx.raw for tx in self.mempool.pending()])
        else:
            path.unlink(missing_ok=True)  # its transactions are in the mempool, unjournaled

    def _journal_synced(self, records: int, seconds: float) -> None:
        self.metrics.journal_fsyncs.inc()
        self.metrics.journal_records.inc(records)
        self.metrics.journal_fsync_seconds.observe(seconds)

    async def submit_raw(
        self, raws: list[bytes], relay: bool = True, source: str | None = None
    ) -> list[Rejected | None]:
        decoded: list[Transaction | DecodeError] = []
        for raw in raws:
            try:
                decoded.append(decode(raw))
            except DecodeError as exc:
                decoded.append(exc)
        return await self.submit(decoded, relay, source)

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
        time_ms = max(time_ms, self.state.block_time_ms + 1)
        candidates = self.mempool.select(self.rules.block_limits)
        diff, included, refused = ledger.apply_block(self.state, candidates, self.rules, time_ms)
        for tx, exc in refused:  # a sender whose head cannot run blocks its whole queue
            for entry in self.mempool.drop_sender(tx.sender):
                self.refuse(entry.tx, exc)
        header = Header(
            chain_id=self.chain_id,
            height=self.state.height + 1,
            time_ms=time_ms,
            parent=self.state.block_hash,
            tx_root=tx_root([t.id for t in included]),
            tx_count=len(included),
            state_digest=diff.digest,
            proposer=self.key.public_key,
        )
        block = Block(header, self.key.sign(header.signing_message(self.network)), tuple(included))
        self.metrics.build_seconds.observe(time.perf_counter() - started)
        return block, diff

    async def validate_block(self, block: Block) -> ledger.Diff:
        """Check a block proposed or served by another node against the committed state.

        The header's rules (the genesis limits among them) come first; then signatures not
        verified here before (at admission or in an earlier block) are verified on the
        thread pool, then the ledger's rules run.
        """
        check_header(self.state, block, self.rules)
        if not all(await self._verify(list(block.txs))):
            raise InvalidBlock(f"block {block.header.height} holds a badly signed transaction")
        return check_contents(self.state, block, self.rules)

    async def apply_certified(self, block: Block, cert: CommitCertificate) -> None:
        """Sync: verify a committed block's certificate and contents, then commit it."""
        check_certificate(block, cert, self.network, self.validator_powers)
        diff = await self.validate_block(block)
        await self.commit(block, cert, diff)

    def sign_precommit(self, height: int, round_: int, block_hash: bytes) -> bytes:
        return self.key.sign(precommit_message(self.network, height, round_, block_hash))

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
        self.arrivals.append((h.height, int(time.time() * 1000)))
        self._drop_stale_heartbeats()
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
        m.head_time.set(h.time_ms / 1000)
        m.blocks.inc()
        signed = {public_key for public_key, _ in cert.signatures}
        for public_key, node_id in self._validator_ids:
            if public_key not in signed:
                m.missed_precommits.labels(node_id).inc()
        m.committed.inc(len(block.txs))
        m.block_txs.observe(len(block.txs))
        m.heartbeats.inc(len(diff.heartbeats))
        m.rewards_claimed.inc(
            sum(r.last_claim_amount for r in diff.nodes.values() if r.last_claim_height == h.height)
        )
        self._update_mempool_gauges()
        self._update_ledger_gauges()
        self.committed_event.set()
        self.committed_event = asyncio.Event()

    def _drop_stale_heartbeats(self) -> None:
        """A heartbeat whose epoch closed before a block took it never can be taken: drop it
        (and what its sender queued after it), or its node would wait for it until the
        mempool TTL instead of sending the next epoch's. Nodes that build no blocks need
        this; a proposer drops such a sender when building anyway."""
        for entry in self.mempool.drop_stale_heartbeats(self.state.epoch):
            t = entry.tx
            message = (
                f"epoch {t.epoch} closed before it was included"
                if t.kind == KIND_HEARTBEAT
                else "queued after a heartbeat whose epoch closed before it was included"
            )
            self.refuse(t, Rejected("wrong_epoch", message))

    def _update_ledger_gauges(self) -> None:
        m, s = self.metrics, self.state
        m.epoch.set(s.epoch)
        for node_type, eligible in zip(NODE_TYPES, s.epoch_record(s.epoch).eligible, strict=True):
            m.eligible_nodes.labels(node_type).set(eligible)
        for (node_type, region), count in s.node_counts.items():
            m.nodes_activated.labels(node_type, region).set(count)
        for name in ("emitted", "burned", "fee_pool", "unclaimed"):
            m.supply.labels(name).set(getattr(s.supply, name))

    # ---- heartbeats: the network driver sends one per epoch -----------------------------
    def heartbeat_view(self, node_key: bytes) -> HeartbeatView:
        record = self.state.node(node_key)
        address = crypto.address_bytes(node_key)
        pending = self.mempool.pending_count(address)
        return HeartbeatView(
            activated=record is not None,
            last_epoch=record.last_heartbeat if record else None,
            nonce=self.state.account(address)[1] + pending,
            pending=pending,
            epoch=self.epoch_now(),
        )

    def heartbeat(self) -> Transaction | None:
        """This node's heartbeat, if one is due (see ``HeartbeatView.due``)."""
        view = self.heartbeat_view(self.key.public_key)
        epoch = view.due()
        if epoch is None:
            return None
        return make_heartbeat(self.key, self.network, view.nonce, epoch)

    # ---- queries -----------------------------------------------------------------------
    def tx_status(self, tx_id: bytes) -> dict | None:
        """What this node holds of a transaction in memory: pending in the mempool, with its
        content, or recently rejected. A committed one is in the chain database
        (``Storage.committed_tx``), and wins over a rejection remembered here (refused by
        this node, committed by another's block)."""
        pending = self.mempool.get(tx_id)
        if pending is not None:
            return {"id": tx_id.hex(), "status": "pending", **pending.to_json()}
        refused = self.rejected.get(tx_id)
        if refused is not None:
            return {
                "id": tx_id.hex(),
                "status": "rejected",
                "reason": refused.code,
                "message": refused.message,
            }
        return None

    async def node_info(self, node_key: bytes, reader: Executor) -> dict | None:
        """A registered node and its unclaimed eligible epochs (the open one has no reward
        yet); ``unclaimed`` is what a claim pays now, the sum of the closed ones. Its
        heartbeat epochs are read from the chain database on ``reader``, off the event loop;
        the rest is the state as it is after that read, with what committed meanwhile: a
        claim (epochs before it are left out) or its latest heartbeat (added)."""
        record = self.state.node(node_key)
        if record is None:
            return None
        on_chain = await asyncio.get_running_loop().run_in_executor(
            reader, self.storage.heartbeat_epochs, node_key, record.claimed_before
        )
        s = self.state
        record = s.node(node_key)
        latest = record.last_heartbeat
        if latest is not None and latest not in on_chain:
            on_chain.append(latest)
        epochs = []
        for epoch in (e for e in on_chain if e >= record.claimed_before):
            closed = epoch < s.epoch
            entry = s.epoch_record(epoch)
            epochs.append(
                {
                    "epoch": epoch,
                    "closed": closed,
                    "eligible": dict(zip(NODE_TYPES, entry.eligible, strict=True)),
                    "reward": str(entry.reward_of(record.node_type)) if closed else None,
                }
            )
        unclaimed = ledger.claimable(s, record)
        last_claim = {"height": record.last_claim_height, "amount": str(record.last_claim_amount)}
        return {
            "node_id": crypto.encode_node_id(node_key),
            "node_type": record.node_type,
            "region": record.region,
            "owner": crypto.encode_address(record.owner),
            "activated_at": record.activated_at,
            "last_heartbeat_epoch": record.last_heartbeat,
            "unclaimed": str(unclaimed),
            "unclaimed_qnc": format_qnc(unclaimed),
            "epochs": epochs,
            "last_claim": last_claim if record.last_claim_height else None,
        }

    def epoch_info(self) -> dict:
        """The epoch the next block will be in, and the rewards of the last closed one."""
        s, p = self.state, self.params
        epoch = self.epoch_now()
        start = self.rules.epoch_start_ms(epoch)
        last = s.last_closed_epoch()
        closed = None
        if last is not None:
            entry = s.epoch_record(last)
            closed = {
                "epoch": last,
                "eligible": dict(zip(NODE_TYPES, entry.eligible, strict=True)),
                "reward": {t: str(r) for t, r in zip(NODE_TYPES, entry.reward, strict=True)},
            }
        eligible = s.epoch_record(epoch).eligible
        return {
            "epoch": epoch,
            "chain_epoch": s.epoch,
            "start_ms": start,
            "end_ms": start + p.epoch_ms,
            "time_left_ms": max(0, start + p.epoch_ms - int(time.time() * 1000)),
            "eligible": dict(zip(NODE_TYPES, eligible, strict=True)),
            "emission": str(p.epoch_emission),
            "carried_emission": str(s.clock.carried_emission),
            "fee_pool": str(s.supply.fee_pool),
            "super_fee_percent": p.super_fee_percent,
            "activation_fees": {t: str(p.activation_fee(t)) for t in NODE_TYPES},
            "last_closed": closed,
        }

    def node_stats(
        self, node_type: str | None = None, region: str | None = None, owner: bytes | None = None
    ) -> dict:
        """Activated nodes by type and region, among those matching the filters given; with
        ``owner``, also their ids."""
        s = self.state
        if owner is None:
            counts = s.node_counts
        else:
            owned = [(k, s.nodes[k]) for k in s.owned.get(owner, [])]
            counts = Counter((r.node_type, r.region) for _, r in owned)
        matching = {
            (t, r): n
            for (t, r), n in counts.items()
            if node_type in (None, t) and region in (None, r)
        }
        by_type, by_region = Counter(), Counter()
        for (t, r), n in matching.items():
            by_type[t] += n
            by_region[r] += n
        stats = {
            "total": sum(matching.values()),
            "by_type": {t: by_type[t] for t in NODE_TYPES},
            "by_region": {r: by_region[r] for r in REGIONS},
        }
        if owner is not None:
            stats["node_ids"] = [
                crypto.encode_node_id(k) for k, r in owned if (r.node_type, r.region) in matching
            ]
        return stats

    def status(self) -> dict:
        s = self.state
        head = (s.height, s.block_hash, s.block_time_ms, s.digest)
        return status_document(self, head, len(self.mempool), self.network_status())


def status_document(node, head: tuple[int, bytes, int, bytes], mempool: int, network: dict):
    """What ``/api/v1/status`` says of a node with state or a light one: identity, the chain's
    minimum fee, the head (height, hash, time, state digest), how the region was chosen, and
    the network's view."""
    height, block_hash, block_time_ms, digest = head
    rtts = node.region_rtt_ms
    return {
        "node_id": node.key.node_id,
        "node_type": node.config.node_type,
        "region": node.region,
        "region_rtt_ms": None
        if rtts is None
        else {r: round(ms, 2) if math.isfinite(ms) else None for r, ms in sorted(rtts.items())},
        "version": __version__,
        "chain_id": node.chain_id,
        "genesis_hash": node.genesis.hash.hex(),
        "min_fee": str(node.genesis.params.min_fee),
        "height": height,
        "block_hash": block_hash.hex(),
        "block_time_ms": block_time_ms,
        "state_digest": digest.hex(),
        "mempool_size": mempool,
        "uptime_s": round(time.time() - node.started_at, 3),
        **network,
    }


def _bad_signature_message(tx: Transaction, network: crypto.Network) -> str:
    """Signatures are bound to the genesis hash, which a transaction does not carry: one
    signed for another network of the same chain id (a testnet before its reset) fails
    here, and the message says so."""
    if tx.kind == KIND_ACTIVATE:
        what = "the owner's signature or the node key's proof does not verify"
    else:
        what = "signature does not verify for the transaction's public key"
    return (
        f"{what} on {network}: it may be signed for another network with this chain id, "
        "such as this chain before a reset"
    )


def _displaced(gone: Transaction, by: Transaction) -> Rejected:
    """Why ``gone`` left the mempool when ``by`` came in: replaced or evicted."""
    if gone.sender == by.sender and gone.nonce == by.nonce:
        return Rejected("duplicate", f"replaced by {by.id.hex()}, which pays a higher fee")
    return Rejected("mempool_full", "evicted by a higher-fee transaction")


def _verify_chunk(network: crypto.Network, txs: list[Transaction]) -> list[bool]:
    return [t.verify_signature(network) for t in txs]


class InvalidBlock(ValueError):
    """A block or certificate from elsewhere that breaks a rule; it is refused, not applied."""


def check_certificate(
    block: Block, cert: CommitCertificate, network: crypto.Network, powers: dict[bytes, int]
) -> None:
    if cert.block_hash != block.hash or cert.height != block.header.height:
        raise InvalidBlock(f"block {block.header.height}: certificate is for another block")
    try:
        cert.verify(network, powers)
    except BlockError as exc:
        raise InvalidBlock(f"block {block.header.height}: {exc}") from None


def check_block(
    state: ledger.State,
    block: Block,
    rules: ledger.Rules,
    verified: set[bytes] | frozenset = frozenset(),
) -> ledger.Diff:
    """Every rule a block must pass on top of ``state``; returns its diff, changes nothing.

    Signatures of transactions whose ids are in ``verified`` were checked before (once per
    node); the others are checked here.
    """
    check_header(state, block, rules)
    if not all(t.verify_signature(rules.network) for t in block.txs if t.id not in verified):
        raise InvalidBlock(f"block {block.header.height} holds a badly signed transaction")
    return check_contents(state, block, rules)


def check_header(state: ledger.State, block: Block, rules: ledger.Rules) -> None:
    """The rules a block must pass before any of its transactions' signatures is verified:
    chain, parent, time, the genesis limits (``ledger.BlockLimits``, which the builder
    fills up to), the proposer's signature and the transactions' root."""
    h = block.header
    if h.chain_id != rules.chain_id:
        raise InvalidBlock(f"block {h.height} is for chain {h.chain_id!r}")
    if h.height != state.height + 1 or h.parent != state.block_hash:
        raise InvalidBlock(f"block {h.height} does not extend block {state.height}")
    if h.time_ms <= state.block_time_ms:
        raise InvalidBlock(f"block {h.height} is not later than its parent")
    limits = rules.block_limits
    body_bytes = sum(map(framed_size, block.txs))
    if not limits.fits(len(block.txs), body_bytes):
        raise InvalidBlock(
            f"block {h.height} holds {len(block.txs)} transactions of {body_bytes} bytes, "
            f"beyond the limits of {limits.max_txs} transactions and {limits.max_bytes} bytes"
        )
    try:
        block.verify_shape(rules.network)
    except BlockError as exc:
        raise InvalidBlock(str(exc)) from None


def check_contents(state: ledger.State, block: Block, rules: ledger.Rules) -> ledger.Diff:
    """The ledger's rules for a block whose header and signatures passed; returns its diff."""
    h = block.header
    diff, _included, refused = ledger.apply_block(state, list(block.txs), rules, h.time_ms)
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
    state = ledger.genesis_state(genesis)
    rules = ledger.Rules.from_genesis(genesis)
    powers = {v.public_key: v.power for v in genesis.validators}
    for block, cert in storage.iter_blocks():
        try:
            check_certificate(block, cert, rules.network, powers)
            diff = check_block(state, block, rules)
        except InvalidBlock as exc:
            raise StateDivergence(f"stored chain does not replay: {exc}") from None
        state.merge(diff, block.header.height, block.hash, block.header.time_ms)
    return state
