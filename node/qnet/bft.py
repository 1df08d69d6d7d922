"""The network driver of a validator: Tendermint core + peer network + block sync.

The core (``tendermint.Core``) decides; this driver does its I/O. Every input to the core
(a peer's message, a timeout, a built or validated block, a synced block) is handled by one
task, in order, so the core, the committed state and the signing state never race. Slow
work (building a block, verifying a proposal's signatures) runs in tasks of its own and
comes back as an input.

A node whose key is not in the validator set (a full node, or a super node acting as a
relay) runs the same driver without a core: it follows the chain by the committed blocks its
peers push and by sync, and serves the light nodes attached to it.

Gossip follows the hierarchy (DESIGN §5, ``topology.py``): consensus messages stay among
validators; committed blocks flow down to followers that are behind (headers only to light
nodes); transactions flow up, towards the validators.

Peer message kinds (``p2p`` reserves kinds below 16):
    16 CONSENSUS   a proposal (carrying the encoded block) or a vote; only between validators
    17 TXS         a batch of at most TX_BATCH signed transactions (the batch endpoint's framing)
    18 STATUS      height:u64 certificate: the commit certificate of that height (none at 0),
                   sent on connect, after every commit and periodically
    19 GET_BLOCKS  first:u64 last:u64
    20 BLOCKS      (block_len:u32 block cert_len:u32 certificate)*: the answer to GET_BLOCKS,
                   or one committed block pushed to a follower
    21 PING        token:u64, answered by
    22 PONG        the same token: the round-trip time shown by ``network peers``
    23 HEADERS     (header_len:u32 header cert_len:u32 certificate)*, for light nodes
    24 GET_HEADERS first:u64 last:u64
    25 GET_NODE    public_key(32): a light node asks what it needs for its heartbeat
    26 NODE        public_key(32) ``HeartbeatView.encode()``

Registration is open, so every peer is a stranger until checked (DESIGN §5). What a peer
sends is checked before it is stored, logged, relayed or counted:
- Consensus messages are taken only from validator links (the peer's handshake key is in
  the genesis validator set): followers do not vote, and validators form a mesh, so no
  honest node ever needs a non-validator to carry a consensus message; a non-validator link
  that sends one is banned. A proposal whose block exceeds the genesis limits (transactions,
  and the bytes those can take) is refused and its link banned. Then the core checks sender
  membership, the height and round window and the signature; only a message it answers with
  ``Accepted`` is kept, written to consensus.wal, relayed, re-sent and counted in metrics,
  and what it later reports ``Forgotten`` is dropped again (consensus.wal is rewritten once
  it holds more forgotten messages than live ones). A refusal that an honest validator link
  never causes (``LINK_FAULTS``: it relays and re-sends only what its own core accepted)
  bans the link.
- What peers send waits for the driver in ``DriverInputs``, bounded per peer and in all.
- STATUS heights above ours count only with a commit certificate that verifies, so a peer
  cannot draw sync towards heights that do not exist; blocks it served raise its height
  only once their certificates verified.
- Sync asks one peer at a time, rotating among the peers that are ahead, with a deadline:
  a peer that lets it pass is demoted for a while and banned after ``SYNC_STRIKES``; BLOCKS
  that answer no request are taken only as the push of the next block to a follower.
- A TXS frame holds at most TX_BATCH transactions, and a peer that relays a transaction
  whose signature does not verify is banned (an honest relay passes on only what its own
  admission verified). Refusals cost the node their cheap checks, yet cost the sender
  nothing (no fee is paid, no signature checked): each link but a validator's has a budget
  of ``PEER_REFUSALS_PER_S`` refused transactions a second (``PEER_REFUSAL_BURST`` at
  once). Its TXS frames are admitted in steps of that many, each taking as many tokens as
  it holds transactions and given back those admission took; what finds too few is
  dropped unread, and counted. An honest relay passes on only what its own admission took,
  so it spends its budget only where states differ; a flood of refusals costs at most the
  budget, and the event loop serves consensus between steps.
A disk error does not stop the driver: a signing state that cannot be saved withholds the
messages it covers (never a vote that could be signed differently after a crash), and a
consensus.wal that refuses writes costs only liveness after a crash, as a torn tail does.
"""

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from . import crypto, tendermint
from .block import Block, BlockError, CommitCertificate, Header
from .config import NodeConfig
from .journal import JournalError
from .ledger import BlockLimits
from .node import InvalidBlock, Node
from .p2p import PROTOCOL_BAN_S, PeerInfo, PeerNetwork, TokenBucket
from .topology import PeerPolicy
from .tx import MAX_TX_BYTES, DecodeError, Transaction, encode_batch, frame_batch, split_batch

log = logging.getLogger("qnet.bft")

KIND_CONSENSUS = 16
KIND_TXS = 17
KIND_STATUS = 18
KIND_GET_BLOCKS = 19
KIND_BLOCKS = 20
KIND_PING = 21
KIND_PONG = 22
KIND_HEADERS = 23
KIND_GET_HEADERS = 24
KIND_GET_NODE = 25
KIND_NODE = 26
KINDS = (
    KIND_CONSENSUS,
    KIND_TXS,
    KIND_STATUS,
    KIND_GET_BLOCKS,
    KIND_BLOCKS,
    KIND_PING,
    KIND_PONG,
    KIND_HEADERS,
    KIND_GET_HEADERS,
    KIND_GET_NODE,
    KIND_NODE,
)

_HEIGHT = struct.Struct(">Q")
_RANGE = struct.Struct(">QQ")
_LEN = struct.Struct(">I")
SYNC_BATCH = 64  # blocks per GET_BLOCKS
SYNC_BYTES = 8 * 2**20  # what one BLOCKS answer may carry
SYNC_TIMEOUT_S = 5.0  # a GET_BLOCKS not answered by then counts against the peer
SYNC_STRIKES = 3  # unanswered requests in a row before the peer is banned
SYNC_BAN_S = 600.0
SYNC_GRACE_S = 1.5
STATUS_EVERY_S = 2.0
STATUS_CERTS_KEPT = 64  # certificates of STATUS claims already verified, by digest
TX_FLUSH_S = 0.01
TX_BATCH = 5_000  # transactions per TXS frame, sent and accepted
TX_SPLIT_INLINE_BYTES = 64 * 1024  # bigger TXS frames are cut into transactions off the loop
PEER_REFUSALS_PER_S = 200.0  # refused transactions a link other than a validator's may cost
PEER_REFUSAL_BURST = 500  # and at once; its TXS frames are admitted in steps of this many
MAX_FUTURE_MS = 10_000  # a proposed block may not be dated further ahead than this
WAL_COMPACT_MIN = 1_000  # forgotten messages in consensus.wal before it may be rewritten
PEER_INPUTS = 1_000  # consensus messages and BLOCKS of one peer waiting for the driver
PEER_INPUT_BYTES = 32 * 2**20  # and their bytes (one maximal proposal fits)
INPUT_BYTES = 128 * 2**20  # the bytes of all peers' waiting inputs together
# Refusals of the core that an honest validator link never causes: it relays and re-sends
# only messages its own core accepted, under the same genesis.
LINK_FAULTS = frozenset(
    {"wrong_chain", "not_validator", "not_proposer", "bad_signature", "malformed_value"}
)
_MAX_FRAMED_TX = len(frame_batch([bytes(MAX_TX_BYTES)]))
BAD_SIGNATURE = "bad_signature"  # the refusal code of ``Node.submit`` for it


