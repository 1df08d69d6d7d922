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
    16 CONSENSUS   a proposal (carrying the encoded block) or a vote
    17 TXS         a batch of signed transactions (the batch endpoint's framing)
    18 STATUS      height:u64, sent on connect, after every commit and periodically
    19 GET_BLOCKS  first:u64 last:u64
    20 BLOCKS      (block_len:u32 block cert_len:u32 certificate)*
    21 PING        token:u64, answered by
    22 PONG        the same token: the round-trip time shown by ``network peers``
    23 HEADERS     (header_len:u32 header cert_len:u32 certificate)*, for light nodes
    24 GET_HEADERS first:u64 last:u64
    25 GET_NODE    public_key(32): a light node asks what it needs for its heartbeat
    26 NODE        public_key(32) ``HeartbeatView.encode()``
"""

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from . import crypto, tendermint
from .block import Block, BlockError, CommitCertificate, Header
from .config import NodeConfig
from .journal import JournalError
from .node import InvalidBlock, Node
from .p2p import PeerInfo, PeerNetwork
from .topology import PeerPolicy
from .tx import DecodeError, Transaction, encode_batch, split_batch

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

_HEIGHT = struct.Struct(">Q")
_RANGE = struct.Struct(">QQ")
_LEN = struct.Struct(">I")
SYNC_BATCH = 64  # blocks per GET_BLOCKS
SYNC_BYTES = 8 * 2**20  # what one BLOCKS answer may carry
SYNC_TIMEOUT_S = 5.0
SYNC_GRACE_S = 1.5
STATUS_EVERY_S = 2.0
TX_FLUSH_S = 0.01
TX_BATCH = 5_000
MAX_FUTURE_MS = 10_000  # a proposed block may not be dated further ahead than this


def value_id(value: bytes) -> bytes:
    """The id of an encoded block is its header hash (see ``Block.encode``)."""
    try:
        return Block.decode_header(value).hash
    except BlockError:
        return crypto.digest(value)  # not a block: an id that no valid block can have


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
    out, pos = [], 0
    while pos < len(data):
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
    return [(Block.decode(b), CommitCertificate.decode(c)) for b, c in _pairs(data)]


def decode_headers(data: bytes) -> list[tuple[Header, CommitCertificate]]:
    return [(Header.decode(h), CommitCertificate.decode(c)) for h, c in _pairs(data)]


def policy_for(node_type: str, region: str, me: bytes, validators) -> PeerPolicy:
    return PeerPolicy(me, node_type, region, frozenset(validators))


class PeerStats:
    """What a node knows of its connected peers beyond the handshake: their heights (from
    STATUS) and round-trip times (PING/PONG), for sync, ``network peers`` and metrics."""

    def __init__(self, net: PeerNetwork, metrics, validators):
        self.net = net
        self.metrics = metrics
        self.validators = validators
        self.heights: dict[str, int] = {}
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
        self.heights[peer.node_id] = max(self.heights.get(peer.node_id, 0), height)

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
        )
        self.signing_state = SigningStateFile(config.data_dir / "consensus.state")
        self.log = ConsensusLog(config.data_dir / "consensus.wal")
        self.core: tendermint.Core | None = None
        self._inputs: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._tasks: set[asyncio.Task] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        # Blocks of this height built or checked here, with their diffs, by block hash.
        self._checked: dict[bytes, tuple[Block, object]] = {}
        # Consensus messages (own and received) of the height in progress and the next, by
        # digest: re-sent when a round stalls and to peers that connect, logged for restarts.
        self._messages: dict[int, dict[bytes, bytes]] = {}
        self.stats = PeerStats(self.net, self.metrics, self.validators.powers)
        self._peer_heights = self.stats.heights
        self._syncing_until = 0.0
        self._behind_since: tuple[int, float] | None = None  # (our height, since when)
        self._relay: list[tuple[Transaction, str | None]] = []  # (tx, the peer it came from)
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
        await self.net.start()
        self._spawn(self._status_loop())
        self._spawn(self._tx_flush_loop())
        if self.is_validator:
            self.core = tendermint.Core(
                chain_id=node.chain_id,
                validators=self.validators,
                me=node.key.public_key,
                sign=node.key.sign,
                verify=crypto.verify,
                value_id=value_id,
                timeouts=tendermint.Timeouts(
                    propose_ms=self.config.timeout_propose_ms,
                    propose_delta_ms=self.config.timeout_delta_ms,
                    prevote_ms=self.config.timeout_vote_ms,
                    prevote_delta_ms=self.config.timeout_delta_ms,
                    precommit_ms=self.config.timeout_vote_ms,
                    precommit_delta_ms=self.config.timeout_delta_ms,
                ),
                signing_state=self.signing_state.loaded,
            )
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

    def _enqueue(self, handler: Callable[[], Awaitable[None]]) -> None:
        self._inputs.put_nowait(handler)

    # ---- the core's effects --------------------------------------------------------------
    async def _carry_out(self, effects: list) -> None:
        for effect in effects:
            match effect:
                case tendermint.PersistSigningState(state=state):
                    # Off the event loop, but before the next effect (the signed message).
                    await asyncio.to_thread(self.signing_state.save, state)
                case tendermint.Broadcast(message=message):
                    data = message.encode()
                    self._remember(message.height, data)
                    await self._to_validators(KIND_CONSENSUS, data)
                    if isinstance(message, tendermint.Proposal):
                        self.metrics.proposals.labels("sent").inc()
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
        for data in self.log.read():
            with contextlib.suppress(tendermint.MessageError):
                logged.append((tendermint.decode_message(data), data))
        self._messages = {h: m for h, m in self._messages.items() if h >= height}
        self.log.reset()
        for message, data in logged:
            if message.height >= height:
                self._remember(message.height, data)
        await self._carry_out(core.start_height(height))
        for message, _data in logged:
            if message.height == height:
                await self._carry_out(core.on_message(message))
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
        self.log.append(data)
        return True

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
        await self._push_committed(block, cert)
        self.metrics.commit_latency.observe(max(0.0, time.time() - block.header.time_ms / 1000))
        await self.net.broadcast(KIND_STATUS, _HEIGHT.pack(self.node.state.height))
        self._update_lag()

    # ---- peers ---------------------------------------------------------------------------
    async def _on_peer(self, peer: PeerInfo, connected: bool) -> None:
        self.stats.changed(peer, connected)
        if not connected:
            self._update_lag()
            return
        await self.stats.ping(peer.node_id)
        await self.net.send(peer.node_id, KIND_STATUS, _HEIGHT.pack(self.node.state.height))
        if self.is_validator and peer.public_key in self.validators:
            for data in list(self._messages.get(self._height, {}).values()):
                await self.net.send(peer.node_id, KIND_CONSENSUS, data)  # what it missed

    async def _on_message(self, peer: PeerInfo, kind: int, payload: bytes) -> None:
        try:
            await self._dispatch(peer, kind, payload)
        except (BlockError, DecodeError, tendermint.MessageError, struct.error) as exc:
            self.net.ban(peer.node_id, f"malformed kind {kind} message: {exc}")

    async def _dispatch(self, peer: PeerInfo, kind: int, payload: bytes) -> None:
        if kind == KIND_CONSENSUS:
            if self.core is not None and not self._holding:
                message = tendermint.decode_message(payload)
                self._count_received(message)
                self._enqueue(lambda: self._consensus_message(peer, message, payload))
        elif kind == KIND_TXS:
            # Validators are a mesh: what one relays, the others already got from it.
            among_validators = self.is_validator and peer.public_key in self.validators
            await self.node.submit_raw(
                split_batch(payload), relay=not among_validators, source=peer.node_id
            )
        elif kind == KIND_STATUS:
            (height,) = _HEIGHT.unpack(payload)
            self._peer_heights[peer.node_id] = height
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
            blocks = decode_blocks(payload)
            self._enqueue(lambda: self._apply_synced(peer, blocks))
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
            self.net.ban(peer.node_id, f"unknown message kind {kind}")

    def _count_received(self, message: tendermint.Message) -> None:
        if isinstance(message, tendermint.Proposal):
            self.metrics.proposals.labels("received").inc()
        else:
            validator = crypto.encode_node_id(message.validator)
            self.metrics.votes_received.labels(validator, message.kind.name.lower()).inc()

    async def _consensus_message(
        self, peer: PeerInfo, message: tendermint.Message, data: bytes
    ) -> None:
        new = self._remember(message.height, data)
        if new and isinstance(message, tendermint.Vote) and message.height == self._height:
            # Relay votes: with an equivocating validator, or a validator some others cannot
            # reach, correct ones still need to see every vote (blocks are not relayed here,
            # only re-sent when a round stalls).
            await self._to_validators(KIND_CONSENSUS, data, exclude=peer.node_id)
        await self._carry_out(self.core.on_message(message))
        self._note_round()

    # ---- sync ----------------------------------------------------------------------------
    def _update_lag(self) -> None:
        self.metrics.sync_lag.set(self._network_status()["sync_lag_blocks"])

    def _maybe_sync(self) -> None:
        """Ask the most advanced peer for the next blocks, one request at a time.

        A peer one block ahead is normal while a height's precommits are still arriving;
        consensus catches up by itself then, so sync waits unless the gap is two blocks or
        lasts longer than SYNC_GRACE_S.
        """
        ours = self.node.state.height
        if not self._peer_heights or time.monotonic() < self._syncing_until:
            return
        peer, height = max(self._peer_heights.items(), key=lambda kv: kv[1])
        if height <= ours:
            self._behind_since = None
            return
        if height == ours + 1:
            now = time.monotonic()
            if self._behind_since is None or self._behind_since[0] != ours:
                self._behind_since = (ours, now)
            if now - self._behind_since[1] < SYNC_GRACE_S:
                return
        self._syncing_until = time.monotonic() + SYNC_TIMEOUT_S
        last = min(height, ours + SYNC_BATCH)
        self._spawn(self.net.send(peer, KIND_GET_BLOCKS, _RANGE.pack(ours + 1, last)))

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
            height = block.header.height
            self.stats.saw(peer, height)
            if height != self.node.state.height + 1:
                continue
            try:
                await self.node.apply_certified(block, cert)
            except InvalidBlock as exc:
                self.net.ban(peer.node_id, f"served an invalid block: {exc}")
                break
            applied += 1
            await self._push_committed(block, cert, exclude=peer.node_id)
        if applied:
            log.log(
                logging.INFO if applied > 1 else logging.DEBUG,
                "synced %d block(s) from %s, now at height %d",
                applied,
                peer.node_id,
                self.node.state.height,
            )
            await self.net.broadcast(KIND_STATUS, _HEIGHT.pack(self.node.state.height))
            head = self.node.state
            if self._holding and head.block_time_ms > self._started_at * 1000:
                self._holding = False
                log.info("block %d was committed after this start: voting again", head.height)
            if self.core is not None and not self._holding:
                await self._start_height()
        self._syncing_until = 0.0
        self._update_lag()
        self._maybe_sync()

    # ---- background loops ----------------------------------------------------------------
    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY_S)  # periodic: a lost STATUS heals by itself
            await self.net.broadcast(KIND_STATUS, _HEIGHT.pack(self.node.state.height))
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