def value_id(value: bytes) -> bytes:
    """The id of an encoded block is its header hash (see ``Block.encode``)."""
    try:
        return Block.decode_header(value).hash
    except BlockError:
        return crypto.digest(value)  # not a block: an id that no valid block can have


def check_block_size(value: bytes, limits: BlockLimits) -> Header:
    """The header of an encoded block that keeps to the genesis limits (``BlockLimits``: at
    most ``max_block_txs`` transactions and ``max_block_bytes`` of them) and holds no more
    bytes than its transactions can take. Cheap (the header only), so it runs before
    anything stores, relays or decodes the block; raises BlockError."""
    header = Block.decode_header(value)
    body = len(value) - len(Block.encode_parts(header.encode(), bytes(64), b""))
    if not limits.fits(header.tx_count, body):
        raise BlockError(
            f"block {header.height} holds {header.tx_count} transactions of {body} bytes, "
            f"beyond the genesis limits ({limits.max_txs} transactions, {limits.max_bytes} bytes)"
        )
    if body > header.tx_count * _MAX_FRAMED_TX:
        raise BlockError(
            f"block {header.height} has {body} bytes of transactions, more than its "
            f"{header.tx_count} transactions can take"
        )
    return header


Handler = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class SyncRequest:
    """A GET_BLOCKS sent: the heights asked for and when the answer is due."""

    first: int
    last: int
    deadline: float  # time.monotonic()
    expired: bool = False


class DriverInputs:
    """The driver's inputs, handled one at a time in order.

    Its own inputs (timeouts, built and checked values) always get in: the core makes a
    handful per step. What peers send (consensus messages, blocks) is bounded per peer, in
    messages and bytes, and in bytes for all peers together: a peer over its budget has its
    messages dropped (consensus messages are re-sent when a round stalls, blocks are asked
    for again), so a flooding link costs no more memory than its budget and cannot crowd
    out the others. Each drop is counted; the first of a burst is logged.
    """

    def __init__(self, metrics, per_peer: int, per_peer_bytes: int, total_bytes: int):
        self.metrics = metrics
        self.per_peer = per_peer
        self.per_peer_bytes = per_peer_bytes
        self.total_bytes = total_bytes
        self._queue: asyncio.Queue[tuple[Handler, str | None, int]] = asyncio.Queue()
        self._items: Counter[str] = Counter()  # peer -> its inputs waiting
        self._bytes: Counter[str] = Counter()
        self._total = 0
        self._dropping: set[str] = set()  # peers whose current burst of drops was logged

    def put(self, handler: Handler) -> None:
        self._queue.put_nowait((handler, None, 0))

    def offer(self, peer_id: str, size: int, handler: Handler) -> bool:
        if (
            self._items[peer_id] >= self.per_peer
            or self._bytes[peer_id] + size > self.per_peer_bytes
            or self._total + size > self.total_bytes
        ):
            self.metrics.consensus_dropped.labels("queue_full").inc()
            if peer_id not in self._dropping:
                self._dropping.add(peer_id)
                log.warning(
                    "dropping messages from %s: %d of its inputs (%d bytes) wait, %d bytes "
                    "from all peers",
                    peer_id,
                    self._items[peer_id],
                    self._bytes[peer_id],
                    self._total,
                )
            return False
        self._items[peer_id] += 1
        self._bytes[peer_id] += size
        self._total += size
        self._queue.put_nowait((handler, peer_id, size))
        return True

    async def get(self) -> Handler:
        handler, peer_id, size = await self._queue.get()
        if peer_id is not None:
            self._items[peer_id] -= 1
            self._bytes[peer_id] -= size
            self._total -= size
            if not self._items[peer_id]:
                del self._items[peer_id], self._bytes[peer_id]
                self._dropping.discard(peer_id)
        return handler


class ConsensusLog:
    """Consensus messages of the height in progress, so a restarted validator can replay
    them (the core needs the polka behind its lock to make progress after a crash).
    Losing the tail in a crash costs only liveness, so appends are not fsynced."""

    def __init__(self, path: Path):
        self.path = path
        self._file = path.open("ab")

    def read(self) -> list[bytes]:
        self._file.flush()
        data = self.path.read_bytes()
        out, pos = [], 0
        while pos + _LEN.size <= len(data):
            (n,) = _LEN.unpack_from(data, pos)
            if pos + _LEN.size + n > len(data):
                break  # a torn last write after a crash: ignore it
            out.append(data[pos + _LEN.size : pos + _LEN.size + n])
            pos += _LEN.size + n
        return out

    def append(self, message: bytes) -> None:
        self._file.write(_LEN.pack(len(message)) + message)

    def reset(self) -> None:
        self._file.truncate(0)

    def close(self) -> None:
        self._file.close()


class SigningStateFile:
    """The core's signing state, durable before any message it covers leaves the process.

    Two fixed slots written alternately, each with a sequence number and a checksum, so a
    save is one write and one fdatasync, and a write torn by a crash leaves the other slot.
    """

    SLOT = 128
    _HEAD = struct.Struct(">QH")

    def __init__(self, path: Path):
        new = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if new:
            os.ftruncate(self._fd, 2 * self.SLOT)
            os.fsync(self._fd)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        self._seq, self.loaded = self._read()

    def _read(self) -> tuple[int, tendermint.SigningState | None]:
        best: tuple[int, tendermint.SigningState | None] = (0, None)
        for slot in range(2):
            raw = os.pread(self._fd, self.SLOT, slot * self.SLOT)
            if len(raw) < self.SLOT or crypto.digest(raw[:-32]) != raw[-32:]:
                continue
            seq, n = self._HEAD.unpack_from(raw)
            if seq > best[0]:
                body = raw[self._HEAD.size : self._HEAD.size + n]
                best = (seq, tendermint.SigningState.decode(body))
        return best

    def save(self, state: tendermint.SigningState) -> None:
        self._seq += 1
        body = state.encode()
        raw = (self._HEAD.pack(self._seq, len(body)) + body).ljust(self.SLOT - 32, b"\0")
        os.pwrite(self._fd, raw + crypto.digest(raw), (self._seq % 2) * self.SLOT)
        os.fdatasync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def encode_blocks(items: list[tuple[bytes, bytes]]) -> bytes:
    """BLOCKS or HEADERS: (block or header, certificate) pairs, each length-prefixed."""
    return b"".join(_LEN.pack(len(b)) + b + _LEN.pack(len(c)) + c for b, c in items)


def _pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """Cut BLOCKS or HEADERS into its pairs; an answer never holds more than SYNC_BATCH."""
    out, pos = [], 0
    while pos < len(data):
        if len(out) == SYNC_BATCH:
            raise BlockError(f"more than {SYNC_BATCH} blocks in one message")
        parts = []
        for _ in range(2):
            if pos + _LEN.size > len(data):
                raise BlockError("blocks message truncated")
            (n,) = _LEN.unpack_from(data, pos)
            pos += _LEN.size
            if pos + n > len(data):
                raise BlockError("blocks message truncated")
            parts.append(data[pos : pos + n])
            pos += n
        out.append((parts[0], parts[1]))
    return out


def decode_blocks(data: bytes) -> list[tuple[Block, CommitCertificate]]:
    return _decode_pairs(_pairs(data))


def _decode_pairs(pairs: list[tuple[bytes, bytes]]) -> list[tuple[Block, CommitCertificate]]:
    return [(Block.decode(b), CommitCertificate.decode(c)) for b, c in pairs]


def decode_headers(data: bytes) -> list[tuple[Header, CommitCertificate]]:
    return [(Header.decode(h), CommitCertificate.decode(c)) for h, c in _pairs(data)]


def policy_for(node_type: str, region: str, me: bytes, validators) -> PeerPolicy:
    return PeerPolicy(me, node_type, region, frozenset(validators))


def encode_status(height: int, certificate: bytes) -> bytes:
    """STATUS: a height and the commit certificate that proves it (none at height 0)."""
    return _HEIGHT.pack(height) + certificate


class PeerStats:
    """What a node knows of its connected peers beyond the handshake: their heights (from
    STATUS) and round-trip times (PING/PONG), for sync, ``network peers`` and metrics.

    A peer's height rises above ours only with a commit certificate that verifies: a claim
    at or below our own height cannot make us sync, so it is taken as said."""

    def __init__(self, net: PeerNetwork, metrics, chain_id: str, validators):
        self.net = net
        self.metrics = metrics
        self.chain_id = chain_id
        self.validators = validators
        self.heights: dict[str, int] = {}
        self._certified: OrderedDict[bytes, int] = OrderedDict()  # digest -> its height
        self._pings: dict[str, int] = {}  # node id -> token (perf_counter_ns) of the ping out
        self._rtt_ms: dict[str, float] = {}

    async def ping(self, node_id: str) -> None:
        token = time.perf_counter_ns()
        self._pings[node_id] = token
        await self.net.send(node_id, KIND_PING, _HEIGHT.pack(token))

    async def on_ping(self, peer: PeerInfo, payload: bytes) -> None:
        _HEIGHT.unpack(payload)
        await self.net.send(peer.node_id, KIND_PONG, payload)

    def on_pong(self, peer: PeerInfo, payload: bytes) -> None:
        (token,) = _HEIGHT.unpack(payload)
        if self._pings.pop(peer.node_id, None) == token:
            self._rtt_ms[peer.node_id] = (time.perf_counter_ns() - token) / 1e6

    def saw(self, peer: PeerInfo, height: int) -> None:
        """The peer served a block of ``height`` whose certificate verified."""
        self.heights[peer.node_id] = max(self.heights.get(peer.node_id, 0), height)

    def on_status(self, peer: PeerInfo, payload: bytes, ours: int) -> None:
        """Take a STATUS; raises BlockError or struct.error if it is malformed or claims a
        height above ours that its certificate does not prove."""
        (height,) = _HEIGHT.unpack_from(payload)
        certificate = payload[_HEIGHT.size :]
        if height > max(ours, self.heights.get(peer.node_id, 0)):
            key = crypto.digest(certificate)
            if self._certified.get(key) != height:
                cert = CommitCertificate.decode(certificate)
                if cert.height != height:
                    raise BlockError(
                        f"STATUS of height {height} carries the certificate of height {cert.height}"
                    )
                cert.verify(self.chain_id, self.validators)
                self._certified[key] = height
                while len(self._certified) > STATUS_CERTS_KEPT:
                    self._certified.popitem(last=False)
        self.heights[peer.node_id] = height

    def changed(self, peer: PeerInfo, connected: bool) -> None:
        """A peer came or went: recount qnet_peers{type,region}, forget what went."""
        counts = Counter((p.node_type, p.region) for p in self.net.peers())
        self.metrics.peers.clear()
        for (node_type, region), n in counts.items():
            self.metrics.peers.labels(node_type, region).set(n)
        if not connected:
            for known in (self.heights, self._pings, self._rtt_ms):
                known.pop(peer.node_id, None)

    def lag(self, ours: int) -> int:
        return max(0, max(self.heights.values(), default=ours) - ours)

    def rows(self) -> list[dict]:
        return [
            {
                "node_id": p.node_id,
                "node_type": p.node_type,
                "region": p.region,
                "address": p.listen,
                "direction": "outbound" if p.outbound else "inbound",
                "latency_ms": self._rtt_ms.get(p.node_id),
                "height": self.heights.get(p.node_id),
                "validator": p.public_key in self.validators,
            }
            for p in sorted(self.net.peers(), key=lambda p: p.node_id)
        ]


class BftConsensus:
    def __init__(self, node: Node, config: NodeConfig):
        self.node = node
        self.config = config
        self.metrics = node.metrics
        self.validators = tendermint.ValidatorSet(node.validator_powers)
        self.is_validator = node.key.public_key in self.validators
        self.net = PeerNetwork(
            key=node.key,
            chain_id=node.chain_id,
            genesis_hash=node.genesis.hash,
            node_type=config.node_type,
            region=node.region,
            listen_host=config.p2p_host,
            listen_port=config.p2p_port,
            seeds=config.peers,
            api_port=config.api_port,
            on_message=self._on_message,
            on_peer=self._on_peer,
            registry=node.metrics.registry,
            policy=policy_for(
                config.node_type, node.region, node.key.public_key, self.validators.powers
            ),
            is_activated=self._is_activated,
            app_kinds=KINDS,
        )
        self.signing_state = SigningStateFile(config.data_dir / "consensus.state")
        self.log = ConsensusLog(config.data_dir / "consensus.wal")
        self.core: tendermint.Core | None = None
        self._inputs = DriverInputs(self.metrics, PEER_INPUTS, PEER_INPUT_BYTES, INPUT_BYTES)
        # Zeroes from the start: every series exists before the first message, so none
        # appears later (what peers send never adds one).
        for reason in (*tendermint.REFUSALS, "queue_full"):
            self.metrics.consensus_dropped.labels(reason)
        for validator in self.validators.powers:
            for kind in tendermint.VoteKind:
                self.metrics.votes_received.labels(
                    crypto.encode_node_id(validator), kind.name.lower()
                )
        self._tasks: set[asyncio.Task] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        # Blocks of this height built or checked here, with their diffs, by block hash.
        self._checked: dict[bytes, tuple[Block, object]] = {}
        # Consensus messages (own and accepted by the core) of the height in progress and the
        # next, by digest: re-sent when a round stalls and to peers that connect, logged for
        # restarts. The core's limits bound them per validator, height and round.
        self._messages: dict[int, dict[bytes, bytes]] = {}
        self._wal_failing = False  # consensus.wal refused a write; logged once until it heals
        self._wal_dead = 0  # messages in consensus.wal that the core has since forgotten
        # Links this driver banned whose connection has not ended yet: what they still had
        # in flight is dropped unread.
        self._cut: set[str] = set()
        self.stats = PeerStats(self.net, self.metrics, node.chain_id, self.validators.powers)
        self._peer_heights = self.stats.heights
        self._head_certificate = b""  # of the committed head, for STATUS
        # Sync: requests by peer (one live at a time; expired ones wait for a late answer),
        # unanswered requests in a row, when each peer was last asked and demoted until.
        self._requests: dict[str, SyncRequest] = {}
        self._strikes: dict[str, int] = {}
        self._asked_at: dict[str, float] = {}
        self._demoted_until: dict[str, float] = {}
        self._behind_since: tuple[int, float] | None = None  # (our height, since when)
        self._relay: list[tuple[Transaction, str | None]] = []  # (tx, the peer it came from)
        # Refusals each connected link but a validator's may still cost (see the docstring);
        # links whose frames are being dropped, logged once a burst.
        self._refusal_budgets: dict[str, TokenBucket] = {}
        self._over_budget: set[str] = set()
        self._height = 0  # the height the core was last started at
        self._started_at = time.time()
        # A validator whose signing state is gone (data wiped, or restored from a snapshot)
        # may have signed votes it no longer knows of at the height in progress. If the
        # others can commit without it, it follows the chain until a block committed after
        # this start arrives, and only then votes, at heights it cannot have signed before.
        powers = self.validators.powers
        others = sum(p for k, p in powers.items() if k != node.key.public_key)
        self._holding = (
            self.is_validator
            and self.signing_state.loaded is None
            and node.state.height > 0
            and 3 * others > 2 * sum(powers.values())
        )

    # ---- lifecycle -----------------------------------------------------------------------
    async def run(self) -> None:
        node = self.node
        node.relay = self._queue_relay
        node.network_status = self._network_status
        node.network_peers = self.stats.rows
        if node.state.height:
            stored = await asyncio.to_thread(node.storage.encoded_header, node.state.height)
            self._head_certificate = stored[1] if stored else b""
        await self.net.start()
        self._spawn(self._status_loop())
        self._spawn(self._tx_flush_loop())
        if self.is_validator:
            self.core = self._make_core()
            if self._holding:
                log.warning(
                    "no signing state, chain at height %d: following the chain until a block "
                    "committed after this start, so as never to sign twice",
                    node.state.height,
                )
            else:
                self._enqueue(self._start_height)
        try:
            while True:
                handler = await self._inputs.get()
                await handler()
        finally:
            for timer in self._timers:
                timer.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            node.relay = None
            await self._hand_off()
            await self.net.stop()
            self.log.close()
            self.signing_state.close()

    def _make_core(self) -> tendermint.Core:
        config = self.config
        return tendermint.Core(
            chain_id=self.node.chain_id,
            validators=self.validators,
            me=self.node.key.public_key,
            sign=self.node.key.sign,
            verify=crypto.verify,
            value_id=value_id,
            timeouts=tendermint.Timeouts(
                propose_ms=config.timeout_propose_ms,
                propose_delta_ms=config.timeout_delta_ms,
                prevote_ms=config.timeout_vote_ms,
                prevote_delta_ms=config.timeout_delta_ms,
                precommit_ms=config.timeout_vote_ms,
                precommit_delta_ms=config.timeout_delta_ms,
            ),
            signing_state=self.signing_state.loaded,
        )

    def _network_status(self) -> dict:
        return {
            "peers": len(self.net.peers()),
            "sync_lag_blocks": self.stats.lag(self.node.state.height),
            "consensus_round": self.core.round if self.core is not None and self._height else 0,
        }

    async def _hand_off(self) -> None:
        """At a stop, hand every pending transaction up: one this node admitted may be
        nowhere else yet (its relay batch not sent, or sent to no one), and the node that
        starts again from this data dir has an empty mempool. Peers that have it already
        drop it as a duplicate; ``net.stop`` lets the frames leave before it closes."""
        txs = self.node.mempool.pending()
        peers = self._upstream()
        if not txs or not peers:
            return
        self._relay = [(t, None) for t in txs]  # the whole mempool holds what was queued
        await self._send_up()
        log.info("handed %d pending transactions to %d peers", len(txs), len(peers))

    def _queue_relay(self, txs: list[Transaction], source: str | None) -> None:
        self._relay.extend((t, source) for t in txs)

    def _validator_peers(self) -> list[PeerInfo]:
        return [p for p in self.net.peers() if p.public_key in self.validators]

    async def _to_validators(self, kind: int, data: bytes, exclude: str | None = None) -> None:
        """Consensus traffic stays among validators: followers do not vote."""
        await self.net.broadcast(
            kind, data, exclude, only=lambda peer: peer.public_key in self.validators
        )

    def _upstream(self) -> list[PeerInfo]:
        """Where transactions go: to validators if any is a peer (always, for a validator),
        otherwise to the super and full peers, which pass them on up."""
        validators = self._validator_peers()
        if validators or self.is_validator:
            return validators
        return [p for p in self.net.peers() if p.node_type != "light"]

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("consensus task failed", exc_info=task.exception())

    def _enqueue(self, handler: Handler) -> None:
        self._inputs.put(handler)

    def _status(self) -> bytes:
        return encode_status(self.node.state.height, self._head_certificate)

    # ---- the core's effects --------------------------------------------------------------
    async def _carry_out(
        self, effects: list, source: PeerInfo | None = None, data: bytes = b""
    ) -> None:
        """Carry out the core's effects in order. ``source`` and ``data`` are the peer and
        the wire bytes of the message given to on_message, if any (None: our own log)."""
        durable = True  # the last signing state is on disk: what it covers may leave
        for effect in effects:
            match effect:
                case tendermint.PersistSigningState(state=state):
                    # Off the event loop, but before the next effect (the signed message).
                    try:
                        await asyncio.to_thread(self.signing_state.save, state)
                        durable = True
                    except OSError as exc:
                        durable = False
                        log.error(
                            "cannot save the signing state (%s): what it covers at height %d "
                            "round %d is not sent",
                            exc,
                            state.height,
                            state.round,
                        )
                case tendermint.Broadcast(message=message):
                    if not durable:
                        # Never sign twice after a crash: a message whose signing state is
                        # not on disk never leaves (the core counts it as a lost message).
                        log.error(
                            "withholding our %s for height %d round %d",
                            type(message).__name__.lower(),
                            message.height,
                            message.round,
                        )
                        continue
                    encoded = message.encode()
                    self._remember(message.height, encoded)
                    await self._to_validators(KIND_CONSENSUS, encoded)
                    if isinstance(message, tendermint.Proposal):
                        self.metrics.proposals.labels("sent").inc()
                case tendermint.Accepted(message=message):
                    await self._accepted(message, data or message.encode(), source)
                case tendermint.Refused(message=message, reason=reason):
                    self._refused(message, reason, source)
                case tendermint.Forgotten(messages=messages):
                    self._forget(messages)
                case tendermint.ScheduleTimeout(timeout=timeout, delay_ms=delay_ms):
                    self._schedule(timeout, delay_ms)
                case tendermint.RequestValue(height=height, round=round_):
                    self._spawn(self._build_value(height, round_))
                case tendermint.ValidateValue():
                    self._spawn(self._validate_value(effect))
                case tendermint.Decide():
                    await self._decide(effect)
                case tendermint.Equivocation(first=first):
                    offender = crypto.encode_node_id(tendermint.sender(first))
                    log.warning(
                        "validator %s equivocated at height %d round %d",
                        offender,
                        first.height,
                        first.round,
                    )
                    self.metrics.equivocations.labels(offender).inc()

    async def _accepted(
        self, message: tendermint.Message, data: bytes, source: PeerInfo | None
    ) -> None:
        """The core kept a message: only now is it logged, relayed and counted."""
        new = self._remember(message.height, data)
        if source is None:
            return  # replayed from our own log
        if isinstance(message, tendermint.Proposal):
            self.metrics.proposals.labels("received").inc()
            return
        validator = crypto.encode_node_id(message.validator)
        self.metrics.votes_received.labels(validator, message.kind.name.lower()).inc()
        if new and message.height == self._height:
            # Relay votes: with an equivocating validator, or a validator some others cannot
            # reach, correct ones still need to see every vote (blocks are not relayed here,
            # only re-sent when a round stalls).
            await self._to_validators(KIND_CONSENSUS, data, exclude=source.node_id)

    def _refused(self, message: tendermint.Message, reason: str, source: PeerInfo | None) -> None:
        if source is None:
            return  # replayed from our own log: what the core already has
        self.metrics.consensus_dropped.labels(reason).inc()
        signer = crypto.encode_node_id(tendermint.sender(message))
        if reason in LINK_FAULTS:
            self._ban(
                source.node_id,
                f"sent a {type(message).__name__.lower()} of height {message.height} round "
                f"{message.round} signed by {signer} that the core refused: {reason}",
            )
        else:
            log.debug(
                "ignored a %s of height %d round %d by %s from %s: %s",
                type(message).__name__.lower(),
                message.height,
                message.round,
                signer,
                source.node_id,
                reason,
            )

    def _schedule(self, timeout: tendermint.Timeout, delay_ms: int) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)
            self._enqueue(lambda: self._on_timeout(timeout))

        handle = loop.call_later(delay_ms / 1000, fire)
        self._timers.add(handle)

    async def _on_timeout(self, timeout: tendermint.Timeout) -> None:
        core = self.core
        if timeout.height == core.height and timeout.round == core.round:
            # Nothing moved for a whole timeout: peers may have missed messages while
            # disconnected (delivery is at most once), so send this height's again.
            for data in list(self._messages.get(core.height, {}).values()):
                await self._to_validators(KIND_CONSENSUS, data)
        await self._carry_out(core.on_timeout(timeout))
        self._note_round()

    def _note_round(self) -> None:
        self.metrics.consensus_height.set(self.core.height)
        self.metrics.consensus_round.set(self.core.round)

    async def _start_height(self) -> None:
        """Start the height after the committed head, then replay its logged messages."""
        height = self.node.state.height + 1
        core = self.core
        if height <= self._height:
            return
        self._height = height
        self._checked.clear()
        logged = []
        try:
            for data in self.log.read():
                with contextlib.suppress(tendermint.MessageError):
                    logged.append((tendermint.decode_message(data), data))
        except OSError as exc:
            self._wal_error("read", exc)
        self._messages = {h: m for h, m in self._messages.items() if h >= height}
        self._rewrite_log()  # what the core kept of this height before it started
        await self._carry_out(core.start_height(height))
        for message, data in logged:
            if message.height >= height:  # the core checks them again, as from a peer
                await self._carry_out(core.on_message(message), data=data)
        self._note_round()

    def _remember(self, height: int, data: bytes) -> bool:
        """Keep and log a message of this height or the next; False if already known."""
        if not self._height <= height <= self._height + 1:
            return False
        known = self._messages.setdefault(height, {})
        key = crypto.digest(data)
        if key in known:
            return False
        known[key] = data
        self._log_append(data)
        return True

    def _forget(self, messages: tuple[tendermint.Message, ...]) -> None:
        """Drop what the core evicted; rewrite consensus.wal once it holds more dead
        messages than live ones, so a validator flooding far rounds cannot grow it."""
        for message in messages:
            known = self._messages.get(message.height, {})
            if known.pop(crypto.digest(message.encode()), None) is not None:
                self._wal_dead += 1
        live = sum(len(known) for known in self._messages.values())
        if self._wal_dead > max(WAL_COMPACT_MIN, live):
            self._rewrite_log()

    def _rewrite_log(self) -> None:
        self._wal_dead = 0
        try:
            self.log.reset()
        except OSError as exc:
            self._wal_error("reset", exc)
        for known in self._messages.values():
            for data in known.values():
                self._log_append(data)

    def _log_append(self, data: bytes) -> None:
        """A message the log could not take costs only liveness after a crash (as a torn
        tail does): the node goes on with it in memory."""
        try:
            self.log.append(data)
        except OSError as exc:
            self._wal_error("append to", exc)
            return
        if self._wal_failing:
            self._wal_failing = False
            log.info("consensus.wal takes writes again")

    def _wal_error(self, what: str, exc: OSError) -> None:
        if not self._wal_failing:
            self._wal_failing = True
            log.error("cannot %s consensus.wal (%s): going on without it", what, exc)

    async def _build_value(self, height: int, round_: int) -> None:
        """Propose as soon as there is work, but not faster than the block interval and not
        later than the empty-block interval (an idle chain still shows it is alive)."""
        node = self.node
        params = node.params
        last = max(node.state.block_time_ms / 1000, self._started_at)
        earliest = last + params.block_interval_ms / 1000
        latest = last + self.config.empty_block_interval_ms / 1000
        while (now := time.time()) < latest and not (len(node.mempool) and now >= earliest):
            # Before the interval: sleep until it ends. After it: wait for work or the
            # empty-block deadline, whichever comes first.
            if now < earliest:
                await asyncio.sleep(earliest - now)
                continue
            node.work.clear()
            if len(node.mempool):
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.work.wait(), latest - now)
        if node.state.height != height - 1:
            return  # the height moved on while we waited
        node.expire_mempool()
        block, diff = node.build_block(int(time.time() * 1000))
        self._checked[block.hash] = (block, diff)
        value = block.encode()
        self._enqueue(lambda: self._carry_out(self.core.on_value(height, round_, value)))

    async def _validate_value(self, effect: tendermint.ValidateValue) -> None:
        valid = False
        try:
            block = Block.decode(effect.value)
            if block.header.time_ms > time.time() * 1000 + MAX_FUTURE_MS:
                raise InvalidBlock(f"block {block.header.height} is dated in the future")
            self._checked[block.hash] = (block, await self.node.validate_block(block))
            valid = True
        except (BlockError, InvalidBlock) as exc:
            log.warning("invalid proposal at height %d: %s", effect.height, exc)
            self.metrics.proposals.labels("invalid").inc()
        height, vid = effect.height, effect.value_id
        self._enqueue(lambda: self._carry_out(self.core.on_validity(height, vid, valid)))

    async def _decide(self, decision: tendermint.Decide) -> None:
        if decision.height <= self.node.state.height:  # sync got there first
            await self._start_height()
            return
        checked = self._checked.get(decision.certificate.block_hash)
        if checked is None:  # decided without our own check finishing: check it now
            block = Block.decode(decision.value)
            checked = (block, await self.node.validate_block(block))
        await self._commit(checked[0], decision.certificate, checked[1])
        self.metrics.rounds_per_height.observe(decision.round + 1)
        await self._start_height()

    async def _push_committed(
        self, block: Block, cert: CommitCertificate, exclude: str | None = None
    ) -> None:
        """Hand a committed block to peers that follow without voting (its header only, to
        light nodes); otherwise they learn of it only from a STATUS and then ask, which
        costs a round trip per hop."""
        height = block.header.height
        followers = [
            p
            for p in self.net.peers()
            if p.public_key not in self.validators
            and p.node_id != exclude
            and self._peer_heights.get(p.node_id, 0) < height
        ]
        if not followers:
            return
        cert_bytes = cert.encode()
        blocks = headers = b""
        for peer in followers:
            if peer.node_type == "light":
                headers = headers or encode_blocks([(block.header.encode(), cert_bytes)])
                await self.net.send(peer.node_id, KIND_HEADERS, headers)
            else:
                blocks = blocks or encode_blocks([(block.encode(), cert_bytes)])
                await self.net.send(peer.node_id, KIND_BLOCKS, blocks)

    async def _commit(self, block: Block, cert: CommitCertificate, diff) -> None:
        await self.node.commit(block, cert, diff)
        self._head_certificate = cert.encode()
        await self._push_committed(block, cert)
        self.metrics.commit_latency.observe(max(0.0, time.time() - block.header.time_ms / 1000))
        await self.net.broadcast(KIND_STATUS, self._status())
        self._update_lag()

    # ---- peers ---------------------------------------------------------------------------
    async def _on_peer(self, peer: PeerInfo, connected: bool) -> None:
        self.stats.changed(peer, connected)
        if not connected:
            for known in (
                self._requests,
                self._strikes,
                self._asked_at,
                self._demoted_until,
                self._refusal_budgets,
            ):
                known.pop(peer.node_id, None)
            self._cut.discard(peer.node_id)
            self._over_budget.discard(peer.node_id)
            self._update_lag()
            return
        await self.stats.ping(peer.node_id)
        await self.net.send(peer.node_id, KIND_STATUS, self._status())
        if self.is_validator and peer.public_key in self.validators:
            for data in list(self._messages.get(self._height, {}).values()):
                await self.net.send(peer.node_id, KIND_CONSENSUS, data)  # what it missed

    def _is_activated(self, peer: PeerInfo) -> bool:
        """Whether the peer's key is activated on chain as the node type it claims (a paid
        identity: it may take a stranger's slot, see ``p2p``)."""
        record = self.node.state.node(peer.public_key)
        return record is not None and record.node_type == peer.node_type

    def _ban(self, node_id: str, reason: str, seconds: float = PROTOCOL_BAN_S) -> None:
        if any(p.node_id == node_id for p in self.net.peers()):
            self._cut.add(node_id)  # until its disconnection is reported
        self.net.ban(node_id, reason, seconds)

    async def _on_message(self, peer: PeerInfo, kind: int, payload: bytes) -> None:
        if peer.node_id in self._cut:
            return
        try:
            await self._dispatch(peer, kind, payload)
        except (BlockError, DecodeError, tendermint.MessageError, struct.error) as exc:
            self._ban(peer.node_id, f"malformed kind {kind} message: {exc}")

    async def _dispatch(self, peer: PeerInfo, kind: int, payload: bytes) -> None:
        if kind == KIND_CONSENSUS:
            self._on_consensus(peer, payload)
        elif kind == KIND_TXS:
            await self._on_txs(peer, payload)
        elif kind == KIND_STATUS:
            self.stats.on_status(peer, payload, self.node.state.height)
            self._update_lag()
            self._maybe_sync()
        elif kind == KIND_GET_BLOCKS:
            first, last = _RANGE.unpack(payload)
            await self._serve_blocks(peer, first, last)
        elif kind == KIND_PING:
            await self.stats.on_ping(peer, payload)
        elif kind == KIND_PONG:
            self.stats.on_pong(peer, payload)
        elif kind == KIND_BLOCKS:
            await self._on_blocks(peer, payload)
        elif kind == KIND_GET_HEADERS:
            first, last = _RANGE.unpack(payload)
            await self._serve_headers(peer, first, last)
        elif kind == KIND_GET_NODE:
            if len(payload) != 32:
                raise struct.error("GET_NODE carries a 32-byte public key")
            view = self.node.heartbeat_view(payload)
            await self.net.send(peer.node_id, KIND_NODE, payload + view.encode())
        elif kind in (KIND_HEADERS, KIND_NODE):
            pass  # answers meant for light nodes
        else:
            self._ban(peer.node_id, f"unknown message kind {kind}")

    def _on_consensus(self, peer: PeerInfo, payload: bytes) -> None:
        """Cheap checks first (the link, the encoding, a proposal's size); the core's checks
        run in the driver's turn, and only what it accepts is kept (see ``_accepted``)."""
        if peer.public_key not in self.validators:
            self._ban(peer.node_id, "sent a consensus message but is not a validator")
            return
        if self.core is None or self._holding:
            return  # not voting (yet): the validators' messages are of no use here
        message = tendermint.decode_message(payload)
        if isinstance(message, tendermint.Proposal):
            check_block_size(message.value, self.node.rules.block_limits)
        self._inputs.offer(
            peer.node_id,
            len(payload),
            lambda: self._consensus_message(peer, message, payload),
        )

    async def _consensus_message(
        self, peer: PeerInfo, message: tendermint.Message, data: bytes
    ) -> None:
        await self._carry_out(self.core.on_message(message), source=peer, data=data)
        self._note_round()

    async def _on_txs(self, peer: PeerInfo, payload: bytes) -> None:
        if len(payload) > TX_BATCH * _MAX_FRAMED_TX:
            self._ban(peer.node_id, f"sent a {len(payload)}-byte TXS frame: no batch is as big")
            return
        if len(payload) > TX_SPLIT_INLINE_BYTES:
            raws = await asyncio.to_thread(split_batch, payload)
        else:
            raws = split_batch(payload)
        if len(raws) > TX_BATCH:
            self._ban(peer.node_id, f"sent {len(raws)} transactions in one frame, over {TX_BATCH}")
            return
        # Validators are a mesh: what one relays, the others already got from it.
        among_validators = self.is_validator and peer.public_key in self.validators
        if peer.public_key in self.validators:
            outcome = await self.node.submit_raw(
                raws, relay=not among_validators, source=peer.node_id
            )
        else:
            outcome = await self._submit_within_budget(peer, raws)
        bad = sum(1 for refused in outcome if refused is not None and refused.code == BAD_SIGNATURE)
        if bad:
            self._ban(
                peer.node_id,
                f"relayed {bad} of {len(raws)} transactions with a signature that does not verify",
            )

    async def _submit_within_budget(self, peer: PeerInfo, raws: list[bytes]) -> list:
        """Admit a TXS frame of a link other than a validator's in steps of
        ``PEER_REFUSAL_BURST`` transactions, each taking its size from the link's budget and
        giving back what admission took; what finds the budget spent is dropped unread.
        The event loop serves the others between steps."""
        budget = self._refusal_budgets.get(peer.node_id)
        if budget is None:
            budget = self._refusal_budgets[peer.node_id] = TokenBucket(
                PEER_REFUSALS_PER_S, PEER_REFUSAL_BURST, time.monotonic()
            )
        outcome: list = []
        for at in range(0, len(raws), PEER_REFUSAL_BURST):
            step = raws[at : at + PEER_REFUSAL_BURST]
            if not budget.take(time.monotonic(), len(step)):
                self.metrics.peer_txs_dropped.inc(len(raws) - at)
                if peer.node_id not in self._over_budget:
                    self._over_budget.add(peer.node_id)
                    log.warning(
                        "dropping transactions from %s unread: it spent its budget of %g "
                        "refused transactions a second",
                        peer.node_id,
                        PEER_REFUSALS_PER_S,
                    )
                break
            self._over_budget.discard(peer.node_id)
            done = await self.node.submit_raw(step, source=peer.node_id)
            budget.give_back(sum(1 for refused in done if refused is None))
            outcome += done
            await asyncio.sleep(0)  # a step refused whole never waited: let the others run
        return outcome

    # ---- sync ----------------------------------------------------------------------------
    def _update_lag(self) -> None:
        self.metrics.sync_lag.set(self._network_status()["sync_lag_blocks"])

    def _maybe_sync(self) -> None:
        """Ask a peer that is ahead for the next blocks, one request at a time.

        Heights come from verified certificates only (``PeerStats``), the peers ahead take
        turns (the one asked longest ago first), and a request not answered within
        SYNC_TIMEOUT_S demotes its peer, for longer each time, until it is banned. A peer
        one block ahead is normal while a height's precommits are still arriving; consensus
        catches up by itself then, so sync waits unless the gap is two blocks or lasts
        longer than SYNC_GRACE_S.
        """
        now = time.monotonic()
        self._expire_requests(now)
        if any(not request.expired for request in self._requests.values()):
            return
        ours = self.node.state.height
        ahead = {
            node_id: height
            for node_id, height in self._peer_heights.items()
            if height > ours and self._demoted_until.get(node_id, 0.0) <= now
        }
        if not ahead:
            self._behind_since = None
            return
        if max(ahead.values()) == ours + 1:
            if self._behind_since is None or self._behind_since[0] != ours:
                self._behind_since = (ours, now)
            if now - self._behind_since[1] < SYNC_GRACE_S:
                return
        peer = min(ahead, key=lambda node_id: (self._asked_at.get(node_id, 0.0), node_id))
        last = min(ahead[peer], ours + SYNC_BATCH)
        self._requests[peer] = SyncRequest(ours + 1, last, now + SYNC_TIMEOUT_S)
        self._asked_at[peer] = now
        self._spawn(self.net.send(peer, KIND_GET_BLOCKS, _RANGE.pack(ours + 1, last)))

    def _expire_requests(self, now: float) -> None:
        for node_id, request in list(self._requests.items()):
            if not request.expired and now >= request.deadline:
                request.expired = True  # a late answer is still welcome, not unsolicited
                self._strike(
                    node_id,
                    f"did not answer for blocks {request.first}-{request.last} "
                    f"within {SYNC_TIMEOUT_S:g} s",
                )

    def _strike(self, node_id: str, what: str) -> None:
        """Demote a peer that failed sync, for longer each time; ban it at SYNC_STRIKES."""
        strikes = self._strikes[node_id] = self._strikes.get(node_id, 0) + 1
        if strikes >= SYNC_STRIKES:
            self._ban(node_id, f"{what}, {strikes} times in a row", SYNC_BAN_S)
            return
        self._demoted_until[node_id] = time.monotonic() + strikes * SYNC_TIMEOUT_S
        log.warning(
            "%s %s: asking other peers for blocks for %g s",
            node_id,
            what,
            strikes * SYNC_TIMEOUT_S,
        )

    async def _on_blocks(self, peer: PeerInfo, payload: bytes) -> None:
        """BLOCKS answer our request, or push the next committed block to a follower.
        Framing, heights and sizes are checked on the headers; only then are the blocks
        decoded, off the event loop."""
        pairs = _pairs(payload)
        heights = [
            check_block_size(block, self.node.rules.block_limits).height for block, _ in pairs
        ]
        request = self._requests.get(peer.node_id)
        if request is not None and heights[:1] == [request.first]:
            del self._requests[peer.node_id]
            if heights != list(range(request.first, request.first + len(heights))) or (
                heights[-1] > request.last
            ):
                self._ban(
                    peer.node_id,
                    f"answered a request for blocks {request.first}-{request.last} with {heights}",
                )
                return
        elif len(heights) == 1 and not self.is_validator:
            if heights[0] != self.node.state.height + 1:
                return  # pushed by several upstream peers, or we are further behind
        else:
            # Validators get no pushes, and a push is one block. A late answer to a
            # request since renewed comes here too, hence no ban at once.
            self._strike(peer.node_id, f"sent blocks {heights} nobody asked for")
            return
        blocks = await asyncio.to_thread(_decode_pairs, pairs)
        self._inputs.offer(peer.node_id, len(payload), lambda: self._apply_synced(peer, blocks))

    async def _serve_blocks(self, peer: PeerInfo, first: int, last: int) -> None:
        last = min(last, first + SYNC_BATCH - 1, self.node.state.height)
        items, size = [], 0
        for height in range(first, last + 1):
            item = await asyncio.to_thread(self.node.storage.encoded_block, height)
            if item is None:
                break
            size += len(item[0]) + len(item[1])
            if items and size > SYNC_BYTES:
                break
            items.append(item)
        if items:
            await self.net.send(peer.node_id, KIND_BLOCKS, encode_blocks(items))

    async def _serve_headers(self, peer: PeerInfo, first: int, last: int) -> None:
        last = min(last, first + SYNC_BATCH - 1, self.node.state.height)
        items = []
        for height in range(first, last + 1):
            item = await asyncio.to_thread(self.node.storage.encoded_header, height)
            if item is None:
                break
            items.append(item)
        if items:
            await self.net.send(peer.node_id, KIND_HEADERS, encode_blocks(items))

    async def _apply_synced(self, peer: PeerInfo, blocks: list) -> None:
        applied = 0
        for block, cert in blocks:
            if block.header.height != self.node.state.height + 1:
                continue  # consensus got there first
            try:
                await self.node.apply_certified(block, cert)
            except InvalidBlock as exc:
                self._ban(peer.node_id, f"served an invalid block: {exc}")
                break
            applied += 1
            self._head_certificate = cert.encode()
            self.stats.saw(peer, block.header.height)
            await self._push_committed(block, cert, exclude=peer.node_id)
        if applied:
            self._strikes.pop(peer.node_id, None)
            log.log(
                logging.INFO if applied > 1 else logging.DEBUG,
                "synced %d block(s) from %s, now at height %d",
                applied,
                peer.node_id,
                self.node.state.height,
            )
            await self.net.broadcast(KIND_STATUS, self._status())
            head = self.node.state
            if self._holding and head.block_time_ms > self._started_at * 1000:
                self._holding = False
                log.info("block %d was committed after this start: voting again", head.height)
            if self.core is not None and not self._holding:
                await self._start_height()
        self._update_lag()
        self._maybe_sync()

    # ---- background loops ----------------------------------------------------------------
    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)  # periodic: a lost STATUS heals by itself
            await self.net.broadcast(KIND_STATUS, self._status())
            self._maybe_sync()
            await self._send_heartbeat()
            for peer in self.net.peers():
                await self.stats.ping(peer.node_id)

    async def _send_heartbeat(self) -> None:
        """An activated node proves it is alive once per epoch (DESIGN §6)."""
        heartbeat = self.node.heartbeat()
        if heartbeat is None:
            return
        try:
            (refused,) = await self.node.submit([heartbeat])
        except JournalError as exc:  # a full disk, say: the next status round tries again
            log.error("heartbeat for epoch %d not journaled: %s", heartbeat.epoch, exc)
            return
        if refused is None:
            log.info("heartbeat for epoch %d submitted", heartbeat.epoch)
        else:
            log.warning("heartbeat for epoch %d refused: %s", heartbeat.epoch, refused.message)

    async def _tx_flush_loop(self) -> None:
        """Relay newly admitted transactions up the hierarchy in batches, never back to the
        peer they came from."""
        while True:
            await asyncio.sleep(TX_FLUSH_S)  # batching window for gossip
            await self._send_up()

    async def _send_up(self) -> None:
        """Send what waits in the relay queue to the upstream peers, in batches."""
        while self._relay:
            batch, self._relay[:TX_BATCH] = self._relay[:TX_BATCH], []
            sources = {source for _, source in batch}
            whole = b""
            for peer in self._upstream():
                if peer.node_id in sources:
                    txs = [t for t, source in batch if source != peer.node_id]
                    data = encode_batch(txs) if txs else b""
                else:
                    data = whole = whole or encode_batch([t for t, _ in batch])
                if data:
                    await self.net.send(peer.node_id, KIND_TXS, data)
